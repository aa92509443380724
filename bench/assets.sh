#!/usr/bin/env bash
# Licences benchmark (issue 11): on SQLite, one organisation with 200 assets and 1,000,000
# users.
#   - one app associated to 100,000 users (1,000 requests of 100) until every event is COMPLETE
#   - a full Get Assignments sync of 1,000,000 assignments (filled, unmeasured, by more apps)
#   - page latency at the first, middle and last page index
# Usage: bench/assets.sh [USERS] [ASSOCIATE] [ASSIGNMENTS]   (defaults 1000000 100000 1000000)
# Loopback only; every phase is bounded; the server is stopped at the end.
# BENCH_PG=postgres://postgres@127.0.0.1:5432 runs it on a fresh PostgreSQL database.
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${1:-1000000}
ASSOCIATE=${2:-100000}
ASSIGNMENTS=${3:-1000000}
cargo build --release -q -p cloudvpp -p cloudvpp-bench
OUT=bench/out; mkdir -p "$OUT"
if [ -n "${BENCH_PG:-}" ]; then
  psql "$BENCH_PG/postgres" -qc "DROP DATABASE IF EXISTS cloudvpp_bench_assets WITH (FORCE)" -c "CREATE DATABASE cloudvpp_bench_assets"
  # A server without autovacuum keeps no statistics and never reclaims dead rows: the
  # planner guesses and scans bloat, and the figures say more about that than about us.
  [ "$(psql "$BENCH_PG/postgres" -qtAc "SHOW autovacuum")" = on ] ||
    echo "WARNING: autovacuum is off on this PostgreSQL (ALTER SYSTEM SET autovacuum = on; SELECT pg_reload_conf();)" >&2
  URL="$BENCH_PG/cloudvpp_bench_assets"
else
  DB="$OUT/assets-bench.db"; rm -f "$DB" "$DB-wal" "$DB-shm"
  URL="sqlite://$DB"
fi
BIN=${CLOUDVPP_BIN:-target/release/cloudvpp}
TOKEN=$($BIN appsbooks org create --database "$URL" --name Bench)
# 200 assets: adamIds 2000000001..2000000200, enough licences for every user.
ADAMS=()
for i in $(seq 200); do
  ADAM=$((2000000000 + i))
  $BIN appsbooks assets add --database "$URL" --org Bench --adam-id "$ADAM" --count "$USERS" > /dev/null
  ADAMS+=("$ADAM")
done
$BIN appsbooks serve --listen 127.0.0.1:0 --database "$URL" \
  --limit maxRequestPerSecond=1000000 > "$OUT/assets-serve.out" 2> "$OUT/assets-serve.err" &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q listening "$OUT/assets-serve.out" 2>/dev/null && break; sleep 0.1; done
BASE=$(awk '/listening/ {print $NF; exit}' "$OUT/assets-serve.out")
echo "server $BASE (pid $PID), database $URL"
timeout 3600 target/release/cloudvpp-bench assets --base "$BASE" --token "$TOKEN" \
  --users "$USERS" --associate "$ASSOCIATE" --assignments "$ASSIGNMENTS" \
  --adam-ids "$(IFS=,; echo "${ADAMS[*]}")"
echo "server CPU for the whole run: $(awk -v t="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / t}' "/proc/$PID/stat") s"
[ -n "${BENCH_PG:-}" ] || ls -l "$DB"
