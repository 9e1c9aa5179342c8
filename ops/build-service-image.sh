#!/usr/bin/env bash
# Build a local HAProxy or Redis image from Debian packages, for the compose `scale` profile
# where no container registry can be reached (users elsewhere may run the official haproxy and
# redis images instead: compose.yaml takes HAPROXY_IMAGE and REDIS_IMAGE).
#
#   ops/build-service-image.sh haproxy   # Debian's haproxy (2.6), runs as user haproxy
#   ops/build-service-image.sh redis     # Debian's redis-server (7.0), runs as user redis
#
# The image is the local Debian base (ops/build-base-image.sh) plus the package, installed by
# apt from Debian's mirror during the build (`--network=host`: the build reaches the mirror the
# way the host does; never a container registry). The service runs as the package's own system
# user, in the foreground, writing nothing to its root filesystem, so it runs read-only.
#
# Idempotent: skips the build when the image exists (SERVICE_IMAGE_REBUILD=1 rebuilds).
# Prints the image name on stdout; progress goes to stderr, the build's output to
# <CI_WORK_DIR>/build-<service>-image.log (its tail on stderr when it fails).
#
# Environment:
#   HAPROXY_IMAGE / REDIS_IMAGE  tag to build (default localhost/haproxy:debian, localhost/redis:debian)
#   BASE_IMAGE                   base image   (default: the one ops/build-base-image.sh builds)
#   CI_WORK_DIR                  scratch folder (default <repo>/.ci-work, gitignored)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work_dir="${CI_WORK_DIR:-$repo_root/.ci-work}"
service="${1:-}"

log() { printf '[build-service-image] %s\n' "$*" >&2; }

# Per service: the Debian package, the user it runs as, and how it runs. Redis keeps nothing on
# disk (rate-limit windows are short-lived; a restart forgets them, and the gateways fall back to
# local counting meanwhile).
case "$service" in
    haproxy)
        image="${HAPROXY_IMAGE:-localhost/haproxy:debian}"
        package=haproxy
        user=haproxy
        port=8080
        entrypoint='["/usr/sbin/haproxy", "-W", "-db"]'
        cmd='["-f", "/usr/local/etc/haproxy/haproxy.cfg"]'
        ;;
    redis)
        image="${REDIS_IMAGE:-localhost/redis:debian}"
        package=redis-server
        user=redis
        port=6379
        entrypoint='["/usr/bin/redis-server"]'
        cmd='["--bind", "0.0.0.0", "--protected-mode", "no", "--save", "", "--appendonly", "no", "--dir", "/tmp"]'
        ;;
    *)
        echo "usage: $0 haproxy|redis" >&2
        exit 2
        ;;
esac

if [[ "${SERVICE_IMAGE_REBUILD:-0}" != 1 ]] && podman image exists "$image"; then
    log "$image already exists; skipping (SERVICE_IMAGE_REBUILD=1 rebuilds it)"
    echo "$image"
    exit 0
fi

base="${BASE_IMAGE:-$("$repo_root/ops/build-base-image.sh")}"

ctx="$work_dir/$service-image"
rm -rf "$ctx"
mkdir -p "$ctx"
build_log="$work_dir/build-$service-image.log"

# policy-rc.d: the packages' maintainer scripts must not try to start the service in the build.
cat > "$ctx/Containerfile" <<EOF
ARG BASE_IMAGE
FROM \${BASE_IMAGE}
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d \\
    && apt-get update -q \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $package \\
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /usr/sbin/policy-rc.d \\
        /usr/share/doc/* /usr/share/man/*
USER $user
WORKDIR /tmp
EXPOSE $port
ENTRYPOINT $entrypoint
CMD $cmd
EOF

log "podman build $image ($package) on $base"
if ! podman build --format docker --network=host --build-arg BASE_IMAGE="$base" -t "$image" "$ctx" \
        >"$build_log" 2>&1; then
    tail -n 30 "$build_log" >&2
    log "podman build failed (full output: $build_log)"
    exit 1
fi
rm -rf "$ctx"
echo "$image"
