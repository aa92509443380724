#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60) from the seed corpus, and exits
# non-zero if any target crashes, hangs (over 10 s on one input) or runs out of memory.
#
#   fuzz/run.sh 30
#
# New inputs libFuzzer finds go to target/fuzz-corpus/<target>/ (not the committed seed
# corpus); a crashing input goes to fuzz/artifacts/<target>/ and its path is printed.
set -uo pipefail

secs="${1:-60}"
cd "$(dirname "$0")"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked || exit 1
fi

targets=(checkin_plist report_plist command_plist abwire_json mdm_signature)

# One build for all targets, so a build failure is told apart from a crash.
cargo +nightly fuzz build || exit 1

failed=()
summary=()
for t in "${targets[@]}"; do
    work="target/fuzz-corpus/$t"
    log="target/fuzz-logs/$t.log"
    mkdir -p "$work" "$(dirname "$log")"
    echo "== $t: ${secs}s"
    # The first corpus directory receives new inputs; the seed corpus is only read.
    cargo +nightly fuzz run "$t" "$work" "corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        >"$log" 2>&1
    rc=$?
    runs=$(grep -o 'Done [0-9]* runs' "$log" | tail -1)
    if [ "$rc" -ne 0 ]; then
        failed+=("$t")
        summary+=("$t: FAILED (exit $rc), see fuzz/$log")
        tail -n 40 "$log"
    else
        summary+=("$t: ok, ${runs:-? runs} in ${secs}s")
    fi
done

printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -ne 0 ]; then
    echo "fuzzing failed: ${failed[*]}" >&2
    exit 1
fi
