#!/usr/bin/env bash
# Make podman usable on a bare Debian bookworm machine (CI or a developer's) and, optionally,
# run its Docker-compatible API for testcontainers.
#
#   eval "$(ops/podman-setup.sh start)"   # install if needed, write containers.conf, start the
#                                         # API service, export CONTAINERS_CONF, DOCKER_HOST and
#                                         # the TESTCONTAINERS_* variables into this shell
#   eval "$(ops/podman-setup.sh env)"     # same, without starting the API service
#   ops/podman-setup.sh stop              # stop the API service started by `start` (by its pid)
#   ops/podman-setup.sh status            # say whether the API service is running
#   ops/podman-setup.sh packages          # list the Debian packages still missing (nothing
#                                         # is installed; ops/test.sh installs them in one go)
#
# Everything `start` and `env` print on stdout is `export ...` lines (safe to eval); progress and
# errors go to stderr. Every step is idempotent: running `start` twice reuses the running service.
#
# Environment:
#   PODMAN_SETUP_DIR  where containers.conf, the API socket, its pid and log file live
#                     (default <CI_WORK_DIR>/podman; CI_WORK_DIR defaults to <repo>/.ci-work,
#                     which git ignores)
#   PODMAN_SKIP_INSTALL=1  never call apt-get (fail if podman is missing)
#
# Why a containers.conf of our own: crun refused this kind of host's cgroup layout (runc works),
# podman's default ulimits are above what the host allows, so every container start failed, and
# the network backend is named so that container DNS (netavark + aardvark-dns) is what runs.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
setup_dir="${PODMAN_SETUP_DIR:-${CI_WORK_DIR:-$repo_root/.ci-work}/podman}"
conf="$setup_dir/containers.conf"
pid_file="$setup_dir/service.pid"
sock_file="$setup_dir/service.sock-path"   # remembers where the socket is (see sock_path)
log_file="$setup_dir/service.log"

log() { printf '[podman-setup] %s\n' "$*" >&2; }

# Debian packages podman needs here, beyond the podman package itself:
#   runc                      the runtime (crun fails on this kind of host's cgroup v1 layout)
#   catatonit                 podman's init binary: `--init` / compose `init: true` fail without it
#   netavark, aardvark-dns    the network backend, with DNS so containers reach each other by name
#   iptables                  netavark sets up NAT and port forwarding with it
#   podman-compose            compose.yaml (ops/stack.sh)
#   debootstrap               the local base image (ops/build-base-image.sh); no registry needed
#   uidmap, slirp4netns, fuse-overlayfs   rootless podman for developers
# Installed with --no-install-recommends: Recommends would pull buildah, dbus and more.
PACKAGES=(podman runc catatonit netavark aardvark-dns iptables podman-compose debootstrap
          uidmap slirp4netns fuse-overlayfs)

missing_packages() {  # the packages of PACKAGES that are not installed, one a line
    local package
    for package in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null | grep -qx installed \
            || printf '%s\n' "$package"
    done
}

install_packages() {
    local missing
    mapfile -t missing < <(missing_packages)
    ((${#missing[@]})) || return 0
    if [[ "${PODMAN_SKIP_INSTALL:-0}" == 1 ]]; then
        log "missing: ${missing[*]} (PODMAN_SKIP_INSTALL=1, not installing)"
        return 1
    fi
    if [[ $(id -u) != 0 ]]; then
        log "missing: ${missing[*]}; run as root or: sudo apt-get install -y --no-install-recommends ${missing[*]}"
        return 1
    fi
    log "apt-get install ${missing[*]}"
    local apt_log
    apt_log="$(mktemp)"
    # Another shell may be installing packages right now: wait for dpkg's lock (up to 10 min).
    if ! { apt-get -o DPkg::Lock::Timeout=600 update -q &&
           DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
               install -y -q --no-install-recommends "${missing[@]}"; } >"$apt_log" 2>&1; then
        tail -n 40 "$apt_log" >&2
        rm -f "$apt_log"
        log "apt-get failed"
        return 1
    fi
    rm -f "$apt_log"
}

# What a fresh machine lacked before these packages were listed: say so plainly instead of
# letting the first container fail with a message about /dev/init or an unknown host.
check_install() {
    local problems=() dns=""
    # podman's default init_path; Debian's catatonit package links it to /usr/bin/catatonit.
    [[ -x /usr/libexec/podman/catatonit ]] \
        || problems+=("no /usr/libexec/podman/catatonit (package catatonit): --init / init: true fail")
    for candidate in /usr/lib/podman/aardvark-dns /usr/libexec/podman/aardvark-dns; do
        [[ -x "$candidate" ]] && { dns="$candidate"; break; }
    done
    [[ -n "$dns" ]] || problems+=("no aardvark-dns: containers cannot reach each other by name")
    command -v runc >/dev/null || problems+=("no runc")
    if ((${#problems[@]})); then
        local problem
        for problem in "${problems[@]}"; do log "$problem"; done
        return 1
    fi
}

write_conf() {
    mkdir -p "$setup_dir"
    local want
    want=$(cat <<'EOF'
# Written by ops/podman-setup.sh; used through CONTAINERS_CONF.
[containers]
# The host's hard limits are below podman's defaults (1048576 open files).
default_ulimits = ["nofile=20000:20000", "nproc=16384:16384"]
log_driver = "k8s-file"

[engine]
# crun fails on this host's cgroup v1 layout; runc works.
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

[network]
# netavark with aardvark-dns: containers on a network reach each other by name. (Debian's CNI
# plugins have no DNS unless golang-github-containernetworking-plugin-dnsname is installed.)
network_backend = "netavark"
EOF
)
    if [[ ! -f "$conf" ]] || [[ "$(cat "$conf")" != "$want" ]]; then
        printf '%s\n' "$want" > "$conf"
        log "wrote $conf"
    fi
}

# A unix socket path must stay under ~108 bytes; a deep checkout falls back to a short
# temporary directory, remembered in $sock_file so `stop` and later calls find it again.
sock_path() {
    if [[ -f "$sock_file" ]]; then
        cat "$sock_file"
        return
    fi
    local sock="$setup_dir/podman.sock"
    if ((${#sock} > 100)); then
        sock="$(mktemp -d)/podman.sock"
    fi
    printf '%s\n' "$sock" > "$sock_file"
    printf '%s\n' "$sock"
}

service_running() {
    [[ -f "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null
}

start_service() {
    local sock
    sock="$(sock_path)"
    if service_running && [[ -S "$sock" ]]; then
        log "API service already running (pid $(cat "$pid_file")) on unix://$sock"
        return 0
    fi
    rm -f "$sock"
    mkdir -p "$(dirname "$sock")"
    # --time=0: never exit on idle. setsid + nohup: the service outlives this script and the
    # shell that ran it, and is stopped only by `stop` (by its pid).
    CONTAINERS_CONF="$conf" setsid nohup podman system service --time=0 "unix://$sock" \
        >"$log_file" 2>&1 < /dev/null &
    echo $! > "$pid_file"
    for _ in $(seq 1 100); do
        if [[ -S "$sock" ]] && CONTAINERS_CONF="$conf" podman --url "unix://$sock" version >/dev/null 2>&1; then
            log "API service started (pid $(cat "$pid_file")) on unix://$sock"
            return 0
        fi
        if ! service_running; then
            break
        fi
        sleep 0.1
    done
    log "API service did not come up; its log:"
    cat "$log_file" >&2 || true
    return 1
}

stop_service() {
    if service_running; then
        local pid
        pid="$(cat "$pid_file")"
        kill "$pid"
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
        log "API service stopped (pid $pid)"
    else
        log "API service not running"
    fi
    rm -f "$pid_file"
    if [[ -f "$sock_file" ]]; then
        rm -f "$(cat "$sock_file")"
    fi
}

print_env() {
    printf 'export CONTAINERS_CONF=%q\n' "$conf"
    if [[ "${1:-}" == with-service ]]; then
        local sock
        sock="$(sock_path)"
        printf 'export DOCKER_HOST=%q\n' "unix://$sock"
        printf 'export TESTCONTAINERS_RYUK_DISABLED=true\n'
        printf 'export TESTCONTAINERS_CONNECTION_MODE=docker_host\n'
        printf 'export PODMAN_SERVICE_PID=%q\n' "$(cat "$pid_file")"
    fi
}

case "${1:-start}" in
    start)
        install_packages
        check_install
        write_conf
        start_service
        print_env with-service
        ;;
    env)
        install_packages
        check_install
        write_conf
        print_env
        ;;
    stop)
        stop_service
        ;;
    packages)
        missing_packages
        ;;
    status)
        if service_running; then
            log "running (pid $(cat "$pid_file")) on unix://$(sock_path)"
        else
            log "not running"
            exit 1
        fi
        ;;
    *)
        echo "usage: $0 [start|env|stop|status|packages]" >&2
        exit 2
        ;;
esac
