#!/usr/bin/env bash
# MDM benchmark (issues 3 and 5):
#  1. idle check-ins from 100 enrolled devices, each request signed (Mdm-Signature, RSA-2048)
#     and verified, 16 connections from wrk for DURATION seconds;
#     then 64 and 256 connections (CONNS="16 64 256"), reporting requests per second,
#     server CPU per request, voluntary context switches per request (a contended lock
#     or a single serving task shows up there), how many Idle answers came from memory
#     (queue known empty: no database read), and the server's peak RSS;
#  1b. CORES=1: the 16-connection load with the server pinned to one core, then to two
#     (taskset), reporting the ratio: what a second core buys (wrk shares the machine);
#  2. the same load after seeding 1,000,000 queued commands across 100,000 other
#     enrollments, with 10 commands queued for each of the 100 devices (every Idle then
#     fetches a next command): fetching the next command must not slow down.
# Usage: bench/mdm.sh [DURATION_SECONDS]   (default 20). Loopback only; stops by itself.
# CONNS="16 64 256" sets the connection counts of phase 1; CORES=1 adds phase 1b; QUEUED=0 skips phase 2.
# Backend and scale-out: BENCH_PG=postgres://postgres@127.0.0.1:5432 uses a fresh PostgreSQL
# database instead of SQLite; INSTANCES=2 runs two mdm instances on it, 8 connections each.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-20}
INSTANCES=${INSTANCES:-1}
for tool in wrk sqlite3; do
  command -v $tool >/dev/null || { apt-get update -qq && apt-get install -y -qq $tool; }
done
# CLOUDVPP_BIN=path compares another build of the binary (A/B runs) on the same script.
if [ -z "${CLOUDVPP_BIN:-}" ]; then cargo build --release -q -p cloudvpp; fi
BIN=${CLOUDVPP_BIN:-$PWD/target/release/cloudvpp}
OUT=bench/out/mdm; rm -rf "$OUT"; mkdir -p "$OUT"
if [ -n "${BENCH_PG:-}" ]; then
  psql "$BENCH_PG/postgres" -qc "DROP DATABASE IF EXISTS cloudvpp_bench_mdm WITH (FORCE)" -c "CREATE DATABASE cloudvpp_bench_mdm"
  # A server without autovacuum keeps no statistics and never reclaims dead rows: the
  # planner guesses and scans bloat, and the figures say more about that than about us.
  [ "$(psql "$BENCH_PG/postgres" -qtAc "SHOW autovacuum")" = on ] ||
    echo "WARNING: autovacuum is off on this PostgreSQL (ALTER SYSTEM SET autovacuum = on; SELECT pg_reload_conf();)" >&2
  DB="$BENCH_PG/cloudvpp_bench_mdm"
  sql() { if [ $# -gt 0 ]; then psql "$DB" -qtA -c "$1"; else psql "$DB" -qtA; fi; }
  EXPLAIN=EXPLAIN
else
  DB="sqlite://$OUT/mdm.db"
  sql() { if [ $# -gt 0 ]; then sqlite3 "$OUT/mdm.db" "$1"; else sqlite3 "$OUT/mdm.db"; fi; }
  EXPLAIN="EXPLAIN QUERY PLAN"
fi
echo "database $DB, $INSTANCES instance(s)"
$BIN simulate pki --state "$OUT/sim.json" --ca-out "$OUT/ca.pem"

PIDS=(); BASES=()
PIN=${PIN:-}
start() {
  PIDS=(); BASES=()
  for i in $(seq "$INSTANCES"); do
    ${PIN:+taskset -c $PIN} $BIN mdm serve --listen 127.0.0.1:0 --database "$DB" --ca "$OUT/ca.pem" --api-key bench \
      > "$OUT/serve$i.out" 2> "$OUT/serve$i.err" &
    PIDS+=($!)
    for _ in $(seq 600); do grep -q listening "$OUT/serve$i.out" 2>/dev/null && break; sleep 0.1; done
    grep -q listening "$OUT/serve$i.out" || { echo "instance $i did not start:"; cat "$OUT/serve$i.err"; exit 1; }
    BASES+=("$(awk '/listening/ {print $NF; exit}' "$OUT/serve$i.out")")
  done
  BASE=${BASES[0]}
}
stop() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
trap stop EXIT
# CPU seconds (user + system) the server processes have used so far, from /proc.
server_cpu() {
  local t=0 p
  for p in "${PIDS[@]}"; do
    t=$(( t + $(awk '{print $14 + $15}' "/proc/$p/stat") ))
  done
  echo "$t $(getconf CLK_TCK)" | awk '{printf "%.3f", $1 / $2}'
}
# Voluntary context switches of the server processes (every thread): a request that
# waits for a lock, a pool or another task parks its thread.
server_switches() {
  local t=0 p f
  for p in "${PIDS[@]}"; do
    for f in /proc/$p/task/*/status; do
      t=$(( t + $(awk '/^voluntary_ctxt_switches/ {print $2}' "$f" 2>/dev/null || echo 0) ))
    done
  done
  echo $t
}
peak_rss() { # the largest peak RSS among the server processes, in MB
  local p m=0 v
  for p in "${PIDS[@]}"; do
    v=$(awk '/^VmHWM/ {print $2}' "/proc/$p/status"); [ "$v" -gt "$m" ] && m=$v
  done
  echo $(( m / 1024 ))
}
idle_from() { # $1: memory|database — Idle answers so far, over the instances
  local b t=0
  for b in "${BASES[@]}"; do
    t=$(( t + $(curl -s "$b/metrics" | awk -v k="cloudvpp_mdm_idle_answers_total{from=\"$1\"}" '$1 == k {printf "%d", $2}') + 0 ))
  done
  echo $t
}
load() { # $1: label, $2: connections (default 16)
  local conns=${2:-16}
  local per=$(( conns / INSTANCES )) n=0 cpu0 sw0 mem0 db0
  cpu0=$(server_cpu); sw0=$(server_switches); mem0=$(idle_from memory); db0=$(idle_from database)
  for b in "${BASES[@]}"; do
    n=$((n + 1))
    BODIES_DIR="$OUT/bodies" BODIES_N=100 wrk -t$(( 2 / INSTANCES > 0 ? 2 / INSTANCES : 1 )) -c"$per" -d"${DURATION}s" --latency -s bench/mdm-idle.lua "$b" > "$OUT/$1-$n.txt" &
  done
  sleep 1; while pgrep -x wrk >/dev/null; do sleep 0.5; done
  cat "$OUT/$1"-*.txt
  echo "total: $(grep -h Requests/sec "$OUT/$1"-*.txt | awk '{s += $2} END {printf "%.0f", s}') requests/s over $INSTANCES instance(s)"
  # CPU per request holds on a noisy machine where requests per second do not.
  local reqs cpu
  reqs=$(grep -h "requests in" "$OUT/$1"-*.txt | awk '{s += $1} END {print s}')
  cpu=$(echo "$(server_cpu) $cpu0" | awk '{print $1 - $2}')
  echo "server CPU: ${cpu}s for $reqs requests = $(echo "$cpu $reqs" | awk '{printf "%.1f", $1 * 1e6 / $2}') us/request"
  local sw mem db
  sw=$(( $(server_switches) - sw0 )); mem=$(( $(idle_from memory) - mem0 )); db=$(( $(idle_from database) - db0 ))
  # Threads that ended during the run take their counts with them: then no figure.
  echo "voluntary context switches: $(echo "$sw $reqs" | awk '{if ($1 < 0) print "n/a (threads ended)"; else printf "%.3f", $1 / $2}') per request; Idle answers from memory $mem, from the database $db"
  echo "peak RSS of the server: $(peak_rss) MB"
}

start
CLOUDVPP_LOG=warn $BIN simulate enroll --state "$OUT/sim.json" --server "$BASE" --devices 100 > "$OUT/ids.txt"
$BIN simulate bodies --state "$OUT/sim.json" --out "$OUT/bodies"
for c in ${CONNS:-16 64 256}; do
  echo "== idle check-ins, 100 devices, $c connections, ${DURATION}s, empty queues"
  load "idle-c$c" "$c"
done
if [ -n "${CORES:-}" ] && [ "$INSTANCES" = 1 ]; then
  rps() { grep -h Requests/sec "$OUT/$1"-*.txt | awk '{s += $2} END {printf "%.0f", s}'; }
  for pin in 1 0-1; do
    stop; PIN=$pin start
    echo "== idle check-ins, 16 connections, server on cores $pin"
    load "cores-$pin" 16
  done
  echo "what a second core buys: $(echo "$(rps cores-0-1) $(rps cores-1)" | awk '{printf "%.2f", $1 / $2}')x the requests per second of one core (wrk shares the two cores)"
  stop; start
fi
echo "== the same load from cloudvpp's own simulator (reqwest, 16 connections, first instance)"
$BIN simulate load --state "$OUT/sim.json" --server "$BASE" --connections 16 --seconds "$DURATION" | tee "$OUT/simulate-load.txt"
stop
# QUEUED=0 stops here (the idle phases only).
[ "${QUEUED:-1}" = 0 ] && exit 0

echo "== seeding 100,000 enrollments x 10 queued commands (1,000,000 rows)"
t0=$(date +%s)
BLOB_CAST=$([ -n "${BENCH_PG:-}" ] && echo "convert_to(%s, 'UTF8')" || echo "CAST(%s AS BLOB)")
cmd_expr=$(printf "$BLOB_CAST" "'<?xml version=\"1.0\"?><plist version=\"1.0\"><dict><key>Command</key><dict><key>RequestType</key><string>DeviceInformation</string></dict><key>CommandUUID</key><string>seed-cmd-' || i || '</string></dict></plist>'")
sql <<SQL
BEGIN;
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 99999)
INSERT INTO mdm_enrollments (id, device_id, kind, topic, push_magic, token_hex, enabled, token_update_tally, created_at, updated_at)
SELECT 'seed-' || i, 'seed-' || i, 'Device', 'com.apple.mgmt.External.seed', 'magic', 'aa', 1, 1, 0, 0 FROM n;
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 9)
INSERT INTO mdm_commands (command_uuid, request_type, command, created_at)
SELECT 'seed-cmd-' || i, 'DeviceInformation', $cmd_expr, 0 FROM n;
INSERT INTO mdm_queue (enrollment_id, command_uuid, created_at)
SELECT e.id, c.command_uuid, 0 FROM mdm_enrollments e, mdm_commands c WHERE c.command_uuid LIKE 'seed-cmd-%' AND e.id LIKE 'seed-%';
COMMIT;
SQL
[ -n "${BENCH_PG:-}" ] && sql "ANALYZE"
echo "seeded in $(( $(date +%s) - t0 ))s: $(sql 'SELECT COUNT(*) FROM mdm_queue') queue rows, $(sql 'SELECT COUNT(*) FROM mdm_enrollments') enrollments"
start
for i in $(seq 0 9); do
  plist="$OUT/cmd$i.plist"
  printf '<?xml version="1.0"?><plist version="1.0"><dict><key>Command</key><dict><key>RequestType</key><string>DeviceInformation</string></dict><key>CommandUUID</key><string>bench-%s</string></dict></plist>' "$i" > "$plist"
  CLOUDVPP_MDM_URL=$BASE CLOUDVPP_API_KEY=bench $BIN mdm enqueue --no-push --plist "$plist" $(awk '{print $1}' "$OUT/ids.txt") > /dev/null
done
echo "query plan of the next-command lookup:"
sql "$EXPLAIN SELECT q.command_uuid FROM mdm_queue q JOIN mdm_commands c ON c.command_uuid = q.command_uuid WHERE q.enrollment_id = 'x' AND q.active = 1 AND (q.status IS NULL OR q.status = 'NotNow') ORDER BY q.seq LIMIT 1"
echo "== idle check-ins, each answered with its next command, 1,000,000 queued commands"
load queued
stop
echo "server errors logged: $(cat "$OUT"/serve*.err | grep -c 'refused' || true)"
