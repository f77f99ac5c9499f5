#!/usr/bin/env bash
# isol8's benchmark: release build, runtime images, then every figure side by side with its baseline.
# Writes bench/results.json and prints the table. Bounded: about 3 minutes after the build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${ISOL8_EXTRA_CA_CERTS:-}" ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    export ISOL8_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
fi
docker info >/dev/null 2>&1 || { echo "[ERR] Docker is not running; ./scripts/test.sh starts it" >&2; exit 1; }
cargo build --release --locked -p isol8 -p isol8-server -p isol8-bench
./target/release/isol8 setup >/dev/null
exec ./target/release/isol8-bench "${1:-bench/results.json}"
