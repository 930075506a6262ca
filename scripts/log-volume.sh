#!/usr/bin/env bash
# Measures the log volume of a three-node cluster with one member down: starts three `keel serve`
# of KEEL_BIN (default target/debug/keel) on free loopback ports with the default log settings,
# waits for a primary, kills -9 one member (a follower that is not the primary; `leader` as the
# second argument kills the Raft leader, which is also the primary, instead), and counts the
# WARN/ERROR lines the two survivors write in the next SECONDS (default 60). Prints the total,
# the lines by message, and the WARN/ERROR lines written at start-up. Every process it starts is
# stopped and every data dir removed.
#
#   ./scripts/log-volume.sh [SECONDS] [follower|leader]
set -euo pipefail
bin=${KEEL_BIN:-target/debug/keel}
secs=${1:-60}
which=${2:-follower}
[ -x "$bin" ] || { echo "error: $bin not found; run cargo build first (or set KEEL_BIN)" >&2; exit 1; }
case "$which" in follower|leader) ;; *) echo "error: second argument must be follower or leader" >&2; exit 2;; esac
source "$(dirname "$0")/cluster.sh"
d=$(mktemp -d)
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$d"' EXIT
keel_cluster_start "$bin" "$d" -u RUST_LOG NO_COLOR=1
keel_cluster_wait_primary || { echo "error: no primary within 10 s" >&2; exit 1; }
# Let start-up settle (elections, first lease, first probes) before the member goes.
sleep 3
leader=$(curl -sf --max-time 1 "http://127.0.0.1:${api[$primary]}/v1/status" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["raft"]["leader"] - 1)')
victim=$leader
if [ "$which" = follower ]; then
    for i in 0 1 2; do if [ "$i" != "$leader" ] && [ "$i" != "$primary" ]; then victim=$i; fi; done
fi
count() { { grep -hE ' (WARN|ERROR) ' "$@" || true; } | wc -l; }
startup=$(count "$d"/log1 "$d"/log2 "$d"/log3)
marks=()
for i in 0 1 2; do marks+=("$(wc -c <"$d/log$((i + 1))")"); done
kill -9 "${pids[$victim]}"
wait "${pids[$victim]}" 2>/dev/null || true
echo "killed node $((victim + 1)) ($which; leader was node $((leader + 1)), primary node $((primary + 1))); counting for $secs s"
sleep "$secs"
: >"$d/after"
for i in 0 1 2; do
    [ "$i" = "$victim" ] && continue
    tail -c +"$((marks[$i] + 1))" "$d/log$((i + 1))" | sed "s/^/n$((i + 1)) /" >>"$d/after"
done
total=$(count "$d/after")
echo "WARN/ERROR lines from the two survivors in $secs s: $total"
# By message: the node, level and text, without the timestamp and the error details.
{ grep -hE ' (WARN|ERROR) ' "$d/after" || true; } |
    sed -E 's/^(n[0-9]) [^ ]+ +(WARN|ERROR) +/\1 \2 /; s/(unreachable|suppressed in the last [0-9]+ s): .*/\1: .../' |
    cut -c1-140 | sort | uniq -c | sort -rn
echo "WARN/ERROR lines of all three nodes at start-up: $startup"
