#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh Debian machine, then run all of it:
# Python deps (locked), the third-party MCP servers from npm, promtool, and podman for the
# container suite. Extra arguments go to pytest (e.g. ops/test.sh -k http).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[test] %s\n' "$*" >&2; }

apt_install() {  # apt_install PACKAGE... : install what is missing (root only)
  local missing=()
  for package in "$@"; do dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package"); done
  ((${#missing[@]})) || return 0
  if [ "$(id -u)" != 0 ]; then log "missing packages (need root): ${missing[*]}"; return 1; fi
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

apt_install prometheus
# Node.js (for the npm reference servers) usually comes with the machine; Debian's otherwise.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then apt_install nodejs npm; fi
command -v promtool >/dev/null || { log "promtool is missing"; exit 1; }

venv=${VENV:-.venv}
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q -r requirements-test.lock
"$venv/bin/pip" install -q --no-deps -e .
export PATH="$PWD/$venv/bin:$PATH"

ops/install-test-servers.sh

# The container suite needs podman's API; without an engine it skips and says why.
if podman_env="$(ops/podman-setup.sh start)"; then
  eval "$podman_env"
  trap 'ops/podman-setup.sh stop || true' EXIT
  export CONTAINER_TESTS_REQUIRED=1   # an engine is up, so the container suite must not skip
else
  log "podman could not be set up: the container tests will be skipped"
fi

log "running the test suite"
status=0
python -m pytest -p no:cacheprovider -rs "$@" || status=$?
if [ "$status" = 5 ]; then log "pytest collected no tests"; exit 1; fi
exit "$status"
