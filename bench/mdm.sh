#!/usr/bin/env bash
# MDM benchmark (issue 3), on SQLite:
#  1. idle check-ins from 100 enrolled devices, each request signed (Mdm-Signature, RSA-2048)
#     and verified, 16 connections from wrk for DURATION seconds;
#  2. the same load after seeding 1,000,000 queued commands across 100,000 other
#     enrollments, with 10 commands queued for each of the 100 devices (every Idle then
#     fetches a next command): fetching the next command must not slow down.
# Usage: bench/mdm.sh [DURATION_SECONDS]   (default 20). Loopback only; stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-20}
for tool in wrk sqlite3; do
  command -v $tool >/dev/null || { apt-get update -qq && apt-get install -y -qq $tool; }
done
cargo build --release -q -p cloudvpp
BIN=$PWD/target/release/cloudvpp
OUT=bench/out/mdm; rm -rf "$OUT"; mkdir -p "$OUT"
DB="$OUT/mdm.db"
$BIN simulate pki --state "$OUT/sim.json" --ca-out "$OUT/ca.pem"

start() {
  $BIN mdm serve --listen 127.0.0.1:0 --database "sqlite://$DB" --ca "$OUT/ca.pem" --api-key bench \
    > "$OUT/serve.out" 2> "$OUT/serve.err" &
  PID=$!
  for _ in $(seq 100); do grep -q listening "$OUT/serve.out" 2>/dev/null && break; sleep 0.1; done
  BASE=$(awk '/listening/ {print $NF; exit}' "$OUT/serve.out")
}
stop() { kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; }
trap stop EXIT

start
CLOUDVPP_LOG=warn $BIN simulate enroll --state "$OUT/sim.json" --server "$BASE" --devices 100 > "$OUT/ids.txt"
$BIN simulate bodies --state "$OUT/sim.json" --out "$OUT/bodies"
echo "== idle check-ins, 100 devices, 16 connections, ${DURATION}s, empty queues"
BODIES_DIR="$OUT/bodies" BODIES_N=100 wrk -t2 -c16 -d"${DURATION}s" --latency -s bench/mdm-idle.lua "$BASE" | tee "$OUT/idle.txt"
echo "== the same load from cloudvpp's own simulator (reqwest, 16 connections)"
$BIN simulate load --state "$OUT/sim.json" --server "$BASE" --connections 16 --seconds "$DURATION" | tee "$OUT/simulate-load.txt"
stop

echo "== seeding 100,000 enrollments x 10 queued commands (1,000,000 rows)"
t0=$(date +%s)
sqlite3 "$DB" <<'SQL'
PRAGMA journal_mode=WAL;
BEGIN;
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 99999)
INSERT INTO mdm_enrollments (id, device_id, kind, topic, push_magic, token_hex, enabled, token_update_tally, created_at, updated_at)
SELECT 'seed-' || i, 'seed-' || i, 'Device', 'com.apple.mgmt.External.seed', 'magic', 'aa', 1, 1, 0, 0 FROM n;
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 9)
INSERT INTO mdm_commands (command_uuid, request_type, command, created_at)
SELECT 'seed-cmd-' || i, 'DeviceInformation', CAST('<?xml version="1.0"?><plist version="1.0"><dict><key>Command</key><dict><key>RequestType</key><string>DeviceInformation</string></dict><key>CommandUUID</key><string>seed-cmd-' || i || '</string></dict></plist>' AS BLOB), 0 FROM n;
INSERT INTO mdm_queue (enrollment_id, command_uuid, created_at)
SELECT e.id, c.command_uuid, 0 FROM mdm_enrollments e, mdm_commands c WHERE c.command_uuid LIKE 'seed-cmd-%' AND e.id LIKE 'seed-%';
COMMIT;
SQL
echo "seeded in $(( $(date +%s) - t0 ))s: $(sqlite3 "$DB" 'SELECT COUNT(*) FROM mdm_queue') queue rows, $(sqlite3 "$DB" 'SELECT COUNT(*) FROM mdm_enrollments') enrollments"
start
for i in $(seq 0 9); do
  plist="$OUT/cmd$i.plist"
  printf '<?xml version="1.0"?><plist version="1.0"><dict><key>Command</key><dict><key>RequestType</key><string>DeviceInformation</string></dict><key>CommandUUID</key><string>bench-%s</string></dict></plist>' "$i" > "$plist"
  CLOUDVPP_MDM_URL=$BASE CLOUDVPP_API_KEY=bench $BIN mdm enqueue --no-push --plist "$plist" $(awk '{print $1}' "$OUT/ids.txt") > /dev/null
done
echo "query plan of the next-command lookup:"
sqlite3 "$DB" "EXPLAIN QUERY PLAN SELECT q.command_uuid FROM mdm_queue q JOIN mdm_commands c ON c.command_uuid = q.command_uuid WHERE q.enrollment_id = 'x' AND q.active = 1 AND (q.status IS NULL OR q.status = 'NotNow') ORDER BY q.seq LIMIT 1"
echo "== idle check-ins, each answered with its next command, 1,000,000 queued commands"
BODIES_DIR="$OUT/bodies" BODIES_N=100 wrk -t2 -c16 -d"${DURATION}s" --latency -s bench/mdm-idle.lua "$BASE" | tee "$OUT/queued.txt"
stop
echo "server errors logged: $(grep -c 'refused' "$OUT/serve.err" || true)"
