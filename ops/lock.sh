#!/usr/bin/env bash
# Regenerate the exact-version lock files from pyproject.toml, each in a fresh virtualenv:
#   requirements.lock       the gateway itself (what the container installs)
#   requirements-test.lock  the gateway plus its test suite (what the README and CI install)
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# What the locking Python does not install but an older Python 3.11 needs (a freeze records only
# what it installed): redis wants async-timeout before 3.11.3, and Debian 12's python3 (the
# container image's and a fresh machine's) is 3.11.2.
CONDITIONAL=('async-timeout==5.0.1 ; python_full_version < "3.11.3"')

freeze() {  # freeze SPEC OUTPUT HEADER
  python3 -m venv "$work/venv-$2"
  "$work/venv-$2/bin/pip" install -q --upgrade pip
  "$work/venv-$2/bin/pip" install -q "$1"
  {
    echo "# $3; regenerate with ops/lock.sh"
    "$work/venv-$2/bin/pip" freeze --exclude agent-mcp-gateway | grep -v '^async-timeout=='
    printf '%s\n' "${CONDITIONAL[@]}"
  } > "$2"
}

freeze "." requirements.lock "Exact versions for the gateway"
freeze ".[test]" requirements-test.lock "Exact versions for the gateway and its test suite"
echo "wrote requirements.lock and requirements-test.lock"
