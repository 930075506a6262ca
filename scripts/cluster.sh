# Sourced by the measurement scripts (log-volume.sh, sigterm-time.sh): a three-node cluster of
# plain `keel serve` processes on free loopback ports.
#
#   keel_cluster_start BIN DIR [ENV...]   starts nodes 1..3 with data under DIR/n1..n3 and logs in
#                                         DIR/log1..log3 (ENV: extra VAR=value for each process);
#                                         sets the arrays api, peer and pids (index 0..2)
#   keel_cluster_wait_primary             waits up to 10 s for a node whose /primary answers 200;
#                                         sets primary (its index) or returns 1

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

keel_cluster_start() {
    local bin=$1 dir=$2 i peers
    shift 2
    api=() peer=() pids=()
    for i in 1 2 3; do api+=("$(free_port)"); peer+=("$(free_port)"); done
    peers="1=127.0.0.1:${peer[0]},2=127.0.0.1:${peer[1]},3=127.0.0.1:${peer[2]}"
    for i in 0 1 2; do
        env "$@" "$bin" serve --id $((i + 1)) --api-addr "127.0.0.1:${api[$i]}" \
            --peer-addr "127.0.0.1:${peer[$i]}" --data-dir "$dir/n$((i + 1))" --peers "$peers" \
            >"$dir/log$((i + 1))" 2>&1 &
        pids+=($!)
    done
}

keel_cluster_wait_primary() {
    local i
    primary=""
    for _ in $(seq 1 100); do
        for i in 0 1 2; do
            if curl -sf --max-time 1 "http://127.0.0.1:${api[$i]}/primary" >/dev/null; then primary=$i; fi
        done
        [ -n "$primary" ] && return 0
        sleep 0.1
    done
    return 1
}
