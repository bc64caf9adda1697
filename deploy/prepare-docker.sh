#!/usr/bin/env bash
# Prepares Docker on this machine for the Docker sandbox and the images (`make docker`):
# an engine (Debian's docker.io, started here when none answers), a Debian base image made with
# debootstrap (no registry needed), the kernel image and the server image, and a compose tool. Each step is skipped
# when its result is already there, so a second run only re-checks the images' build cache.
#
# Environment: DOCKER_HOST (the engine to use; default the socket started here),
# KERNELAGENT_DOCKER_ROOT (where a started engine keeps its data), BASE (the images' base).
set -euo pipefail
cd "$(dirname "$0")/.."

ENGINE_RUN=${KERNELAGENT_DOCKER_RUN:-/run/kernelagent-docker}
ENGINE_ROOT=${KERNELAGENT_DOCKER_ROOT:-/var/lib/kernelagent-docker}
export DOCKER_HOST=${DOCKER_HOST:-unix://$ENGINE_RUN/docker.sock}
BASE=${BASE:-kernelagent/debian:bookworm}
KERNEL_IMAGE=${KERNELAGENT_KERNEL_IMAGE:-kernelagent/kernel-python:latest}
SERVER_IMAGE=${KERNELAGENT_SERVER_IMAGE:-kernelagent/server:latest}
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)

say() { printf 'docker: %s\n' "$*" >&2; }

install_packages() {
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@"
}

engine() {
    if docker info >/dev/null 2>&1; then
        return
    fi
    command -v dockerd >/dev/null || { say "installing docker.io"; install_packages docker.io; }
    say "starting an engine at $DOCKER_HOST (data in $ENGINE_ROOT)"
    $SUDO mkdir -p "$ENGINE_RUN" "$ENGINE_ROOT"
    # no bridge or iptables (kernels run with --network none, builds with the host's network);
    # overlay2, because vfs copies the whole image per container
    $SUDO nohup setsid dockerd --iptables=false --ip-forward=false --bridge=none \
        --storage-driver=overlay2 --data-root "$ENGINE_ROOT" --exec-root "$ENGINE_RUN/exec" \
        -H "$DOCKER_HOST" --pidfile "$ENGINE_RUN/dockerd.pid" \
        >"$ENGINE_RUN/dockerd.log" 2>&1 </dev/null &
    for _ in $(seq 100); do
        docker info >/dev/null 2>&1 && return
        sleep 0.2
    done
    say "the engine did not start; its log:"; tail -20 "$ENGINE_RUN/dockerd.log" >&2; exit 1
}

base_image() {
    docker image inspect "$BASE" >/dev/null 2>&1 && return
    [ "$BASE" = kernelagent/debian:bookworm ] || { say "base image $BASE is missing"; exit 1; }
    command -v debootstrap >/dev/null || { say "installing debootstrap"; install_packages debootstrap; }
    say "making $BASE with debootstrap (about a minute)"
    rootfs=$(mktemp -d)
    trap '$SUDO rm -rf "$rootfs"' RETURN
    $SUDO debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
    $SUDO tar -C "$rootfs" -c . | docker import - "$BASE" >/dev/null
}

build() {  # image dockerfile
    # pip reaches the index through this machine's CA bundle; it stays in the build stage
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        cp /etc/ssl/certs/ca-certificates.crt deploy/certs/ca.crt
    fi
    say "building $1"
    log=$(mktemp)
    if ! docker build --network host --build-arg BASE="$BASE" -t "$1" -f "$2" . >"$log" 2>&1; then
        tail -30 "$log" >&2; rm -f "$log"; exit 1
    fi
    rm -f "$log"
}

compose_tool() {  # checks compose.yaml in the tests (Debian's docker-compose)
    command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || {
        say "installing docker-compose"; install_packages docker-compose; }
}

engine
compose_tool
base_image
build "$KERNEL_IMAGE" kernel_images/python/Dockerfile
if [ "${1:-}" != "--kernel-only" ]; then
    build "$SERVER_IMAGE" Dockerfile
fi
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep '^kernelagent/' >&2
