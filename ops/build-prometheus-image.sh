#!/usr/bin/env bash
# Build a local Prometheus image from Debian packages, for running compose.yaml where no
# container registry can be reached (users normally get docker.io/prom/prometheus instead).
#
# The image is the local Debian base (ops/build-base-image.sh) plus the `prometheus` package's
# server, promtool and web assets, plus busybox's wget for the compose healthcheck, laid out
# like the official image: config in /etc/prometheus, data in /prometheus, uid 65534.
#
#   eval "$(ops/podman-setup.sh env)"
#   PROMETHEUS_IMAGE="$(ops/build-prometheus-image.sh)" GATEWAY_BASE_IMAGE=... podman-compose up -d
#
# Idempotent: skips the build when the image exists (PROMETHEUS_IMAGE_REBUILD=1 rebuilds).
# Prints the image name on stdout; progress goes to stderr, the build's output to
# <CI_WORK_DIR>/build-prometheus-image.log (its tail on stderr when it fails).
#
# Environment:
#   PROMETHEUS_IMAGE  tag to build  (default localhost/prometheus:debian)
#   BASE_IMAGE        base image    (default: the one ops/build-base-image.sh builds)
#   CI_WORK_DIR       scratch folder (default <repo>/.ci-work, gitignored)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work_dir="${CI_WORK_DIR:-$repo_root/.ci-work}"
image="${PROMETHEUS_IMAGE:-localhost/prometheus:debian}"

log() { printf '[build-prometheus-image] %s\n' "$*" >&2; }

if [[ "${PROMETHEUS_IMAGE_REBUILD:-0}" != 1 ]] && podman image exists "$image"; then
    log "$image already exists; skipping (PROMETHEUS_IMAGE_REBUILD=1 rebuilds it)"
    echo "$image"
    exit 0
fi

base="${BASE_IMAGE:-$("$repo_root/ops/build-base-image.sh")}"

ctx="$work_dir/prometheus-image"
rm -rf "$ctx"
mkdir -p "$ctx/debs" "$ctx/root"
# apt-get download fetches the .deb files only (nothing is installed on the host); `_apt` must
# be able to write into the target folder.
chmod 0777 "$ctx/debs"
build_log="$work_dir/build-prometheus-image.log"
(cd "$ctx/debs" && apt-get download -q prometheus busybox-static >"$build_log" 2>&1) || {
    apt-get update -q >>"$build_log" 2>&1
    (cd "$ctx/debs" && apt-get download -q prometheus busybox-static >>"$build_log" 2>&1)
} || { tail -n 20 "$build_log" >&2; log "apt-get download failed"; exit 1; }
for deb in "$ctx"/debs/*.deb; do
    dpkg-deb -x "$deb" "$ctx/root"
done

cat > "$ctx/Containerfile" <<'EOF'
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY root/usr/bin/prometheus root/usr/bin/promtool /bin/
COPY root/usr/share/prometheus /usr/share/prometheus
COPY root/bin/busybox /bin/busybox
RUN ln -s /bin/busybox /bin/wget \
    && mkdir -p /etc/prometheus /prometheus \
    && chown 65534:65534 /prometheus
USER 65534:65534
WORKDIR /prometheus
VOLUME ["/prometheus"]
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
EOF

log "podman build $image on $base"
if ! podman build --format docker --build-arg BASE_IMAGE="$base" -t "$image" "$ctx" >>"$build_log" 2>&1; then
    tail -n 30 "$build_log" >&2
    log "podman build failed (full output: $build_log)"
    exit 1
fi
rm -rf "$ctx"
echo "$image"
