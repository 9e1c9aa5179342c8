#!/usr/bin/env bash
# Smoke-test a built gateway image the way it runs in production: read-only root FS, no
# capabilities, no new privileges, /tmp as tmpfs, config mounted read-only from
# ops/compose/config, the demo HTTP server from ops/compose/demo_server.py beside it, and
# mcp-server-time over stdio inside the gateway container.
#
# Checks: /ready turns 200 with both downstream servers up, an MCP call goes through to each
# (with the API tokens of ops/compose-env.sh, as the compose stack runs),
# a denied call is denied, the audit log is written in the state volume, the image's
# HEALTHCHECK passes, the root FS is read-only, the process is uid 10001, and SIGTERM ends it
# with exit code 0. Prints the measured times; exits non-zero on the first failure.
#
#   eval "$(ops/podman-setup.sh env)"
#   IMAGE="$(ops/build-image.sh)" ops/smoke-test-image.sh
#
# Environment:
#   IMAGE        image to test (default localhost/agent-mcp-gateway:dev)
#   PYTHON       Python with fastmcp for the MCP client (default <repo>/.venv/bin/python)
#   SMOKE_PORT   loopback port published for the gateway (default: a free one)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
image="${IMAGE:-localhost/agent-mcp-gateway:dev}"
python="${PYTHON:-$repo_root/.venv/bin/python}"
port="${SMOKE_PORT:-$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
suffix="$$"
net="amg-smoke-$suffix"
demo="amg-smoke-demo-$suffix"
gw="amg-smoke-gateway-$suffix"
vol="amg-smoke-data-$suffix"

log() { printf '[smoke-test-image] %s\n' "$*" >&2; }
fail() { log "FAIL: $*"; podman logs "$gw" 2>&1 | grep -v 'level=error' | tail -n 40 >&2 || true; exit 1; }

cleanup() {
    podman rm -f -v -t 0 "$gw" "$demo" >/dev/null 2>&1 || true
    podman volume rm -f "$vol" >/dev/null 2>&1 || true
    podman network rm -f "$net" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# Production-style hardening; --health-interval=disable keeps the image's HEALTHCHECK but
# starts no timer (there is no systemd here to run one); it is run by hand below.
hardening=(--read-only --tmpfs "/tmp:size=64m,mode=1777" --cap-drop ALL
           --security-opt no-new-privileges --init --health-interval=disable)

podman network create "$net" >/dev/null
podman volume create "$vol" >/dev/null

podman run -d --name "$demo" --network "$net" --network-alias demo-server "${hardening[@]}" \
    -v "$repo_root/ops/compose/demo_server.py:/demo/demo_server.py:ro" \
    --entrypoint python3 "$image" /demo/demo_server.py >/dev/null 2>&1
for _ in $(seq 1 150); do
    podman exec "$demo" python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:9000/health', timeout=2)" \
        >/dev/null 2>&1 && break
    sleep 0.2
done

# The compose configuration authenticates agents by API token (hashes in gateway.env, tokens for
# clients in client.env); made once by ops/compose-env.sh.
"$repo_root/ops/compose-env.sh"

t0=$(date +%s.%N)
podman run -d --name "$gw" --network "$net" "${hardening[@]}" \
    -p "127.0.0.1:$port:8000" \
    --env-file "$repo_root/ops/compose/gateway.env" \
    -v "$repo_root/ops/compose/config:/config:ro" \
    -v "$vol:/var/lib/agent-mcp-gateway" \
    "$image" >/dev/null 2>&1
t_started=$(date +%s.%N)

ready=""
for _ in $(seq 1 600); do
    if ready="$("$python" - "$port" <<'EOF'
import sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/ready", timeout=2) as r:
        print(r.read().decode())
except Exception:
    sys.exit(1)
EOF
)"; then break; fi
    ready=""
    if [[ "$(podman inspect -f '{{.State.Running}}' "$gw" 2>/dev/null)" != true ]]; then
        fail "gateway container exited before it was ready"
    fi
    sleep 0.1
done
t_ready=$(date +%s.%N)
[[ -n "$ready" ]] || fail "/ready never answered 200"
log "/ready: $ready"

"$python" - "$port" "$ready" "$repo_root/ops/compose/client.env" <<'EOF' || fail "MCP calls through the gateway"
import asyncio, json, sys
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport

port, ready = sys.argv[1], json.loads(sys.argv[2])
tokens = dict(line.split("=", 1) for line in open(sys.argv[3]).read().split() if "=" in line)
assert ready["servers"]["demo"]["state"] == "up", ready
assert ready["servers"]["time"]["state"] == "up", ready

def as_agent(agent: str) -> Client:
    headers = {"Authorization": f"Bearer {tokens[agent.upper() + '_TOKEN']}"}
    return Client(StreamableHttpTransport(f"http://127.0.0.1:{port}/mcp", headers=headers))

async def main() -> None:
    async with as_agent("researcher") as c:
        names = {t.name for t in await c.list_tools()}
        assert {"list_servers", "get_server_tools", "execute_tool"} <= names, names
        r = await c.call_tool("execute_tool", {"agent_id": "researcher", "server": "demo",
                                               "tool": "echo", "args": {"message": "smoke"}})
        assert r.content[0].text == "smoke", r
    async with as_agent("backend") as c:
        r = await c.call_tool("execute_tool", {"agent_id": "backend", "server": "time",
                                               "tool": "get_current_time", "args": {"timezone": "UTC"}})
        assert "UTC" in r.content[0].text, r
        try:
            await c.call_tool("execute_tool", {"agent_id": "backend", "server": "demo",
                                               "tool": "delete_everything", "args": {}})
        except Exception as exc:  # the gateway answers with a JSON-RPC error
            assert "delete_everything" in str(exc), exc
        else:
            raise AssertionError("delete_everything was not denied")

asyncio.run(main())
EOF
log "MCP calls: demo (HTTP) and time (stdio in the container) answered; denial denied"

podman healthcheck run "$gw" >/dev/null 2>&1 || fail "image HEALTHCHECK failed"
podman exec "$gw" sh -c 'test "$(id -u)" = 10001' || fail "gateway does not run as uid 10001"
podman exec "$gw" sh -c 'touch /opt/venv/x 2>/dev/null' && fail "root FS is writable"
podman exec "$gw" sh -c 'grep -q "\"decision\": \"DENY\"" /var/lib/agent-mcp-gateway/audit.jsonl' \
    || fail "audit log in the state volume has no DENY line"
log "healthcheck, uid 10001, read-only root FS, audit log: ok"

t_stop0=$(date +%s.%N)
podman stop -t 30 "$gw" >/dev/null 2>&1
t_stop1=$(date +%s.%N)
code="$(podman inspect -f '{{.State.ExitCode}}' "$gw")"
[[ "$code" == 0 ]] || fail "exit code $code after SIGTERM"

secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a - b }'; }
printf 'podman run -> container started: %s s\n' "$(secs "$t_started" "$t0")"
printf 'podman run -> /ready 200:        %s s\n' "$(secs "$t_ready" "$t0")"
printf 'SIGTERM -> exited (code 0):      %s s\n' "$(secs "$t_stop1" "$t_stop0")"
printf 'image size:                      %s MB\n' "$(( $(podman image inspect -f '{{.Size}}' "$image") / 1000000 ))"
log "passed"
