#!/usr/bin/env bash
# Rehearse CI on a clean Debian 12 root: what `.ci/run` does on a fresh machine, without needing
# one. Not run by CI (it needs root on the host and takes 20-40 minutes); run it by hand after
# changing anything the set-up depends on (ops/test.sh, ops/podman-setup.sh, ops/build-*.sh, ...).
#
#   sudo ops/rehearse-clean-root.sh          # = run
#   sudo ops/rehearse-clean-root.sh run      # fresh root, clone HEAD, CI=true bash .ci/run </dev/null
#   sudo ops/rehearse-clean-root.sh rerun    # same, but in the root the last run left (faster;
#                                            # not fresh: packages and images are already there)
#   sudo ops/rehearse-clean-root.sh shell    # a shell in the last root, same namespaces
#   sudo ops/rehearse-clean-root.sh clean    # remove the root (the base tarball and logs stay)
#
# What `run` does:
#   1. debootstraps bookworm once (minbase + python3, python3-venv, git, ca-certificates: Debian's
#      base system plus what the README assumes) into a cached tarball, and unpacks it fresh;
#   2. copies in how this host reaches the registries: its Debian apt sources and the apt.conf.d
#      files that set Acquire:: options (proxies, validity checks), /etc/pip.conf, /etc/xdg/pip,
#      the invoking user's ~/.npmrc, /etc/resolv.conf and the CA bundle; the CA-related
#      environment variables (SSL_CERT_FILE, NODE_EXTRA_CA_CERTS, PIP_CERT, ...) are passed on
#      when they point at that bundle;
#   3. clones this repository's HEAD into the root (commit first: the working tree is not used);
#   4. in new mount, PID and (by default) network namespaces, bind-mounts the root onto itself (so
#      that / is a mount point, as on a real machine), mounts /proc, /sys (with the host's
#      /sys/fs/cgroup), /dev (with its own /dev/shm), a /run tmpfs, makes it the namespace's root
#      with pivot_root (a plain chroot breaks `podman exec`, see below) and runs
#      `CI=true bash .ci/run </dev/null` with a clean environment, logging everything;
#   5. prints the pytest summary, whether container tests ran or skipped, and the time taken.
#
# The private network namespace gets its own loopback, bridges and iptables, and reaches out
# through slirp4netns (user-mode NAT through the host), so the root's podman networks never meet
# the host's. Every process of the rehearsal ends with it (PID namespace); every mount goes with
# the mount namespace.
#
# Environment:
#   REHEARSAL_DIR      where the root, base tarball and logs live
#                      (default /var/tmp/agent-mcp-gateway-rehearsal; keep it out of the repo)
#   REHEARSAL_NET      private (default) or host (share the host's network namespace)
#   REHEARSAL_REFRESH  1 to debootstrap the base tarball again
#   DEBIAN_MIRROR      debootstrap mirror (default http://deb.debian.org/debian)
# Host tools (installed with apt-get when missing): debootstrap, slirp4netns (private network),
# util-linux's unshare, nsenter and pivot_root, iproute2's ip.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
self="$repo_root/ops/$(basename "${BASH_SOURCE[0]}")"
dir="${REHEARSAL_DIR:-/var/tmp/agent-mcp-gateway-rehearsal}"
root="$dir/root"
base_tar="$dir/base-bookworm.tar"
net_mode="${REHEARSAL_NET:-private}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
clone_dir=/root/agent-mcp-gateway
origin=/mnt/origin

log() { printf '[rehearse] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# Inside the new namespaces (PID 1 of the PID namespace): mounts, chroot, the CI command.
if [[ "${1:-}" == __inside ]]; then
    mode="$2"
    if [[ "$net_mode" == private ]]; then
        for _ in $(seq 1 300); do [[ -e "$dir/net-ready" ]] && break; sleep 0.1; done
        [[ -e "$dir/net-ready" ]] || die "the network namespace was not set up"
    fi
    # The root must be a mount point, as / is on a real machine: podman's layer extraction
    # remounts / private (EINVAL on a plain directory).
    mount --bind "$root" "$root"
    mount -t proc proc "$root/proc"
    if [[ "$net_mode" == private ]]; then
        mount -t sysfs sysfs "$root/sys"            # shows this network namespace's devices
        mount --rbind /sys/fs/cgroup "$root/sys/fs/cgroup"
    else
        mount --rbind /sys "$root/sys"
    fi
    mount --rbind /dev "$root/dev"
    mount -t tmpfs -o mode=1777,nosuid,nodev shm "$root/dev/shm"   # podman's locks live here
    mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$root/run"
    mkdir -p "$root$origin"
    mount --bind -o ro "$repo_root" "$root$origin"

    env_args=(HOME=/root USER=root LOGNAME=root LANG=C.UTF-8 TERM="${TERM:-dumb}"
              PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
    bundle=/etc/ssl/certs/ca-certificates.crt
    for name in SSL_CERT_FILE SSL_CERT_DIR REQUESTS_CA_BUNDLE PIP_CERT NODE_EXTRA_CA_CERTS \
                PIP_DEFAULT_TIMEOUT; do
        value="${!name:-}"
        case "$value" in
            "$bundle" | /etc/ssl/certs | [0-9]*) env_args+=("$name=$value") ;;
        esac
    done

    # pivot_root, not chroot: the namespace's root must be the new root. After a plain chroot
    # the mount namespace's root is still the host's /, and `podman exec` (so every healthcheck)
    # lands there: runc's exec joins the container's mount namespace, whose root it inherited.
    cd "$root"
    mkdir -p .old-root
    pivot_root . .old-root
    cd /
    umount -l /.old-root
    rmdir /.old-root

    if [[ "$mode" == shell ]]; then
        exec /usr/bin/env -i "${env_args[@]}" /bin/bash -l
    fi
    # shellcheck disable=SC2016  # expanded inside the root
    exec /usr/bin/env -i "${env_args[@]}" /bin/bash -c '
        set -euo pipefail
        rm -rf "$1"
        git clone -q "$2" "$1"
        cd "$1"
        echo "[rehearse] commit $(git log -1 --format="%h %s")"
        start=$(date +%s)
        status=0
        CI=true bash .ci/run </dev/null || status=$?
        echo "[rehearse] .ci/run exit status $status after $(( $(date +%s) - start )) s"
        exit "$status"
    ' rehearsal "$clone_dir" "$origin"
fi

# ---------------------------------------------------------------------------------------------
# On the host.
[[ $(id -u) == 0 ]] || die "run as root (debootstrap, namespaces and chroot need it)"
[[ "$net_mode" == private || "$net_mode" == host ]] || die "REHEARSAL_NET must be private or host"
case "$dir" in
    "$repo_root" | "$repo_root"/*) die "REHEARSAL_DIR must be outside the repository" ;;
esac

mounted_under_root() { findmnt -rn -o TARGET | grep -q "^$root\(/\|$\)"; }

remove_root() {
    [[ -d "$root" ]] || return 0
    # The mounts live in the rehearsal's own mount namespace; never delete through one.
    mounted_under_root && die "something is mounted under $root; not removing it"
    rm -rf --one-file-system "$root"
}

host_tools() {
    local missing=()
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    if [[ "$net_mode" == private ]]; then command -v slirp4netns >/dev/null || missing+=(slirp4netns); fi
    command -v unshare >/dev/null && command -v nsenter >/dev/null || missing+=(util-linux)
    command -v ip >/dev/null || missing+=(iproute2)
    ((${#missing[@]})) || return 0
    log "host: apt-get install ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
}

make_base() {
    if [[ -f "$base_tar" && "${REHEARSAL_REFRESH:-0}" != 1 ]]; then return 0; fi
    local tmp
    tmp="$(mktemp -d "$dir/debootstrap.XXXXXX")"
    log "debootstrap bookworm (minbase + python3 python3-venv git ca-certificates)"
    if ! debootstrap --variant=minbase --include=python3,python3-venv,git,ca-certificates \
            bookworm "$tmp" "$mirror" >"$dir/debootstrap.log" 2>&1; then
        tail -n 20 "$dir/debootstrap.log" >&2
        rm -rf --one-file-system "$tmp"
        die "debootstrap failed (log: $dir/debootstrap.log)"
    fi
    rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*
    tar -C "$tmp" -cf "$base_tar.tmp" . && mv "$base_tar.tmp" "$base_tar"
    rm -rf --one-file-system "$tmp"
}

copy_host_config() {
    # apt: the host's Debian sources replace debootstrap's sources.list.
    rm -f "$root/etc/apt/sources.list"
    [[ -f /etc/apt/sources.list ]] && cp /etc/apt/sources.list "$root/etc/apt/sources.list"
    local file
    for file in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
        [[ -f "$file" ]] || continue
        # Only Debian's archives: other repositories need keyrings a fresh machine does not have.
        grep -qE 'deb\.debian\.org|security\.debian\.org|ftp\.[a-z.]*debian\.org' "$file" || continue
        cp "$file" "$root/etc/apt/sources.list.d/"
    done
    for file in /etc/apt/apt.conf.d/*; do
        [[ -f "$file" ]] && grep -q 'Acquire::' "$file" && cp "$file" "$root/etc/apt/apt.conf.d/"
    done
    # pip, npm, DNS, CA bundle.
    [[ -f /etc/pip.conf ]] && cp /etc/pip.conf "$root/etc/pip.conf"
    [[ -d /etc/xdg/pip ]] && mkdir -p "$root/etc/xdg" && cp -r /etc/xdg/pip "$root/etc/xdg/"
    local npmrc="${SUDO_USER:+$(getent passwd "$SUDO_USER" | cut -d: -f6)/.npmrc}"
    npmrc="${npmrc:-$HOME/.npmrc}"
    [[ -f "$npmrc" ]] && cp "$npmrc" "$root/root/.npmrc"
    cp --remove-destination /etc/resolv.conf "$root/etc/resolv.conf"
    if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
        # The bundle itself, and the same certificates as a local CA file, so that a later
        # update-ca-certificates in the root keeps them.
        cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
        mkdir -p "$root/usr/local/share/ca-certificates"
        cp /etc/ssl/certs/ca-certificates.crt "$root/usr/local/share/ca-certificates/host-bundle.crt"
    fi
    printf 'rehearsal\n' > "$root/etc/hostname"
}

# Runs "$0 __inside MODE" in new namespaces; with a private network, wires it to the outside.
in_namespaces() {
    local mode="$1" ns_args=(--mount --pid --fork --propagation private)
    [[ "$net_mode" == private ]] && ns_args+=(--net --uts)
    rm -f "$dir/net-ready"
    # An explicit stdin: a background job would otherwise read /dev/null (matters for `shell`).
    unshare "${ns_args[@]}" "$self" __inside "$mode" <&0 &
    local upid=$! slirp_pid="" status=0
    if [[ "$net_mode" == private ]]; then
        for _ in $(seq 1 100); do
            [[ "$(readlink "/proc/$upid/ns/net" 2>/dev/null)" != "$(readlink /proc/self/ns/net)" ]] && break
            sleep 0.05
        done
        slirp4netns --configure --mtu=65520 --disable-host-loopback "$upid" tap0 \
            >"$dir/slirp4netns.log" 2>&1 &
        slirp_pid=$!
        for _ in $(seq 1 100); do
            nsenter --net="/proc/$upid/ns/net" ip -4 -o addr show tap0 2>/dev/null | grep -q inet && break
            sleep 0.1
        done
        nsenter --net="/proc/$upid/ns/net" ip link set lo up
        nsenter --uts="/proc/$upid/ns/uts" hostname rehearsal
        touch "$dir/net-ready"
    fi
    wait "$upid" || status=$?
    [[ -n "$slirp_pid" ]] && kill "$slirp_pid" 2>/dev/null
    rm -f "$dir/net-ready"
    return "$status"
}

summary() {  # summary LOG SECONDS
    local logfile="$1" seconds="$2" line
    line="$(grep -E '^=+ .*(passed|failed|error|skipped).* in [0-9.]+s' "$logfile" | tail -n 1 || true)"
    log "pytest: ${line:-no pytest summary line (see the log)}"
    if grep -q -- '-- container tests skipped --' "$logfile"; then
        log "container tests: SKIPPED ($(grep -A1 -- '-- container tests skipped --' "$logfile" | tail -n 1))"
    elif grep -qE 'tests/container/test_image.py::[a-z_]+ PASSED|container measurements' "$logfile"; then
        log "container tests: ran"
    fi
    log "total time on the host: $((seconds / 60)) min $((seconds % 60)) s; log: $logfile"
}

command="${1:-run}"
case "$command" in
    run | rerun)
        host_tools
        mkdir -p "$dir/logs"
        if [[ -n "$(git -C "$repo_root" status --porcelain --untracked-files=no)" ]]; then
            log "note: uncommitted changes are not rehearsed (the root clones HEAD)"
        fi
        if [[ "$command" == run || ! -d "$root" ]]; then
            make_base
            remove_root
            mkdir -p "$root"
            tar -C "$root" -xf "$base_tar"
        fi
        copy_host_config
        logfile="$dir/logs/run-$(date -u +%Y%m%dT%H%M%SZ).log"
        log "$command: $(git -C "$repo_root" log -1 --format='%h %s'); network: $net_mode; log: $logfile"
        start=$(date +%s)
        status=0
        in_namespaces ci >"$logfile" 2>&1 </dev/null || status=$?
        summary "$logfile" $(($(date +%s) - start))
        log "exit status $status"
        exit "$status"
        ;;
    shell)
        [[ -d "$root" ]] || die "no root yet: run first"
        host_tools
        in_namespaces shell
        ;;
    clean)
        remove_root
        log "removed $root"
        ;;
    *)
        echo "usage: $0 [run|rerun|shell|clean]" >&2
        exit 2
        ;;
esac
