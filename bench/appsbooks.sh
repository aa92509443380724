#!/usr/bin/env bash
# Apps and Books benchmark (issue 2): on SQLite, one organisation with 1,000,000 users.
#   - 100,000 users created through users/create (1,000 requests of 100) until all COMPLETE
#   - full sync through GET users (all pages, one client)
#   - page latency at the first, middle and last page index
#   - a sinceVersionId page holding 100 changes (median)
# Usage: bench/appsbooks.sh [TOTAL_USERS] [CREATE_USERS]   (defaults 1000000 100000)
# Loopback only; every phase is bounded; the server is stopped at the end.
# BENCH_PG=postgres://postgres@127.0.0.1:5432 runs it on a fresh PostgreSQL database.
set -euo pipefail
cd "$(dirname "$0")/.."
TOTAL=${1:-1000000}
CREATE=${2:-100000}
cargo build --release -q -p cloudvpp -p cloudvpp-bench
OUT=bench/out; mkdir -p "$OUT"
if [ -n "${BENCH_PG:-}" ]; then
  psql "$BENCH_PG/postgres" -qc "DROP DATABASE IF EXISTS cloudvpp_bench_ab WITH (FORCE)" -c "CREATE DATABASE cloudvpp_bench_ab"
  URL="$BENCH_PG/cloudvpp_bench_ab"
else
  DB="$OUT/appsbooks-bench.db"; rm -f "$DB" "$DB-wal" "$DB-shm"
  URL="sqlite://$DB"
fi
BIN=target/release/cloudvpp
TOKEN=$($BIN appsbooks org create --database "$URL" --name Bench)
# Apple's example rate limit (15/s) would make this a benchmark of the limiter.
$BIN appsbooks serve --listen 127.0.0.1:0 --database "$URL" \
  --limit maxRequestPerSecond=1000000 > "$OUT/serve.out" 2> "$OUT/serve.err" &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q listening "$OUT/serve.out" 2>/dev/null && break; sleep 0.1; done
BASE=$(awk '/listening/ {print $NF; exit}' "$OUT/serve.out")
echo "server $BASE (pid $PID), database $URL"
timeout 1800 target/release/cloudvpp-bench appsbooks --base "$BASE" --token "$TOKEN" --total "$TOTAL" --create "$CREATE"
[ -n "${BENCH_PG:-}" ] || ls -l "$DB"
