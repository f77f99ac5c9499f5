#!/usr/bin/env bash
# isol8's benchmark: release build, runtime images, then every figure side by side with its baseline.
# Writes bench/results.json and prints the table. Bounded: about 3 minutes after the build.
# `./scripts/bench.sh auth`, `ws`, `prestart`, `proxy` or `strict`: only the auth, the WebSocket, the
# pre-started interpreter, the filtered-mode proxy or the strict-mode figures.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${ISOL8_EXTRA_CA_CERTS:-}" ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    export ISOL8_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
fi
docker info >/dev/null 2>&1 || { echo "[ERR] Docker is not running; ./scripts/test.sh starts it" >&2; exit 1; }
cargo build --release --locked -p isol8 -p isol8-server -p isol8-bench
./target/release/isol8 setup >/dev/null

# A PostgreSQL server of the benchmark's own on loopback (when Debian's postgresql is installed),
# for the auth figure; stopped and removed on exit.
PG_DIR="" PG_CTL="" PG_RUN=()
stop_postgres() { [ -z "$PG_DIR" ] || { "${PG_RUN[@]}" "$PG_CTL" -D "$PG_DIR/data" -m immediate stop >/dev/null; rm -rf "$PG_DIR"; }; }
start_postgres() {
    local initdb port
    initdb=$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1)
    [ -n "$initdb" ] || return 0
    PG_CTL="$(dirname "$initdb")/pg_ctl"
    PG_DIR=$(mktemp -d /tmp/isol8-bench-pg-XXXXXX)
    trap stop_postgres EXIT
    if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$PG_DIR"; PG_RUN=(runuser -u postgres --); fi
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "${PG_RUN[@]}" "$initdb" -D "$PG_DIR/data" -U postgres --auth=trust --no-sync >/dev/null
    "${PG_RUN[@]}" "$PG_CTL" -D "$PG_DIR/data" -l "$PG_DIR/log" -w \
        -o "-k $PG_DIR -p $port -c listen_addresses=127.0.0.1" start >/dev/null
    export ISOL8_BENCH_POSTGRES="postgres://postgres@127.0.0.1:$port/postgres"
}
start_postgres
./target/release/isol8-bench "${@:-bench/results.json}"
# Session figures: a call on a frozen session against a warm one, and adopting 50 sessions at start.
./target/release/isol8-bench sessions bench/sessions.json
