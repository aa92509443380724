#!/usr/bin/env bash
# Invitation engine benchmark (issues 4 and 13), on SQLite (or PostgreSQL, below): N invitations (default 10,000), one per
# simulated iPhone, from the API request to `associated` (registration at the Apps and
# Books service, InviteToProgram delivered, the person accepts). `cloudvpp serve` runs both
# services with the Apps and Books processing delay at zero. Devices check in when they
# have a queued invitation, as an APNs push would make them; people accept at once.
# First SOLO invitations (default 20) are measured alone, one after another, from the
# request to `queued` (each on its own extra device); then the batch: per invitation,
# request to `queued` (median, p90) against the time the whole batch took to be queued,
# and request to `associated`.
# Usage: bench/invitations.sh [N]. Loopback only; stops by itself.
# BENCH_PG=postgres://postgres@127.0.0.1:5432 runs it on a fresh PostgreSQL database.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
SOLO=${SOLO:-20}
# BIN_DIR=DIR runs binaries built before (cloudvpp and cloudvpp-bench) instead of building.
if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release -q -p cloudvpp -p cloudvpp-bench
  BIN_DIR=$PWD/target/release
fi
BIN=$BIN_DIR/cloudvpp
OUT=${OUT:-bench/out/invitations}; rm -rf "$OUT"; mkdir -p "$OUT"
if [ -n "${BENCH_PG:-}" ]; then
  psql "$BENCH_PG/postgres" -qc "DROP DATABASE IF EXISTS cloudvpp_bench_inv WITH (FORCE)" -c "CREATE DATABASE cloudvpp_bench_inv"
  # A server without autovacuum keeps no statistics and never reclaims dead rows: the
  # planner guesses and scans bloat, and the figures say more about that than about us.
  [ "$(psql "$BENCH_PG/postgres" -qtAc "SHOW autovacuum")" = on ] ||
    echo "WARNING: autovacuum is off on this PostgreSQL (ALTER SYSTEM SET autovacuum = on; SELECT pg_reload_conf();)" >&2
  DB="$BENCH_PG/cloudvpp_bench_inv"
else
  DB="sqlite://$OUT/all.db"
fi
export CLOUDVPP_API_KEY=bench
$BIN simulate pki --state "$OUT/sim.json" --ca-out "$OUT/ca.pem"
# Apple's example rate limit (15/s) would make this a benchmark of the limiter; the engine
# polls event status every 250 ms here instead of Apple's 30 s.
# The simulator enrolls every device at once, past the default cap on open connections.
$BIN serve --appsbooks-listen 127.0.0.1:0 --mdm-listen 127.0.0.1:0 --database "$DB" --ca "$OUT/ca.pem" \
  --status-poll-ms 250 --sync-interval-ms 1000 --limit maxRequestPerSecond=100000 \
  --max-connections 20000 \
  > "$OUT/serve.out" 2> "$OUT/serve.err" &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ "$(grep -c listening "$OUT/serve.out" 2>/dev/null)" = 2 ] && break; sleep 0.1; done
AB=$(awk '/appsbooks listening/ {print $NF}' "$OUT/serve.out")
MDM=$(awk '/mdm listening/ {print $NF}' "$OUT/serve.out")
$BIN appsbooks org create --database "$DB" --name "Bench Org" > "$OUT/org.vpptoken"
CLOUDVPP_MDM_URL=$MDM $BIN mdm location add --stoken-file "$OUT/org.vpptoken" --appsbooks-url "$AB/mdm/v2" > /dev/null
echo "enrolling $((N + SOLO)) simulated iPhones (setup, not measured)"
t0=$(date +%s)
CLOUDVPP_LOG=warn $BIN simulate enroll --state "$OUT/sim.json" --server "$MDM" --devices "$((N + SOLO))" > /dev/null
echo "enrolled in $(( $(date +%s) - t0 ))s"
timeout 900 "$BIN_DIR/cloudvpp-bench" invitations --mdm "$MDM" --api-key bench --state "$OUT/sim.json" --solo "$SOLO"
echo "warnings logged by the server: $(grep -c WARN "$OUT/serve.err" || true)"
