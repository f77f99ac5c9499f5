#!/usr/bin/env bash
# isol8's whole test suite, from a brand-new machine: make sure a Docker engine answers (install and
# start it on Debian as root), build the runtime images, then fmt, clippy and every test.
set -euo pipefail
cd "$(dirname "$0")/.."
SCHEMATHESIS_VERSION=4.32.5
KUBERNETES_VALIDATE_VERSION=1.37.0
MCP_VERSION=2.3.0  # the official MCP Python SDK: the agent side of tests/tests/agents.rs

log() { echo "==> $*" >&2; }
# shellcheck source=ensure-engine.sh
. scripts/ensure-engine.sh
apt_install() { isol8_apt_install "$@"; }

isol8_ensure_engine
command -v python3 >/dev/null || apt_install python3
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || apt_install nginx
command -v kubectl >/dev/null || apt_install kubernetes-client
# `ip`: the proxy and hostile-sandbox tests give the host a veth address of their own.
command -v ip >/dev/null || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || apt_install iproute2

# PostgreSQL, for the key store's tests (server/tests/auth_db.rs): only the binaries are needed;
# each test run starts its own server on a loopback port with a data directory in a temp dir, as
# the `postgres` user, and stops it. The package's own cluster is not used.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    apt_install postgresql
fi

# Python tools of the suite, pinned, in a venv under target/.
mkdir -p target
PY_TOOLS=target/py-tools
if [ ! -x "$PY_TOOLS/bin/schemathesis" ] || [ ! -x "$PY_TOOLS/bin/kubernetes-validate" ] \
    || ! "$PY_TOOLS/bin/python" -c "import mcp" 2>/dev/null; then
    log "installing schemathesis, kubernetes-validate and mcp into $PY_TOOLS"
    python3 -m venv "$PY_TOOLS" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$PY_TOOLS"; }
    "$PY_TOOLS/bin/pip" install -q --disable-pip-version-check \
        "schemathesis==$SCHEMATHESIS_VERSION" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
        "mcp==$MCP_VERSION"
fi

# HTTPS from containers may pass a TLS-inspecting proxy: isol8 trusts the host's CA bundle in the
# images it builds and the sandboxes it runs by itself (ISOL8_EXTRA_CA_CERTS adds more).

log "Kubernetes manifests: kubectl kustomize + kubernetes-validate"
for dir in deploy/k8s/base deploy/k8s/overlays/example; do
    kubectl kustomize "$dir" > "target/rendered-$(basename "$dir").yaml"
done
"$PY_TOOLS/bin/kubernetes-validate" --strict --quiet target/rendered-base.yaml target/rendered-example.yaml \
    deploy/k8s/overlays/example/ingress-nginx-controller.yaml

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
cargo test --workspace --locked --no-fail-fast -- --test-threads 4 2>&1 | tee /tmp/isol8-test.log || status=$?

# The contract, fuzzed: schemathesis drives a real isol8-server with the committed spec, every route
# included. It holds a tenant's key, so its /cleanup calls touch only its own sessions and containers
# (the master key's would remove the runtime images mid-run).
run_schemathesis() {
    local port key keys
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    key=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
    keys=$(mktemp)
    printf '[{"name": "schemathesis", "key": "%s", "tenant": "fuzz"}]' "$key" >"$keys"
    ISOL8_API_KEY=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n') ISOL8_KEYS_FILE=$keys \
        ISOL8_DEFAULTS_TIMEOUT_MS=3000 ISOL8_MAXIMUMS_TIMEOUT_MS=5000 \
        ./target/debug/isol8-server --bind 127.0.0.1 --port $port >/tmp/isol8-schemathesis-server.log 2>&1 &
    local server=$!
    for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.2; done
    # Coverage phase skipped: it crashes inside schemathesis on this schema (an upstream AST recursion bug).
    # POST /session/{id}/archive takes a tar, which schemathesis cannot generate; the sessions
    # suite sends it real and malicious archives.
    # positive_data_acceptance is off: some valid-looking values are refused for reasons a schema
    # cannot state (a memory limit under 16m, a file path that leaves /sandbox after `..`).
    local st_status=0
    "$PY_TOOLS/bin/schemathesis" run openapi/openapi.json --url "http://127.0.0.1:$port" \
        -H "Authorization: Bearer $key" --checks all --exclude-checks positive_data_acceptance \
        --phases examples,fuzzing,stateful --max-examples 40 --workers 2 \
        --exclude-operation-id import_archive \
        --seed 1 --no-color 2>&1 | tail -n 80 | tee -a /tmp/isol8-test.log || st_status=$?
    kill -TERM $server; wait $server || true
    rm -f "$keys"
    return $st_status
}
log "schemathesis against a running isol8-server"
if ! run_schemathesis; then
    echo "[ERR] schemathesis found contract violations" >&2
    status=1
fi

# Alone, one at a time: they restart the Docker engine, SIGKILL a server, untag an image.
log "faults (Docker restarted, server killed, image gone)"
cargo test -p isol8-e2e --test faults --locked -- --ignored --test-threads=1 2>&1 | tee -a /tmp/isol8-test.log || status=$?

# Last, alone: `isol8 cleanup --force --images` removes every isol8 container and image.
log "isol8 cleanup (removes the runtime images; rebuilt by the next run)"
cargo test -p isol8 --test cleanup --locked -- --ignored 2>&1 | tee -a /tmp/isol8-test.log || status=$?

left=$(docker ps -aq --filter label=isol8.managed=true | wc -l)
if [ "$left" != 0 ]; then
    echo "[ERR] $left isol8 container(s) left after the suite:" >&2
    docker ps -a --filter label=isol8.managed=true >&2
    docker ps -aq --filter label=isol8.managed=true | xargs -r docker rm -f >/dev/null
    status=1
fi
echo
echo "==> test summary"
grep -E "^test result:|Running |Test cases:|failures|passed" /tmp/isol8-test.log || true
if [ "$status" = 0 ]; then echo "==> all tests passed"; else echo "==> FAILED" >&2; fi
exit "$status"
