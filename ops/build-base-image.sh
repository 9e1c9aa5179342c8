#!/usr/bin/env bash
# Build a local Debian bookworm base image without any container registry.
#
# The public Containerfile default is python:3.11-slim-bookworm; where no registry can be
# reached (CI, air-gapped hosts) this script makes an equivalent base from Debian packages:
#
#   debootstrap --variant=minbase --include=python3,python3-venv,... bookworm ROOTFS
#   tar -C ROOTFS -c . | podman import - localhost/agent-mcp-gateway-base:bookworm
#
# Python 3.11 (bookworm's python3) matches the public base. Node.js (Debian's nodejs 18) is
# included so npm-based stdio servers can run in the image; set BASE_WITH_NODE=0 to leave it out.
#
# Idempotent: does nothing when the image already exists (BASE_IMAGE_REBUILD=1 forces a rebuild).
# Prints the image name on stdout; progress goes to stderr, debootstrap's output to
# <CI_WORK_DIR>/build-base-image.log (its tail on stderr when it fails).
#
# Environment:
#   BASE_IMAGE          image name to create   (default localhost/agent-mcp-gateway-base:bookworm)
#   BASE_WITH_NODE      1 to include nodejs     (default 1)
#   BASE_IMAGE_REBUILD  1 to rebuild even if the image exists
#   DEBIAN_MIRROR       debootstrap mirror      (default http://deb.debian.org/debian)
#   CI_WORK_DIR         scratch folder          (default <repo>/.ci-work, gitignored)
#   CONTAINERS_CONF     podman configuration    (see ops/podman-setup.sh)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
image="${BASE_IMAGE:-localhost/agent-mcp-gateway-base:bookworm}"
with_node="${BASE_WITH_NODE:-1}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
work_dir="${CI_WORK_DIR:-$repo_root/.ci-work}"

log() { printf '[build-base-image] %s\n' "$*" >&2; }

if [[ "${BASE_IMAGE_REBUILD:-0}" != 1 ]] && podman image exists "$image"; then
    log "$image already exists; skipping (BASE_IMAGE_REBUILD=1 rebuilds it)"
    echo "$image"
    exit 0
fi

if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap"
    { apt-get install -y -q debootstrap || { apt-get update -q && apt-get install -y -q debootstrap; }; } >/dev/null
fi

# What the runtime image needs: Python with venv (pip comes from python3-pip-whl through
# ensurepip), CA certificates for HTTPS downstream servers, tzdata for time-aware servers.
packages="python3,python3-venv,ca-certificates,tzdata"
if [[ "$with_node" == 1 ]]; then
    packages="$packages,nodejs"
fi

mkdir -p "$work_dir"
rootfs="$(mktemp -d "$work_dir/base-rootfs.XXXXXX")"
# The rootfs holds device nodes and root-owned files: always remove it, even on failure.
trap 'rm -rf "$rootfs"' EXIT

start=$(date +%s)
build_log="$work_dir/build-base-image.log"
log "debootstrap bookworm ($packages) into $rootfs (log: $build_log)"
if ! debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" "$mirror" >"$build_log" 2>&1; then
    tail -n 30 "$build_log" >&2
    log "debootstrap failed"
    exit 1
fi

# Trim what an image never uses: downloaded .debs, package lists, docs, man pages.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old
# Security updates and a working apt for images built FROM this base with network access.
cat > "$rootfs/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF

log "importing into podman as $image"
if ! tar -C "$rootfs" -c . | podman import --quiet \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        - "$image" >>"$build_log" 2>&1; then
    tail -n 10 "$build_log" >&2
    log "podman import failed"
    exit 1
fi

log "done in $(( $(date +%s) - start )) s: $(podman image inspect --format '{{.Size}}' "$image") bytes"
echo "$image"
