#!/usr/bin/env bash
# Set up a virtualenv (once) and run the gateway on the bundled demo configuration:
# two real downstream servers that need no account, mcp-server-time and the demo notes server.
#   ops/demo.sh                          HTTP service on 127.0.0.1:8000 (GATEWAY_HTTP_PORT to change)
#   GATEWAY_TRANSPORT=stdio ops/demo.sh  stdio, as a local MCP client would launch it
#
# The first run installs only what the gateway runs on: requirements.lock (the runtime lock,
# the versions the image uses), mcp-server-time pinned by requirements-test.lock, and the
# gateway itself. ops/test.sh adds the test tools to the same .venv later.
# Progress goes to stderr, one line a step; pip's own output only when a step fails.
#
# Environment: VENV (default .venv), PYTHON (default python3: the Python 3.11+ to make it with).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
python=${PYTHON:-python3}
started=$(date +%s)

log() { printf '[demo] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
elapsed() { echo "$(($(date +%s) - started)) s"; }

# step N TITLE COMMAND...: run a set-up step quietly; on failure show its output and stop.
step() {
  local number=$1 title=$2 output
  shift 2
  log "set-up $number/4: $title ..."
  output="$(mktemp)"
  if ! "$@" >"$output" 2>&1; then
    tail -n 30 "$output" >&2
    rm -f "$output"
    die "set-up step $number failed: $title (output above); fix it and run ops/demo.sh again"
  fi
  rm -f "$output"
}

ready() {  # the venv has the gateway and the demo's third-party server
  [ -x "$venv/bin/agent-mcp-gateway" ] && "$venv/bin/python" -c 'import mcp_server_time' 2>/dev/null
}

if ready; then
  log "using $venv (already set up)"
else
  if [ ! -x "$venv/bin/python" ]; then
    command -v "$python" >/dev/null || die "$python not found: install Python 3.11 or newer (or set PYTHON)"
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
      || die "$python is Python $("$python" -c 'import platform; print(platform.python_version())'); the gateway needs 3.11 or newer (set PYTHON)"
    log "first run: setting up $venv with the locked runtime dependencies" \
        "($(grep -c '==' requirements.lock) packages; about a minute and 205 MB)"
    "$python" -c 'import ensurepip' 2>/dev/null \
      || die "$python cannot make a virtualenv: on Debian/Ubuntu, apt-get install python3-venv"
    step 1 "creating $venv ($python -m venv)" "$python" -m venv "$venv"
  else
    log "finishing the set-up of $venv"
  fi
  pip=("$venv/bin/python" -m pip install --disable-pip-version-check)
  step 2 "upgrading pip" "${pip[@]}" --upgrade pip
  step 3 "installing requirements.lock (the runtime lock) and mcp-server-time" \
    "${pip[@]}" -r requirements.lock -c requirements.lock -c requirements-test.lock mcp-server-time
  step 4 "installing the gateway (editable, from app/)" "${pip[@]}" --no-deps -e .
  log "set-up done in $(elapsed)"
fi

export GATEWAY_MCP_CONFIG="$PWD/app/agent_mcp_gateway/demo/config/.mcp.json"
export GATEWAY_RULES="$PWD/app/agent_mcp_gateway/demo/config/.mcp-gateway-rules.json"
venv_dir="$(cd "$venv" && pwd)"
export GATEWAY_PYTHON="$venv_dir/bin/python"
export GATEWAY_TRANSPORT=${GATEWAY_TRANSPORT:-http}
export GATEWAY_LOG_FORMAT=${GATEWAY_LOG_FORMAT:-text}
log "validating the demo configuration (app/agent_mcp_gateway/demo/config/)"
"$venv/bin/agent-mcp-gateway" validate >&2
if [ "$GATEWAY_TRANSPORT" = http ]; then
  base="http://${GATEWAY_HTTP_HOST:-127.0.0.1}:${GATEWAY_HTTP_PORT:-8000}"
  log "starting the gateway over HTTP (Ctrl-C stops it)"
  cat >&2 <<MSG

  MCP endpoint (Streamable HTTP): $base/mcp    agents: researcher, admin
  health: $base/health   ready: $base/ready   metrics: $base/metrics
  audit log: ${GATEWAY_AUDIT_LOG:-~/.cache/agent-mcp-gateway/audit.jsonl}
  try it:  $venv/bin/python ops/demo_client.py $base/mcp

MSG
else
  log "starting the gateway over stdio (it reads MCP messages on stdin)"
fi
exec "$venv/bin/agent-mcp-gateway"
