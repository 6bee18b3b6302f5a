#!/usr/bin/env bash
# scripts/chat-bus-bench.sh [ROUNDS] [SECONDS]: chat deliveries per second and latency, one node
# alone against two nodes sharing their rooms through Redis (--chat-bus).
#
# Builds the release binary, starts redis-server on a free port of 127.0.0.1 (nothing saved),
# and runs `readyloop bench chat` (one sender, ten members, 64-byte messages, rate limit off)
# in three set-ups, ROUNDS rounds of SECONDS each (default 3 of 5), taking turns:
#
#   alone     one server, no bus: the baseline;
#   bus       the same server as a node of the bus, every member on it: what publishing costs;
#   two       two nodes: the members on the second (--members-at), the sender talking to the
#             first and hearing the room on the second, so every delivery crossed Redis, and
#             the sender's window is paced by the bus: cross-node deliveries and latency.
#
# Latency is one-way, from the sender's send to a socket's receive. It prints the median of the
# rounds for each figure, and the machine. Needs redis-server and jq. All traffic goes to
# 127.0.0.1; every run is bounded; the script stops what it started on exit. Not run in CI.

set -euo pipefail

rounds=${1:-3}
seconds=${2:-5}
if ! [[ $rounds =~ ^[0-9]+$ && $seconds =~ ^[0-9]+$ ]] || ((rounds < 1 || seconds < 1)); then
    echo "usage: $0 [ROUNDS] [SECONDS]   (defaults 3 and 5)" >&2
    exit 2
fi
for tool in redis-server jq; do
    command -v "$tool" >/dev/null || { echo "$0: needs $tool" >&2; exit 2; }
done

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=$repo/target/release/readyloop
work=$(mktemp -d)
pids=()

# Stops what this script started, and only that.
# shellcheck disable=SC2317  # only called from the EXIT trap
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

# A port nothing listens on: bash connects to each candidate and takes the first refused.
free_port() {
    local port
    for port in $(seq 20000 20999); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    echo "$0: no free port in 20000-20999" >&2
    exit 1
}

# Starts a server with the extra flags given; prints its chat address from the start-up line.
serve() {
    local log=$work/server-${#pids[@]}
    "$bin" serve --bind 127.0.0.1 --echo-port 0 --files-port 0 --chat-port 0 --admin-port off \
        --chat-rate 0 -q "$@" >"$log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do
        if grep -q '^readyloop listening' "$log"; then
            grep -o 'chat=[^ ]*' "$log" | cut -d= -f2
            return
        fi
        sleep 0.1
    done
    echo "$0: the server did not start:" >&2
    cat "$log" >&2
    exit 1
}

# One run of `bench chat` with the given arguments: one JSON line.
bench() {
    "$bin" bench chat "$@" --senders 1 --members 10 --size 64 --duration "${seconds}s" --json
}

# The median of the numbers on standard input.
median() {
    sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# One line of the table from the JSON lines in a file.
row() {
    local name=$1 file=$2
    local rate p50 p99 ratio
    rate=$(jq '.results.per_second' "$file" | median)
    p50=$(jq '.results.latency_ns.p50 / 1000' "$file" | median)
    p99=$(jq '.results.latency_ns.p99 / 1000' "$file" | median)
    ratio=$(jq '.results.delivery_ratio * 100' "$file" | median)
    printf '%-6s %14.0f %12.1f %12.1f %11.2f%%\n' "$name" "$rate" "$p50" "$p99" "$ratio"
}

cargo build --release --quiet --manifest-path "$repo/Cargo.toml"
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --loglevel warning --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$redis_port") 2>/dev/null && break
    sleep 0.1
done
bus=redis://127.0.0.1:$redis_port

alone=$(serve)
node_a=$(serve --chat-bus "$bus")
node_b=$(serve --chat-bus "$bus")
sleep 0.5 # the links connect within milliseconds; the first publishes would otherwise be dropped

# The set-ups take turns, round by round, so a machine busy for a while slows them alike.
for _ in $(seq "$rounds"); do
    bench "$alone" >>"$work/alone.jsonl"
    bench "$node_a" >>"$work/bus.jsonl"
    bench "$node_a" --members-at "$node_b" >>"$work/two.jsonl"
done

echo "chat, 1 sender and 10 members, 64-byte messages, $rounds round(s) of ${seconds}s, medians"
echo "machine: $(nproc) cores, $(uname -sr), redis $(redis-server --version | grep -o 'v=[^ ]*' | cut -c3-)"
printf '%-6s %14s %12s %12s %12s\n' "set-up" "deliveries/s" "p50 (us)" "p99 (us)" "delivered"
row alone "$work/alone.jsonl"
row bus "$work/bus.jsonl"
row two "$work/two.jsonl"
