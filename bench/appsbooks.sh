#!/usr/bin/env bash
# Apps and Books benchmark (issue 2): on SQLite, one organisation with 1,000,000 users.
#   - 100,000 users created through users/create (1,000 requests of 100) until all COMPLETE
#   - full sync through GET users (all pages, one client)
#   - page latency at the first, middle and last page index
#   - a sinceVersionId page holding 100 changes (median)
# Usage: bench/appsbooks.sh [TOTAL_USERS] [CREATE_USERS]   (defaults 1000000 100000)
# Loopback only; every phase is bounded; the server is stopped at the end.
# BENCH_PG=postgres://postgres@127.0.0.1:5432 runs it on a fresh PostgreSQL database
# (BENCH_DB names it: cloudvpp_bench_ab by default).
# REUSE=1 keeps the database (and its organisation's token) of the previous run with the same
# backend, so that a run after the first skips the seeding (the sync phases still read all).
# INSTANCES=2 runs two appsbooks instances on the one database; the client sends its
# requests round-robin over them (so a full sync alternates instances page by page).
set -euo pipefail
cd "$(dirname "$0")/.."
TOTAL=${1:-1000000}
CREATE=${2:-100000}
INSTANCES=${INSTANCES:-1}
# CLOUDVPP_BIN=path compares another build of the service (A/B runs) on the same load;
# BENCH_BIN=path another build of the load generator; NO_BUILD=1 builds nothing.
[ "${NO_BUILD:-0}" = 1 ] || cargo build --release -q -p cloudvpp -p cloudvpp-bench
BENCH=${BENCH_BIN:-target/release/cloudvpp-bench}
OUT=bench/out; mkdir -p "$OUT"
BIN=${CLOUDVPP_BIN:-target/release/cloudvpp}
if [ -n "${BENCH_PG:-}" ]; then
  PGDB=${BENCH_DB:-cloudvpp_bench_ab}
  URL="$BENCH_PG/$PGDB"; TOKFILE="$OUT/appsbooks-bench-pg-$PGDB.token"
else
  DB="$OUT/appsbooks-bench.db"; URL="sqlite://$DB"; TOKFILE="$DB.token"
fi
if [ "${REUSE:-0}" = 1 ] && [ -s "$TOKFILE" ]; then
  TOKEN=$(cat "$TOKFILE")
else
  if [ -n "${BENCH_PG:-}" ]; then
    psql "$BENCH_PG/postgres" -qc "DROP DATABASE IF EXISTS $PGDB WITH (FORCE)" -c "CREATE DATABASE $PGDB"
    # A server without autovacuum keeps no statistics and never reclaims dead rows: the
    # planner guesses and scans bloat, and the figures say more about that than about us.
    [ "$(psql "$BENCH_PG/postgres" -qtAc "SHOW autovacuum")" = on ] ||
      echo "WARNING: autovacuum is off on this PostgreSQL (ALTER SYSTEM SET autovacuum = on; SELECT pg_reload_conf();)" >&2
  else
    rm -f "$DB" "$DB-wal" "$DB-shm"
  fi
  TOKEN=$($BIN appsbooks org create --database "$URL" --name Bench)
  echo "$TOKEN" > "$TOKFILE"
fi
# Apple's example rate limit (15/s) would make this a benchmark of the limiter.
PIDS=(); BASES=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
for i in $(seq "$INSTANCES"); do
  $BIN appsbooks serve --listen 127.0.0.1:0 --database "$URL" \
    --limit maxRequestPerSecond=1000000 > "$OUT/serve$i.out" 2> "$OUT/serve$i.err" &
  PIDS+=($!)
  for _ in $(seq 100); do grep -q listening "$OUT/serve$i.out" 2>/dev/null && break; sleep 0.1; done
  BASES+=("$(awk '/listening/ {print $NF; exit}' "$OUT/serve$i.out")")
done
BASE=$(IFS=,; echo "${BASES[*]}")
echo "servers $BASE (pids ${PIDS[*]}), database $URL"
# The servers' pids, for their CPU time per page of the sync (OLD_BENCH=1: a load
# generator from before --pids and appsbooks-local).
PIDARGS=(--pids "$(IFS=,; echo "${PIDS[*]}")"); [ "${OLD_BENCH:-0}" = 1 ] && PIDARGS=()
timeout 1800 "$BENCH" appsbooks --base "$BASE" --token "$TOKEN" --total "$TOTAL" --create "$CREATE" "${PIDARGS[@]}"
# The same full sync in-process (store reads and serialisation, no HTTP, no
# authentication): the floor the HTTP sync above is compared with.
[ "${OLD_BENCH:-0}" = 1 ] || timeout 600 "$BENCH" appsbooks-local --database "$URL" --runs 2
# The servers' CPU for the whole run (user + system, from /proc): steadier than wall time
# on a small, shared machine.
cpu=0; for p in "${PIDS[@]}"; do cpu=$(( cpu + $(awk '{print $14 + $15}' "/proc/$p/stat") )); done
echo "server CPU for the whole run: $(echo "$cpu $(getconf CLK_TCK)" | awk '{printf "%.2f", $1 / $2}') s"
[ -n "${BENCH_PG:-}" ] || ls -l "$DB"
