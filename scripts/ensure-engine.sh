# shellcheck shell=bash
# What isol8 needs on the host, made sure of: a Docker engine that answers and debootstrap (the
# runtime images are bootstrapped locally, no registry is needed). On Debian/Ubuntu as root it
# installs them (docker.io, debootstrap) and starts dockerd; elsewhere it says what to install.
# Sourced by scripts/isol8 (the README's first command) and scripts/test.sh: one copy of this step.

isol8_log() { echo "==> $*" >&2; }

# Exits (the sourcing script too) unless this is Debian/Ubuntu as root, saying what to do by hand.
isol8_need_root_debian() {
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        cat >&2 <<MSG
[ERR] $1 is missing, and isol8 installs it by itself only on Debian/Ubuntu as root.
      Install by hand, then rerun:
        - Docker Engine 20.10 or newer (Debian/Ubuntu: apt-get install docker.io; others:
          https://docs.docker.com/engine/install/), running (systemctl start docker, or dockerd &),
          reachable by this user (the docker group, or DOCKER_HOST)
        - debootstrap (Debian/Ubuntu: apt-get install debootstrap; Fedora: dnf install debootstrap)
MSG
        exit 1
    fi
}

ISOL8_APT_UPDATED=${ISOL8_APT_UPDATED:-}
isol8_apt_install() {
    isol8_need_root_debian "$*"
    isol8_log "installing $*"
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "$ISOL8_APT_UPDATED" ]; then
        apt-get update -qq
        ISOL8_APT_UPDATED=1
    fi
    apt-get install -y -qq "$@" >/dev/null
}

# Where a dockerd started here logs.
ISOL8_DOCKERD_LOG=${ISOL8_DOCKERD_LOG:-/var/log/isol8-dockerd.log}

isol8_ensure_docker() {
    if docker info >/dev/null 2>&1; then return; fi
    if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
        isol8_apt_install docker.io
    fi
    if ! docker info >/dev/null 2>&1; then
        isol8_need_root_debian "a running Docker daemon"
        isol8_log "starting dockerd (log: $ISOL8_DOCKERD_LOG)"
        nohup dockerd >>"$ISOL8_DOCKERD_LOG" 2>&1 &
        for _ in $(seq 1 60); do
            docker info >/dev/null 2>&1 && break
            sleep 1
        done
    fi
    docker info >/dev/null 2>&1 || {
        echo "[ERR] dockerd did not come up; see $ISOL8_DOCKERD_LOG" >&2
        exit 1
    }
}

isol8_ensure_debootstrap() {
    command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || isol8_apt_install debootstrap
}

# The C library's static archive: the in-container agent is linked statically (docker/build.rs).
isol8_ensure_static_libc() {
    local archive
    archive=$(cc -print-file-name=libc.a 2>/dev/null || true)
    [ -f "$archive" ] || isol8_apt_install libc6-dev
}

# Everything isol8 itself needs on the host.
isol8_ensure_engine() {
    isol8_ensure_docker
    isol8_ensure_debootstrap
    isol8_ensure_static_libc
}
