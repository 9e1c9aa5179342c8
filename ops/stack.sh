#!/usr/bin/env bash
# The compose stack (compose.yaml: gateway, demo-server, Prometheus; with the `scale` profile
# also three gateway replicas, HAProxy and Redis) with podman-compose and no container registry.
#
#   ops/stack.sh up       # build the images locally, start the stack, wait until every service
#                         # is healthy; exits non-zero (naming the service) when one is not
#   ops/stack.sh up --scale       # the same with the `scale` profile (or STACK_PROFILE=scale)
#   ops/stack.sh status [--scale] # each container's state and health; non-zero unless all are
#                                 # healthy (a replica's row is SERVICE.N)
#   ops/stack.sh down     # remove the containers (every profile's), the network and the volumes
#                         # (named and anonymous); non-zero if any of them is left
#
# `up` rebuilds the gateway image only when its inputs changed (ops/build-image.sh compares a
# hash of them with the image's agent-mcp-gateway.inputs label), and starts containers that
# already exist as they are: when an image was rebuilt, it says so; `down` first, then `up`.
#
# The stack runs on the project's podman settings (ops/podman-setup.sh writes a containers.conf:
# runc, cgroupfs, netavark); plain `podman` without them does not see the stack's network. To
# inspect it yourself: eval "$(ops/podman-setup.sh env)" (or export the CONTAINERS_CONF that
# `up` and `status` print), then podman ps / podman network ls / podman logs.
#
# Why a wrapper: Debian bookworm's podman-compose 1.0.3 exits 0 when a container fails to start,
# does not wait for `depends_on: condition: service_healthy`, its `down` leaves the network
# and anonymous volumes behind, and it knows no `profiles` (so `up` names the profile's services). And without systemd podman runs no healthcheck timers, so this
# script runs each service's own healthcheck (`podman healthcheck run`) until it passes.
#
# What `up` needs (ops/podman-setup.sh installs the Debian packages when run as root):
#   - podman with catatonit (`init: true`), netavark + aardvark-dns (services reach each other by
#     name), podman-compose, debootstrap;
#   - the images, built here unless given: ops/build-image.sh (the local Debian base image by
#     debootstrap, about a minute the first time, then wheels built on the host from PyPI and an
#     offline `podman build`) and ops/build-prometheus-image.sh (Debian's prometheus package);
#     with --scale also ops/build-service-image.sh (Debian's haproxy and redis-server packages);
#     so the host needs Debian's mirror and PyPI, never a container registry;
#   - Python 3.11 with pip for the wheels: .venv (ops/demo.sh or ops/test.sh make it), else a
#     build venv made here (python3-venv).
#
# Environment:
#   STACK_PROJECT     compose project name (default agent-mcp-gateway); containers are named
#                     <project>_<service>_1, the network <project>_default
#   STACK_PROFILE     `scale` for the scale profile (the same as --scale); default: none
#   STACK_TIMEOUT     seconds every service gets to become healthy (default 180)
#   GATEWAY_IMAGE     an existing gateway image to run instead of building one
#   PROMETHEUS_IMAGE  an existing Prometheus image to run instead of building one
#   HAPROXY_IMAGE / REDIS_IMAGE      existing images for the scale profile
#   GATEWAY_PORT / PROMETHEUS_PORT / HAPROXY_PORT   host ports on 127.0.0.1
#                     (compose.yaml: 8000 / 9090 / 8080)
#   CI_WORK_DIR       scratch folder (default <repo>/.ci-work): podman-compose's output is kept
#                     in <CI_WORK_DIR>/stack/<project>.log
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
project="${STACK_PROJECT:-agent-mcp-gateway}"
profile="${STACK_PROFILE:-}"
timeout="${STACK_TIMEOUT:-180}"
work_dir="${CI_WORK_DIR:-$repo_root/.ci-work}"
compose_log="$work_dir/stack/$project.log"
label="io.podman.compose.project=$project"

log() { printf '[stack] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[[ "$project" =~ ^[a-z0-9][a-z0-9_-]*$ ]] || die "STACK_PROJECT must match [a-z0-9][a-z0-9_-]*"
[[ -z "$profile" || "$profile" == scale ]] || die "STACK_PROFILE must be empty or scale"

podman_env() {
    local env
    env="$("$repo_root/ops/podman-setup.sh" env)" || die "podman is not usable (see above)"
    eval "$env"
    command -v podman-compose >/dev/null || die "podman-compose is missing (apt-get install podman-compose)"
}

# Without systemd, podman cannot create healthcheck timers and says so on every start; the
# checks are run by this script instead.
[[ -d /run/systemd/system ]] || export DISABLE_HC_SYSTEMD=true

# The services of the chosen profile, one a line, as "NAME REPLICAS": those without `profiles`
# and those listing the profile (PyYAML: a podman-compose dependency).
services() {
    local names
    names="$(/usr/bin/python3 - compose.yaml "$profile" <<'PY'
import sys, yaml
services = yaml.safe_load(open(sys.argv[1]))["services"]
for name, service in services.items():
    if not service.get("profiles") or sys.argv[2] in service["profiles"]:
        print(name, service.get("deploy", {}).get("replicas", 1))
PY
)" && [[ -n "$names" ]] || die "cannot read the services of compose.yaml"
    printf '%s\n' "$names"
}

# containers SERVICE REPLICAS -> "ROW NAME" a line: ROW is the service, or SERVICE.N for replicas;
# NAME is empty for a container that does not exist.
containers() {
    local n name
    for ((n = 1; n <= $2; n++)); do
        name="$(podman ps -a --filter "label=$label" --filter "label=com.docker.compose.service=$1" \
            --filter "label=com.docker.compose.container-number=$n" --format '{{.Names}}' </dev/null | head -n 1)"
        if (($2 == 1)); then echo "$1 $name"; else echo "$1.$n $name"; fi
    done
}

build_python() {  # a Python 3.11 with pip for ops/build-image.sh's wheels
    if [[ -n "${PYTHON:-}" ]]; then echo "$PYTHON"; return; fi
    if [[ -x "$repo_root/.venv/bin/python" ]]; then echo "$repo_root/.venv/bin/python"; return; fi
    local venv="$work_dir/build-venv"
    if [[ ! -x "$venv/bin/pip" ]]; then
        python3 -m venv "$venv" >&2 || die "python3 -m venv failed: install python3-venv"
    fi
    echo "$venv/bin/python"
}

images() {
    if [[ -n "${GATEWAY_IMAGE:-}" ]]; then
        podman image exists "$GATEWAY_IMAGE" || die "GATEWAY_IMAGE $GATEWAY_IMAGE does not exist"
    else
        log "the gateway image (ops/build-image.sh: built when its inputs changed, else reused)"
        GATEWAY_IMAGE="$(PYTHON="$(build_python)" "$repo_root/ops/build-image.sh")"
    fi
    if [[ -n "${PROMETHEUS_IMAGE:-}" ]]; then
        podman image exists "$PROMETHEUS_IMAGE" || die "PROMETHEUS_IMAGE $PROMETHEUS_IMAGE does not exist"
    else
        PROMETHEUS_IMAGE="$("$repo_root/ops/build-prometheus-image.sh")"
    fi
    export GATEWAY_IMAGE PROMETHEUS_IMAGE
    log "images: gateway $GATEWAY_IMAGE, prometheus $PROMETHEUS_IMAGE"
    [[ "$profile" == scale ]] || return 0
    if [[ -n "${HAPROXY_IMAGE:-}" ]]; then
        podman image exists "$HAPROXY_IMAGE" || die "HAPROXY_IMAGE $HAPROXY_IMAGE does not exist"
    else
        HAPROXY_IMAGE="$("$repo_root/ops/build-service-image.sh" haproxy)"
    fi
    if [[ -n "${REDIS_IMAGE:-}" ]]; then
        podman image exists "$REDIS_IMAGE" || die "REDIS_IMAGE $REDIS_IMAGE does not exist"
    else
        REDIS_IMAGE="$("$repo_root/ops/build-service-image.sh" redis)"
    fi
    export HAPROXY_IMAGE REDIS_IMAGE
    log "images: haproxy $HAPROXY_IMAGE, redis $REDIS_IMAGE"
}

# health CONTAINER -> prints "state health": health is healthy, unhealthy, or none (no
# healthcheck). A container that has restarted (restart: unless-stopped) is "restarting": it crashed.
health() {
    local name="$1" state restarts
    if [[ -z "$name" ]]; then
        echo "missing -"
        return
    fi
    state="$(podman inspect --format '{{.State.Status}} {{.RestartCount}}' "$name" 2>/dev/null </dev/null \
             || echo "missing 0")"
    restarts="${state#* }"
    state="${state% *}"
    if [[ "$state" != running ]]; then
        echo "$state -"
        return
    fi
    if [[ "$restarts" != 0 ]]; then
        echo "restarting -"
        return
    fi
    # 0: healthy; 1: unhealthy (or still starting); 125: no healthcheck defined, or an error.
    local code=0
    podman healthcheck run "$name" >/dev/null 2>&1 </dev/null || code=$?
    case "$code" in
        0) echo "running healthy" ;;
        1) echo "running unhealthy" ;;
        *) if [[ "$(podman inspect --format '{{.Config.Healthcheck}}' "$name" 2>/dev/null </dev/null)" == "<nil>" ]]; then
               echo "running none"
           else
               echo "running unhealthy"
           fi ;;
    esac
}

show_failure() {  # show_failure CONTAINER
    local name="$1"
    if [[ -n "$name" ]]; then
        log "last log lines of $name:"
        podman logs --tail 40 "$name" 2>&1 </dev/null | grep -v '^\s*$' | uniq | tail -n 8 \
            | cut -c1-400 | sed 's/^/    /' >&2 || true
    fi
    if [[ -f "$compose_log" ]]; then
        log "podman-compose said (full output: $compose_log):"
        # (It probes each volume before creating it: those "no such volume" lines are expected.)
        grep -iE 'error|denied|refused|not found|no such' "$compose_log" | grep -v 'no such volume' \
            | tail -n 15 | cut -c1-400 | sed 's/^/    /' >&2 || true
    fi
    log "the stack is left as it is for inspection; remove it with: ops/stack.sh down"
    if [[ -z "${hinted:-}" ]]; then
        hinted=1
        inspect_hint
    fi
}

up() {
    podman_env
    images
    "$repo_root/ops/compose-env.sh"  # the API tokens, made once (the gateway binds 0.0.0.0)
    mkdir -p "$(dirname "$compose_log")"
    local all names=()
    all="$(services)"
    mapfile -t names < <(cut -d' ' -f1 <<<"$all")
    log "podman-compose up -d (project $project${profile:+, profile $profile}: ${names[*]})"
    # Its exit status says nothing (1.0.3 returns 0 when a container fails); checked below.
    podman-compose -p "$project" -f compose.yaml up -d --no-build "${names[@]}" >"$compose_log" 2>&1 || true

    local row service replicas deadline start line state status pending=() rows
    while read -r service replicas; do
        rows="$(containers "$service" "$replicas")"
        mapfile -t -O "${#pending[@]}" pending <<<"$rows"
    done <<<"$all"
    start=$(date +%s)
    deadline=$((start + timeout))
    while ((${#pending[@]})); do
        local still=()
        for row in "${pending[@]}"; do
            service="${row%% *}"
            line="$(health "${row#* }")"
            state="${line% *}"
            status="${line#* }"
            case "$state $status" in
                "running healthy" | "running none")
                    log "$service: healthy after $(($(date +%s) - start)) s" ;;
                "running unhealthy")
                    still+=("$row") ;;
                "restarting -")
                    log "$service: container exited and was restarted (it crashes)"
                    show_failure "${row#* }"
                    exit 1 ;;
                *)
                    log "$service: container is $state, not running"
                    show_failure "${row#* }"
                    exit 1 ;;
            esac
        done
        pending=("${still[@]}")
        ((${#pending[@]})) || break
        if (($(date +%s) >= deadline)); then
            for row in "${pending[@]}"; do
                log "${row%% *}: not healthy within $timeout s"
                show_failure "${row#* }"
            done
            exit 1
        fi
        sleep 2
    done
    log "up: gateway http://127.0.0.1:${GATEWAY_PORT:-8000}/mcp (/ready, /metrics)," \
        "Prometheus http://127.0.0.1:${PROMETHEUS_PORT:-9090}"
    [[ "$profile" != scale ]] || log "up: gateway replicas behind HAProxy http://127.0.0.1:${HAPROXY_PORT:-8080}/mcp"
    stale_containers
    inspect_hint
}

# Containers made from an older build of their image (`up` does not replace running containers).
stale_containers() {
    local name image_id image_name want
    while read -r name; do
        [[ -n "$name" ]] || continue
        read -r image_id image_name < <(podman inspect --format '{{.Image}} {{.ImageName}}' "$name" \
            2>/dev/null </dev/null || true) || continue
        [[ -n "${image_name:-}" ]] || continue
        want="$(podman image inspect --format '{{.Id}}' "$image_name" 2>/dev/null </dev/null || true)"
        if [[ -n "$want" && "$want" != "$image_id" ]]; then
            log "note: $name runs an older build of $image_name; to use the new one: ops/stack.sh down && ops/stack.sh up"
        fi
    done < <(podman ps -a --filter "label=$label" --format '{{.Names}}' </dev/null)
}

# How to look at the stack with podman directly: with the project's settings, not the defaults.
inspect_hint() {
    log "to inspect it with podman, use the project's settings (plain podman does not see its network):"
    log "    export CONTAINERS_CONF=$CONTAINERS_CONF    # or: eval \"\$(ops/podman-setup.sh env)\""
    log "    podman ps --filter label=$label; podman network ls; podman logs ${project}_gateway_1"
}

status() {
    podman_env
    local service replicas row line ok=0 all rows
    all="$(services)"
    while read -r service replicas; do
        rows="$(containers "$service" "$replicas")"
        while read -r row; do
            line="$(health "${row#* }")"
            printf '%-17s %-10s %s\n' "${row%% *}" "${line% *}" "${line#* }"
            case "$line" in "running healthy" | "running none") ;; *) ok=1 ;; esac
        done <<<"$rows"
    done <<<"$all"
    inspect_hint
    return "$ok"
}

down() {
    podman_env
    local containers volumes networks
    mapfile -t containers < <(podman ps -a -q --filter "label=$label")
    if ((${#containers[@]})); then
        # Graceful first (compose.yaml's stop_grace_period: the gateway drains in-flight calls),
        # then removed with their anonymous volumes, which podman-compose's `down` would leave.
        podman stop -t 35 "${containers[@]}" >/dev/null 2>&1 || true
        podman rm -f -v "${containers[@]}" >/dev/null
    fi
    mapfile -t networks < <(podman network ls -q --filter "label=$label")
    ((${#networks[@]} == 0)) || podman network rm -f "${networks[@]}" >/dev/null
    mapfile -t volumes < <(podman volume ls -q --filter "label=$label")
    ((${#volumes[@]} == 0)) || podman volume rm -f "${volumes[@]}" >/dev/null

    local left
    left="$( { podman ps -a -q --filter "label=$label"; podman network ls -q --filter "label=$label"
               podman volume ls -q --filter "label=$label"; } | tr '\n' ' ')"
    [[ -z "${left// /}" ]] || die "left behind: $left"
    log "down: ${#containers[@]} containers, ${#networks[@]} networks, ${#volumes[@]} volumes removed"
}

command="${1:-}"
case "${2:-}" in
    --scale) profile=scale ;;
    "") ;;
    *) echo "usage: $0 up|down|status [--scale]" >&2; exit 2 ;;
esac
case "$command" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status [--scale]" >&2; exit 2 ;;
esac
