#!/usr/bin/env bash
# Set up a virtualenv (once) and run the gateway on the bundled demo configuration:
# two real downstream servers that need no account, mcp-server-time and the demo notes server.
#   ops/demo.sh                          HTTP service on 127.0.0.1:8000 (GATEWAY_HTTP_PORT to change)
#   GATEWAY_TRANSPORT=stdio ops/demo.sh  stdio, as a local MCP client would launch it
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
if [ ! -x "$venv/bin/agent-mcp-gateway" ]; then
  echo "setting up $venv (locked versions) ..." >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -r requirements-test.lock
  "$venv/bin/pip" install -q --no-deps -e .
fi
export GATEWAY_MCP_CONFIG="$PWD/app/agent_mcp_gateway/demo/config/.mcp.json"
export GATEWAY_RULES="$PWD/app/agent_mcp_gateway/demo/config/.mcp-gateway-rules.json"
export GATEWAY_PYTHON="$PWD/$venv/bin/python"
export GATEWAY_TRANSPORT=${GATEWAY_TRANSPORT:-http}
export GATEWAY_LOG_FORMAT=${GATEWAY_LOG_FORMAT:-text}
"$venv/bin/agent-mcp-gateway" validate >&2
if [ "$GATEWAY_TRANSPORT" = http ]; then
  base="http://${GATEWAY_HTTP_HOST:-127.0.0.1}:${GATEWAY_HTTP_PORT:-8000}"
  cat >&2 <<MSG

  MCP endpoint (Streamable HTTP): $base/mcp    agents: researcher, admin
  health: $base/health   ready: $base/ready   metrics: $base/metrics
  audit log: ${GATEWAY_AUDIT_LOG:-~/.cache/agent-mcp-gateway/audit.jsonl}
  try it:  $venv/bin/python ops/demo_client.py $base/mcp

MSG
fi
exec "$venv/bin/agent-mcp-gateway"
