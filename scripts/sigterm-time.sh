#!/usr/bin/env bash
# Measures how long `keel serve` takes to exit after SIGTERM: starts a three-node cluster of
# KEEL_BIN (default target/debug/keel) on free loopback ports, waits for a primary, then sends
# SIGTERM to each node in turn and prints the exit code and the milliseconds until it exited.
# Repeats ROUNDS times (default 3). Every process it starts is stopped and every data dir removed.
#
#   ./scripts/sigterm-time.sh [ROUNDS]
set -euo pipefail
bin=${KEEL_BIN:-target/debug/keel}
rounds=${1:-3}
[ -x "$bin" ] || { echo "error: $bin not found; run cargo build first (or set KEEL_BIN)" >&2; exit 1; }
source "$(dirname "$0")/cluster.sh"
for r in $(seq 1 "$rounds"); do
    d=$(mktemp -d)
    trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$d"' EXIT
    keel_cluster_start "$bin" "$d"
    keel_cluster_wait_primary || { echo "error: no primary within 10 s (logs in $d)" >&2; exit 1; }
    sleep 1
    for i in 0 1 2; do
        start=$(date +%s%N)
        kill -TERM "${pids[$i]}"
        rc=0
        wait "${pids[$i]}" || rc=$?
        echo "round $r node $((i + 1)): exit $rc after $(( ($(date +%s%N) - start) / 1000000 )) ms"
    done
    trap - EXIT
    rm -rf "$d"
done
