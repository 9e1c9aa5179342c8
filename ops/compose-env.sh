#!/usr/bin/env bash
# Make the compose stack's API tokens (once; an existing pair of files is kept):
#   ops/compose/gateway.env  the hashes the gateway's rules read (RESEARCHER_TOKEN_SHA256, ...),
#                            and GATEWAY_REQUEST_STATE_KEYS, the key every replica of the scale
#                            profile seals and opens 2026-07-28 requestState with (added to a
#                            file made before it was)
#   ops/compose/client.env   the tokens themselves, for clients (RESEARCHER_TOKEN, ...)
# Both are mode 600 and ignored by git. Rotate with --rotate (then restart or let the gateway
# reload: the old tokens stop working at once).
set -euo pipefail
cd "$(dirname "$0")/compose"

umask 077
if [ "${1:-}" = "--rotate" ] || ! [ -s gateway.env ] || ! [ -s client.env ]; then
  python3 - <<'PY'
import hashlib, secrets
agents = ("researcher", "backend")
tokens = {agent: secrets.token_urlsafe(32) for agent in agents}
with open("client.env.tmp", "w") as client, open("gateway.env.tmp", "w") as gateway:
    for agent, token in tokens.items():
        name = f"{agent.upper()}_TOKEN"
        client.write(f"{name}={token}\n")
        gateway.write(f"{name}_SHA256=sha256:{hashlib.sha256(token.encode()).hexdigest()}\n")
PY
  mv client.env.tmp client.env
  mv gateway.env.tmp gateway.env
  echo "wrote ops/compose/gateway.env (hashes) and ops/compose/client.env (tokens)" >&2
fi
if ! grep -q '^GATEWAY_REQUEST_STATE_KEYS=' gateway.env; then
  key=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
  echo "GATEWAY_REQUEST_STATE_KEYS=$key" >> gateway.env
  echo "added GATEWAY_REQUEST_STATE_KEYS to ops/compose/gateway.env" >&2
fi
