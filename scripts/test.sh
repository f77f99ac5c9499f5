#!/usr/bin/env bash
# isol8's whole test suite, from a brand-new machine: make sure a Docker engine answers (install and
# start it on Debian as root), build the runtime images, then fmt, clippy and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "==> $*" >&2; }

need_root_debian() {
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "[ERR] $1 is missing and can only be installed automatically on Debian as root." >&2
        echo "      Install Docker Engine and debootstrap, start the daemon, and rerun." >&2
        exit 1
    fi
}

apt_install() {
    need_root_debian "$*"
    log "installing $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "$@" >/dev/null
}

ensure_docker() {
    if docker info >/dev/null 2>&1; then return; fi
    command -v dockerd >/dev/null || apt_install docker.io
    command -v docker >/dev/null || apt_install docker.io
    if ! docker info >/dev/null 2>&1; then
        need_root_debian "a running Docker daemon"
        log "starting dockerd (log: /var/log/isol8-dockerd.log)"
        nohup dockerd >/var/log/isol8-dockerd.log 2>&1 &
        for _ in $(seq 1 60); do
            docker info >/dev/null 2>&1 && break
            sleep 1
        done
    fi
    docker info >/dev/null 2>&1 || { echo "[ERR] dockerd did not come up; see /var/log/isol8-dockerd.log" >&2; exit 1; }
}

ensure_docker
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || apt_install debootstrap
command -v python3 >/dev/null || apt_install python3

# HTTPS from containers may pass a TLS-inspecting proxy: trust the host's CA bundle in images and sandboxes.
if [ -z "${ISOL8_EXTRA_CA_CERTS:-}" ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    export ISOL8_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
fi

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "building"
cargo build --workspace --all-targets --locked
log "building runtime images (cached by recipe hash)"
./target/debug/isol8 setup

log "running tests"
status=0
cargo test --workspace --locked -- --test-threads 4 2>&1 | tee /tmp/isol8-test.log || status=$?
echo
echo "==> test summary"
grep -E "^test result:|Running " /tmp/isol8-test.log || true

left=$(docker ps -aq --filter label=isol8.managed=true | wc -l)
if [ "$left" != 0 ]; then
    echo "[ERR] $left isol8 container(s) left after the suite:" >&2
    docker ps -a --filter label=isol8.managed=true >&2
    docker ps -aq --filter label=isol8.managed=true | xargs -r docker rm -f >/dev/null
    status=1
fi
if [ "$status" = 0 ]; then echo "==> all tests passed"; else echo "==> FAILED" >&2; fi
exit "$status"
