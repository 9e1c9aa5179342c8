#!/usr/bin/env bash
# Build the gateway image with podman, without a container registry and without network access
# inside the build:
#
#   1. the base image comes from ops/build-base-image.sh (debootstrap + podman import),
#   2. every wheel the image needs is built on the host with `pip wheel` into a wheelhouse in the
#      build context (<CI_WORK_DIR>/wheels), using the host's own PyPI access,
#   3. `podman build` installs from that wheelhouse with --no-index.
#
# Why not pip inside the build: it needs --network=host plus the host's CA bundle and pip
# configuration mounted into every build; the host wheelhouse needs none of that, is reused
# between builds while the lock file is unchanged, and keeps the build itself offline.
#
# Usage:  eval "$(ops/podman-setup.sh env)" && ops/build-image.sh
# Prints the image name on stdout; progress goes to stderr, podman build's output to
# <CI_WORK_DIR>/build-image.log (its tail on stderr when it fails).
#
# Skipped when nothing it builds from changed: the image carries the label
# agent-mcp-gateway.inputs, a SHA-256 over the build inputs (Containerfile, .containerignore,
# both lock files, pyproject.toml, every file under app/, this script, and the base image's id);
# when the image named IMAGE exists with the same value, it is not rebuilt (about 40 s saved).
# README.md is left out on purpose: it only reaches the wheel's long description. The image's
# revision label then names the commit it was built at, not the current one.
#   podman image inspect --format '{{index .Labels "agent-mcp-gateway.inputs"}}' localhost/agent-mcp-gateway:dev
#
# Environment:
#   IMAGE                    tag to build            (default localhost/agent-mcp-gateway:dev)
#   BASE_IMAGE               base image              (default: the local base built by
#                            ops/build-base-image.sh, localhost/agent-mcp-gateway-base:bookworm)
#   REQUIREMENTS             locked runtime requirements (default <repo>/requirements.lock)
#   PYTHON                   Python 3.11 that runs `pip wheel` (default <repo>/.venv/bin/python,
#                            else python3)
#   SERVER_CONSTRAINTS       lock that pins mcp-server-time and its dependencies
#                            (default <repo>/requirements-test.lock)
#   CI_WORK_DIR              scratch folder          (default <repo>/.ci-work, gitignored)
#   FORCE_BUILD=1            build even when the image's inputs label matches
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
work_dir="${CI_WORK_DIR:-$repo_root/.ci-work}"
image="${IMAGE:-localhost/agent-mcp-gateway:dev}"
requirements="${REQUIREMENTS:-$repo_root/requirements.lock}"
server_constraints="${SERVER_CONSTRAINTS:-$repo_root/requirements-test.lock}"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$repo_root/.venv/bin/python" ]]; then PYTHON="$repo_root/.venv/bin/python"; else PYTHON=python3; fi
fi

log() { printf '[build-image] %s\n' "$*" >&2; }

# The wheelhouse must be inside the build context; .containerignore lets only this folder of
# CI_WORK_DIR in. A CI_WORK_DIR outside the repo is not in the context at all.
case "$work_dir" in
    "$repo_root"/.ci-work) ;;
    *) log "CI_WORK_DIR must be <repo>/.ci-work for the wheelhouse to be in the build context"; exit 2 ;;
esac
wheelhouse="$work_dir/wheels"
wheelhouse_rel=".ci-work/wheels"

for lock in "$requirements" "$server_constraints"; do
    if [[ ! -f "$lock" ]]; then
        log "no lock file at $lock (set REQUIREMENTS / SERVER_CONSTRAINTS)"
        exit 2
    fi
done

# Wheels are built for the host's interpreter: it must be the image's Python (3.11, CPython).
py_tag="$("$PYTHON" -c 'import sys; print("%s%d.%d" % (sys.implementation.name, *sys.version_info[:2]))')"
if [[ "$py_tag" != cpython3.11 ]]; then
    log "$PYTHON is $py_tag; the image runs cpython3.11 (set PYTHON)"
    exit 2
fi

if [[ -z "${BASE_IMAGE:-}" ]]; then
    BASE_IMAGE="$("$repo_root/ops/build-base-image.sh")"
fi

# The build inputs' hash (see the top): file names and contents, sorted, plus the base image.
inputs_hash() {
    local base_id
    base_id="$(podman image inspect --format '{{.Id}}' "$BASE_IMAGE")"
    {
        find Containerfile .containerignore pyproject.toml ops/build-image.sh app -type f \
            ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' -print0 \
            | LC_ALL=C sort -z | xargs -0 sha256sum
        echo "requirements $(sha256sum <"$requirements" | cut -d' ' -f1)"
        echo "server-constraints $(sha256sum <"$server_constraints" | cut -d' ' -f1)"
        echo "base $base_id"
    } | sha256sum | cut -d' ' -f1
}
if ! podman image exists "$BASE_IMAGE"; then
    log "base image $BASE_IMAGE does not exist (unset BASE_IMAGE to build the local one)"
    exit 2
fi
inputs="$(inputs_hash)"
label_key="agent-mcp-gateway.inputs"
built_from="$(podman image inspect --format "{{index .Labels \"$label_key\"}}" "$image" 2>/dev/null || true)"
[[ "$built_from" != "<no value>" ]] || built_from=""   # an image built before the label existed
if [[ "$built_from" == "$inputs" && "${FORCE_BUILD:-0}" != 1 ]]; then
    log "$image is up to date (its $label_key label matches the build inputs, ${inputs:0:12}...): not rebuilt (FORCE_BUILD=1 rebuilds)"
    echo "$image"
    exit 0
fi
if [[ -n "$built_from" ]]; then
    log "build inputs changed since $image was built (${built_from:0:12}... -> ${inputs:0:12}...): rebuilding"
fi

start=$(date +%s)

# Dependencies: rebuilt only when a lock file changes.
stamp="$(cat "$requirements" "$server_constraints" | sha256sum | cut -d' ' -f1)"
if [[ "$(cat "$wheelhouse/.stamp" 2>/dev/null || true)" != "$stamp" ]]; then
    log "building dependency wheels into $wheelhouse"
    rm -rf "$wheelhouse"
    mkdir -p "$wheelhouse"
    "$PYTHON" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$wheelhouse" \
        -r "$requirements" -c "$requirements" -c "$server_constraints" mcp-server-time >&2
    # Pins behind an environment marker that this Python does not meet but the image's may (e.g.
    # async-timeout for Python before 3.11.3, Debian 12 runs 3.11.2): their wheels too.
    mapfile -t gated < <(grep -E '^[A-Za-z0-9_.-]+==[^ ;]+ *;' "$requirements" | sed 's/ *;.*//')
    if ((${#gated[@]})); then
        "$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$wheelhouse" \
            "${gated[@]}" >&2
    fi
    echo "$stamp" > "$wheelhouse/.stamp"
else
    log "dependency wheels are up to date"
fi
# The lock files travel with the wheels, so the build reads exactly the ones the wheels match.
cp "$requirements" "$wheelhouse/requirements.lock"
cp "$server_constraints" "$wheelhouse/server-constraints.lock"

# The project's own wheel: rebuilt every time (it is the code under test).
rm -f "$wheelhouse"/agent_mcp_gateway-*.whl
"$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$wheelhouse" . >&2
wheels_s=$(( $(date +%s) - start ))

version="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n1)"
vcs_ref="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

log "podman build $image on $BASE_IMAGE"
previous_id="$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
build_start=$(date +%s)
build_log="$work_dir/build-image.log"
if ! podman build --format docker \
    --build-arg BASE_IMAGE="$BASE_IMAGE" \
    --build-arg WHEELHOUSE="$wheelhouse_rel" \
    --build-arg REQUIREMENTS="$wheelhouse_rel/requirements.lock" \
    --build-arg SERVER_CONSTRAINTS="$wheelhouse_rel/server-constraints.lock" \
    --build-arg VERSION="$version" \
    --build-arg VCS_REF="$vcs_ref" \
    --build-arg BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --label "$label_key=$inputs" \
    -f Containerfile -t "$image" . >"$build_log" 2>&1; then
    tail -n 40 "$build_log" >&2
    log "podman build failed (full output: $build_log)"
    exit 1
fi
build_s=$(( $(date +%s) - build_start ))

# Leftovers of earlier builds: their build stages and the image this tag pointed at before.
podman image prune -f --filter label=agent-mcp-gateway.stage=build >/dev/null 2>&1 || true
if [[ -n "$previous_id" && "$previous_id" != "$(podman image inspect --format '{{.Id}}' "$image")" ]]; then
    podman rmi "$previous_id" >/dev/null 2>&1 || true
fi

log "wheels ${wheels_s} s, podman build ${build_s} s, image $(podman image inspect --format '{{.Size}}' "$image") bytes"
echo "$image"
