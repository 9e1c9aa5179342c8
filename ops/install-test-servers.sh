#!/usr/bin/env bash
# Install the third-party MCP servers the tests run, and the official MCP conformance suite,
# into tests/.servers/ (gitignored).
#
#   ops/install-test-servers.sh          # from the repository root, with the venv active
#
# npm packages are pinned here and installed with `npm install --prefix`, never fetched by npx
# at test time; an install already at the pinned version is left alone. mcp-server-time comes
# from PyPI through the `test` extra in pyproject.toml, so this only checks it is there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="$ROOT/tests/.servers"
PYTHON="${PYTHON:-python3}"

NPM_PACKAGES=(
  "@modelcontextprotocol/server-everything@2026.8.31"
  "@modelcontextprotocol/server-filesystem@2026.8.31"
  "@modelcontextprotocol/conformance@0.1.16"
  # The official TypeScript SDK, imported by tests/servers/ts_requests.mjs.
  "@modelcontextprotocol/sdk@1.32.2"
  # panva's certified OpenID provider: the authorization server of the downstream OAuth tests
  # (tests/servers/oidc_provider.mjs). Its 9.x line runs on Node 20 (ESM, koa 3, jose 6).
  "oidc-provider@9.13.3"
)

command -v node >/dev/null || { echo "error: node is not installed (Node 20 or newer; ops/test.sh provides one)" >&2; exit 1; }
command -v npm >/dev/null || { echo "error: npm is not installed" >&2; exit 1; }

installed_version() {  # name -> version installed under the prefix, or nothing
  local manifest="$PREFIX/node_modules/$1/package.json"
  [[ -f "$manifest" ]] && node -p "require(process.argv[1]).version" "$manifest" 2>/dev/null || true
}

mkdir -p "$PREFIX"
missing=()
for spec in "${NPM_PACKAGES[@]}"; do
  name="${spec%@*}"
  wanted="${spec##*@}"
  have="$(installed_version "$name")"
  if [[ "$have" == "$wanted" ]]; then
    echo "ok: $name $have already installed in tests/.servers"
  else
    echo "install: $name $wanted${have:+ (found $have)}"
    missing+=("$spec")
  fi
done
if ((${#missing[@]})); then
  npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error --save-exact "${missing[@]}"
  for spec in "${missing[@]}"; do
    name="${spec%@*}"
    echo "installed: $name $(installed_version "$name")"
  done
fi

EVERYTHING="$PREFIX/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
FILESYSTEM="$PREFIX/node_modules/@modelcontextprotocol/server-filesystem/dist/index.js"
CONFORMANCE="$PREFIX/node_modules/@modelcontextprotocol/conformance/dist/index.js"
SDK_SERVER="$PREFIX/node_modules/@modelcontextprotocol/sdk/dist/cjs/server/mcp.js"
OIDC_PROVIDER="$PREFIX/node_modules/oidc-provider/lib/index.js"
for entry in "$EVERYTHING" "$FILESYSTEM" "$CONFORMANCE" "$SDK_SERVER" "$OIDC_PROVIDER"; do
  [[ -f "$entry" ]] || { echo "error: expected entry point $entry is missing" >&2; exit 1; }
done

# The conformance suite (commander 14, undici 7) needs Node 20; on older Node the other servers
# still run, and tests/process/test_conformance.py fails saying why.
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if ((node_major < 20)); then
  echo "warning: @modelcontextprotocol/conformance needs Node 20 or newer, found $(node --version): tests/process/test_conformance.py will fail" >&2
else
  # 0.1.16 imports fs.globSync (Node 22+) at the top of its bundle, for its tier-check report only;
  # on Node 20 that import alone stops the CLI. Replace the binding with a function that fails when
  # tier-check runs. The minified name `o` is this pinned build's: if the import is not there in
  # that form, stop rather than patch blindly.
  PATCHED_MARK="conformance tier-check needs Node 22 or newer"
  if ! node -e 'process.exit(typeof require("fs").globSync === "function" ? 0 : 1)'; then
    if grep -q "$PATCHED_MARK" "$CONFORMANCE"; then
      echo "ok: conformance already patched for Node $(node --version)"
    elif grep -q 'globSync as o,' "$CONFORMANCE"; then
      sed -i 's/globSync as o,//' "$CONFORMANCE"
      printf '\nfunction o(){throw new Error("%s (fs.globSync)")}\n' "$PATCHED_MARK" >>"$CONFORMANCE"
      echo "patched: conformance's fs.globSync import for Node $(node --version)"
    else
      echo "error: conformance imports fs.globSync in an unexpected form; Node 22+ is needed" >&2
      exit 1
    fi
  fi
  node "$CONFORMANCE" --version >/dev/null || { echo "error: the conformance CLI does not start" >&2; exit 1; }
fi

if "$PYTHON" -c "import mcp_server_time" 2>/dev/null; then
  version="$("$PYTHON" -c "from importlib.metadata import version; print(version('mcp-server-time'))")"
  echo "ok: mcp-server-time $version importable by $("$PYTHON" -c 'import sys; print(sys.executable)')"
else
  echo "error: mcp-server-time is not installed for $PYTHON; run: pip install -e '.[test]'" >&2
  exit 1
fi
if command -v mcp-server-time >/dev/null; then
  echo "ok: mcp-server-time on PATH at $(command -v mcp-server-time)"
else
  echo "note: mcp-server-time is importable but not on PATH; tests start it as '$PYTHON -m mcp_server_time'"
fi

cat <<EOT
start commands (from the repository root):
  node tests/.servers/node_modules/@modelcontextprotocol/server-everything/dist/index.js stdio
  PORT=3001 node tests/.servers/node_modules/@modelcontextprotocol/server-everything/dist/index.js streamableHttp   # http://127.0.0.1:3001/mcp
  node tests/.servers/node_modules/@modelcontextprotocol/server-filesystem/dist/index.js DIR [DIR...]
  node tests/.servers/node_modules/@modelcontextprotocol/conformance/dist/index.js server --url URL --suite all   # list: ... list --server
  node tests/servers/ts_requests.mjs 3002   # the TypeScript SDK fixture: http://127.0.0.1:3002/mcp
  node tests/servers/oidc_provider.mjs 3003 CLIENTS.json   # the authorization server: http://127.0.0.1:3003
  python -m mcp_server_time
EOT
