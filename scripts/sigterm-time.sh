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
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
for r in $(seq 1 "$rounds"); do
    d=$(mktemp -d)
    api=() peer=() pids=()
    for i in 1 2 3; do api+=("$(free_port)"); peer+=("$(free_port)"); done
    peers="1=127.0.0.1:${peer[0]},2=127.0.0.1:${peer[1]},3=127.0.0.1:${peer[2]}"
    trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$d"' EXIT
    for i in 0 1 2; do
        "$bin" serve --id $((i + 1)) --api-addr "127.0.0.1:${api[$i]}" --peer-addr "127.0.0.1:${peer[$i]}" \
            --data-dir "$d/n$((i + 1))" --peers "$peers" >"$d/log$((i + 1))" 2>&1 &
        pids+=($!)
    done
    up=""
    for _ in $(seq 1 100); do
        for i in 0 1 2; do
            if curl -sf --max-time 1 "http://127.0.0.1:${api[$i]}/primary" >/dev/null; then up=1; fi
        done
        [ -n "$up" ] && break
        sleep 0.1
    done
    [ -n "$up" ] || { echo "error: no primary within 10 s (logs in $d)" >&2; exit 1; }
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
