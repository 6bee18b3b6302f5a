#!/usr/bin/env bash
# scripts/soak.sh [DURATION_SECONDS]: a soak run of the release server under mixed load.
#
# Builds the release binary, starts the server on 127.0.0.1 (every port 0, the real ones read
# from its start-up line) serving a temporary directory, and drives it for DURATION_SECONDS
# (default 600) with its own load generator, `readyloop bench`: rounds in which echo churn
# (`bench connect`), echo round trips (`bench echo`), downloads (`bench download`) and chat
# (`bench chat`) run side by side for ROUND_LOAD while the admin service is scraped, then rest for
# ROUND_REST. Every second it
# samples the server's resident memory (VmRSS) and open descriptors into a CSV. At the end it
# compares the first minute with the last (a third of the run each when the run is shorter than
# three minutes), stops the server with SIGTERM and checks that it exits with status 0.
#
# Both figures must stay flat: a server that leaks a descriptor or a buffer per connection,
# download or chat member shows it here after a few hundred thousand of them. The load is bursty
# on purpose: about a third of each round is load (the generators are closed-loop and would
# otherwise keep both cores busy), and most samples fall in the rests, where the server should be
# back at its resting state every time.
#
# All traffic goes to 127.0.0.1. Every generator run is bounded in time; the run stops by itself,
# and Ctrl-C stops it early, cleaning up. Not run in CI: it takes minutes.
#
# Output: the summary on standard output; samples.csv, server.log and the generators' JSON lines
# in target/soak/. Exit status 0 when both figures are flat, the server exited with status 0 and
# every generator run succeeded; 1 otherwise; 2 for a bad argument.

set -euo pipefail

readonly ROUND_LOAD=300ms     # each generator's run per round
readonly ROUND_REST=0.7       # seconds of rest after each round
readonly WINDOW_MAX=60        # seconds compared at each end of the run
readonly RSS_GROWTH_PCT=10    # RSS is flat if the last median is within this much of the first
readonly FD_GROWTH=2          # descriptors are flat if the last median is at most this many more
readonly FILE_BYTES=$((4 * 1024 * 1024))  # size of the file downloaded over and over

duration=${1:-600}
if ! [[ $duration =~ ^[0-9]+$ ]] || ((duration < 30)); then
    echo "usage: $0 [DURATION_SECONDS]   (at least 30; default 600)" >&2
    exit 2
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=$repo/target/release/readyloop
out=$repo/target/soak
work=$(mktemp -d)
server_pid=
sampler_pid=
load_pids=()

# Stops whatever is still running (only the processes this script started) and removes the
# served directory. Runs on every exit: normal end, error, Ctrl-C.
# shellcheck disable=SC2317  # only called from the EXIT trap, which shellcheck does not follow
cleanup() {
    local pid
    for pid in "${load_pids[@]}" "$sampler_pid"; do
        if [[ -n $pid ]]; then
            kill "$pid" 2>/dev/null || true
        fi
    done
    if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        # A second SIGTERM closes every connection at once instead of granting the grace period.
        sleep 0.5
        kill -TERM "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "soak: interrupted" >&2; exit 1' INT TERM

echo "soak: building the release binary"
cargo build --release --quiet --manifest-path "$repo/Cargo.toml"

mkdir -p "$out" "$work/root"
rm -f "$out"/samples.csv "$out"/server.log "$out"/bench-*.jsonl
head -c "$FILE_BYTES" /dev/urandom >"$work/root/soak.bin"
: >"$work/startup"  # exists before the server's redirection creates it, for the loop below

"$bin" serve --bind 127.0.0.1 --echo-port 0 --files-port 0 --chat-port 0 --admin-port 0 \
    --root "$work/root" --chat-rate 0 >"$work/startup" 2>"$out/server.log" &
server_pid=$!

# The start-up line, `readyloop listening echo=ADDR files=ADDR chat=ADDR`, within 10 s.
declare -A addr=()
for _ in $(seq 100); do
    if read -r line <"$work/startup" && [[ $line == "readyloop listening "* ]]; then
        for pair in ${line#readyloop listening }; do
            addr[${pair%%=*}]=${pair#*=}
        done
        break
    fi
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
done
for service in echo files chat admin; do
    if [[ -z ${addr[$service]:-} ]]; then
        echo "soak: the server printed no start-up line naming $service; its log:" >&2
        cat "$out/server.log" >&2
        exit 1
    fi
done
echo "soak: server pid $server_pid, echo=${addr[echo]} files=${addr[files]} chat=${addr[chat]}" \
    "admin=${addr[admin]}"

# One sample a second: seconds since the start, VmRSS in KiB, open descriptors.
sample() {
    local start=$1 rss key value _ now
    local -a fds
    echo "t_s,rss_kib,fds"
    while kill -0 "$server_pid" 2>/dev/null; do
        rss=
        while read -r key value _; do
            [[ $key == VmRSS: ]] && rss=$value
        done <"/proc/$server_pid/status" || true
        fds=("/proc/$server_pid/fd"/*)
        now=${EPOCHREALTIME//[!0-9]/}
        [[ -n $rss ]] && echo "$(((now - start) / 1000000)),$rss,${#fds[@]}"
        sleep 1
    done
}
start=${EPOCHREALTIME//[!0-9]/}
sample "$start" >"$out/samples.csv" &
sampler_pid=$!

# One scrape of the admin service, as a monitoring system and an open live page would make each
# second: the metrics, the figures and the connection list. Bash's /dev/tcp keeps curl out of it.
scrape() {
    local path
    for path in /metrics /stats.json /connections; do
        exec 3<>"/dev/tcp/${addr[admin]%:*}/${addr[admin]##*:}"
        printf 'GET %s HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n' "$path" >&3
        cat <&3 >/dev/null
        exec 3<&-
    done
}

# One generator run, its JSON line appended to bench-SCENARIO.jsonl; `timeout` is a second
# bound in case a run ever failed to stop by itself. Run in the background, where `exec` makes
# the job's PID that of `timeout`, which passes a SIGTERM from `cleanup` on to the generator.
generate() {
    local scenario=$1
    shift
    exec timeout 30 "$bin" bench "$scenario" "$@" --duration "$ROUND_LOAD" --threads 1 --json -q \
        >>"$out/bench-$scenario.jsonl"
}

echo "soak: mixed load for ${duration}s (samples in $out/samples.csv)"
rounds=0
failed_runs=0
deadline=$((start + duration * 1000000))
while ((${EPOCHREALTIME//[!0-9]/} < deadline)); do
    load_pids=()
    generate connect "${addr[echo]}" -c 8 & load_pids+=($!)
    generate echo "${addr[echo]}" -c 16 --size 512 --pipeline 2 & load_pids+=($!)
    generate download "${addr[files]}" soak.bin -c 2 & load_pids+=($!)
    generate chat "${addr[chat]}" --senders 2 --members 20 & load_pids+=($!)
    scrape
    for pid in "${load_pids[@]}"; do
        wait "$pid" || failed_runs=$((failed_runs + 1))
    done
    load_pids=()
    rounds=$((rounds + 1))
    sleep "$ROUND_REST"
done

read -r -a stat <"/proc/$server_pid/stat"
server_cpu_ticks=$((stat[13] + stat[14]))  # utime + stime
kill -TERM "$server_pid"
server_status=0
wait "$server_pid" || server_status=$?
server_pid=
wait "$sampler_pid" || true
sampler_pid=

# Median and max of column COL over samples FROM <= t < TO.
stats() {
    local col=$1 from=$2 to=$3
    awk -F, -v c="$col" -v a="$from" -v b="$to" 'NR > 1 && $1 >= a && $1 < b { print $c }' \
        "$out/samples.csv" | sort -n |
        awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)], v[NR]; else print "- -" }'
}

window=$((duration / 3 < WINDOW_MAX ? duration / 3 : WINDOW_MAX))
last_from=$((duration - window))
read -r rss_first rss_first_max < <(stats 2 0 "$window")
read -r rss_last rss_last_max < <(stats 2 "$last_from" "$duration")
read -r fd_first fd_first_max < <(stats 3 0 "$window")
read -r fd_last fd_last_max < <(stats 3 "$last_from" "$duration")
samples=$(($(wc -l <"$out/samples.csv") - 1))

verdict=0
rss_limit=$((rss_first + rss_first * RSS_GROWTH_PCT / 100))
fd_limit=$((fd_first + FD_GROWTH))
if ((rss_last <= rss_limit)); then rss_verdict=flat; else rss_verdict=GROWING; verdict=1; fi
if ((fd_last <= fd_limit)); then fd_verdict=flat; else fd_verdict=GROWING; verdict=1; fi

runs_with_errors=0
for file in "$out"/bench-*.jsonl; do
    runs_with_errors=$((runs_with_errors + $(grep -vc '"errors":{}' "$file" || true)))
done

echo
echo "soak: ${duration}s, $rounds rounds of ${ROUND_LOAD} load + ${ROUND_REST}s rest, $samples samples"
printf '%-12s %14s %14s %14s %14s  %s\n' "" "first median" "first max" "last median" "last max" "verdict"
printf '%-12s %14s %14s %14s %14s  %s\n' "VmRSS (KiB)" "$rss_first" "$rss_first_max" \
    "$rss_last" "$rss_last_max" "$rss_verdict (limit $rss_limit: +${RSS_GROWTH_PCT}%)"
printf '%-12s %14s %14s %14s %14s  %s\n' "open fds" "$fd_first" "$fd_first_max" \
    "$fd_last" "$fd_last_max" "$fd_verdict (limit $fd_limit: +$FD_GROWTH)"
echo "(first: 0-${window}s, last: ${last_from}-${duration}s)"
for scenario in connect echo download chat; do
    awk -F'"operations":' -v s="$scenario" \
        '{ split($2, a, ","); n += a[1]; r++ } END { printf "generator %-9s %4d runs, %d operations\n", s, r, n }' \
        "$out/bench-$scenario.jsonl"
done
echo "generator runs failed: $failed_runs; runs reporting errors: $runs_with_errors"
grep -o 'stopped: .*' "$out/server.log" | tr ' ' '\n' |
    grep -E '^(accepted|closed_(error|reset|limit|idle)|downloads_(completed|aborted)|chat_relayed|stale_events)=' |
    paste -sd' ' | sed 's/^/server final figures: /'
echo "server CPU time: $((server_cpu_ticks / $(getconf CLK_TCK)))s in ${duration}s"
echo "server exit status after SIGTERM: $server_status"

if ((server_status != 0 || failed_runs != 0)); then
    verdict=1
fi
if ((verdict == 0)); then echo "soak: PASS"; else echo "soak: FAIL"; fi
exit "$verdict"
