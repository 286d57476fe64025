#!/usr/bin/env bash
# bench/probe.sh: one relay row, sluice only, for comparing builds and for
# looking inside a run.
#
# What it measures
#   smtp-source -> sluice -> smtp-sink on loopback, sluice configured as in
#   relay.sh (embedded default policy, bench.test by static MX to the sink,
#   [queue] concurrency 50, 20 per destination, the spool on the real
#   disk under bench/out/), one row: SIZE octets (default 4096), SESSIONS
#   (default 10), MSGS messages (default 10,000), each on a new
#   connection. For every run, one line:
#     delivered/s   messages / time from smtp-source's start until the sink
#                   has them all
#     busy, cpu/msg the whole machine's CPU (/proc/stat) over that time:
#                   its share of the cores and CPU time per message
#     own/msg       the sluice process's user + system time
#                   (/proc/PID/stat) per message: its own work without the
#                   peers' (between runs it moves about as much as
#                   delivered/s: +-8-10 % on the shared VM)
#   With several binaries, they run in turn ROUNDS times (default 1) and the
#   means per binary follow.
#   PROBE='cmd' runs cmd 1.5 s into every run, beside it, with {pid}
#   replaced by the daemon's pid (the daemon is stopped once both ended), e.g.
#     PROBE='perf stat -e syscalls:sys_enter_futex,context-switches -p {pid} -- sleep 2'
#     PROBE='perf record -g -o /tmp/p.data -p {pid} -- sleep 2'
#   (what it prints comes before the run's line; a probe slows the run).
#
# How to run (from anywhere, as root for smtp-sink -u nobody)
#   bench/probe.sh                                   (target/release/sluice)
#   ROUNDS=5 bench/probe.sh /tmp/old/sluice target/release/sluice
#   SIZE=65536 MSGS=3000 bench/probe.sh
#   Needs /usr/sbin/smtp-source and smtp-sink (Postfix), python3, awk.
#   Loopback only. Binary paths without spaces (the means split on them).
set -u
BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
READY_TIMEOUT=${READY_TIMEOUT:-20}
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
SIZE=${SIZE:-4096} SESSIONS=${SESSIONS:-10} MSGS=${MSGS:-10000} ROUNDS=${ROUNDS:-1}
SMTP_SOURCE=${SMTP_SOURCE:-/usr/sbin/smtp-source}
SMTP_SINK=${SMTP_SINK:-/usr/sbin/smtp-sink}
HZ=$(getconf CLK_TCK)
BINS=("$@")
[ ${#BINS[@]} -gt 0 ] || BINS=("$ROOT/target/release/sluice")
for i in "${!BINS[@]}"; do
    [ -x "${BINS[$i]}" ] || { echo "missing ${BINS[$i]}" >&2; exit 2; }
    BINS[$i]=$(realpath "${BINS[$i]}")
done
mkdir -p "$BENCH_DIR/out"
WORK=$(mktemp -d "$BENCH_DIR/out/probe-XXXXXX")
SINK_PID='' SLUICE_PID=''
cleanup() {
    stop_pid "$SLUICE_PID"
    stop_pid "$SINK_PID"
    rm -rf "$WORK"
}
trap cleanup EXIT

# busy and all jiffies of the whole machine (as relay.sh counts them: the
# first eight fields, idle and iowait not busy)
machine() { awk '/^cpu / { t = $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; print t - $5 - $6, t }' /proc/stat; }

# True once 127.0.0.1:$1 accepts, false if pid $2 exits first or after
# READY_TIMEOUT.
up() {
    local i
    for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
        kill -0 "$2" 2>/dev/null || return 1
        python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()' "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# One run of binary $1 -> a line on stdout (and in $WORK/lines).
run() {
    local bin=$1 dir sink port i b0 a0 b1 a1 p0 p1 t0 t1 src rc
    dir=$(mktemp -d "$WORK/run-XXXXXX")
    sink=$(free_port) port=$(free_port)
    {
        sluice_config_head probe.sh "$port" 1000
        sluice_relay_tail 127.0.0.1:1 "$sink"
    } >"$dir/sluice.toml"
    local opts=(-c)
    [ "$(id -u)" = 0 ] && opts+=(-u nobody)
    "$SMTP_SINK" "${opts[@]}" "127.0.0.1:$sink" 256 >"$dir/sink.out" 2>&1 &
    SINK_PID=$!
    (cd "$dir" && exec "$bin" run --config sluice.toml >stdout.log 2>stderr.log) &
    SLUICE_PID=$!
    if ! up "$sink" "$SINK_PID" || ! up "$port" "$SLUICE_PID"; then
        echo "$bin: did not come up: $(tail -c 300 "$dir/stderr.log")" >&2
        stop_pid "$SLUICE_PID"; SLUICE_PID=''
        stop_pid "$SINK_PID"; SINK_PID=''
        return 1
    fi
    read -r b0 a0 < <(machine)
    p0=$(proc_cpu "$SLUICE_PID")
    t0=$(date +%s.%N)
    "$SMTP_SOURCE" -s "$SESSIONS" -l "$SIZE" -m "$MSGS" -f a@bench.test -t b@bench.test \
        "127.0.0.1:$port" >"$dir/source.log" 2>&1 &
    src=$!
    start_probe "$SLUICE_PID"
    wait "$src"
    rc=$?
    # smtp-sink -c rewrites "... mesg=N\r" after every message.
    for ((i = 0; i < 6000 && rc == 0; i++)); do
        tr '\r' '\n' <"$dir/sink.out" | grep -q "mesg=$MSGS\b" && break
        sleep 0.01
    done
    t1=$(date +%s.%N)
    read -r b1 a1 < <(machine)
    p1=$(proc_cpu "$SLUICE_PID")
    [ -n "$PROBE_PID" ] && wait "$PROBE_PID"
    stop_pid "$SLUICE_PID"; SLUICE_PID=''
    stop_pid "$SINK_PID"; SINK_PID=''
    if [ "$rc" != 0 ] || [ "$i" -ge 6000 ] || [ -z "$p0" ] || [ -z "$p1" ]; then
        echo "$bin: failed run (smtp-source exit $rc; sink: $(tr '\r' '\n' <"$dir/sink.out" | tail -1); sluice: $(tail -c 200 "$dir/stderr.log"))" >&2
        return 1
    fi
    awk -v bin="$bin" -v m="$MSGS" -v t0="$t0" -v t1="$t1" -v b=$((b1 - b0)) -v a=$((a1 - a0)) \
        -v p=$((p1 - p0)) -v hz="$HZ" 'BEGIN {
        printf "%s delivered/s %.0f busy %.0f%% cpu/msg %.0f us own/msg %.0f us\n",
            bin, m / (t1 - t0), 100 * b / a, b * 1e6 / hz / m, p * 1e6 / hz / m }' | tee -a "$WORK/lines"
    rm -rf "$dir"
}

echo "# probe: ${SIZE} octets x ${SESSIONS} sessions, ${MSGS} messages, $(date -u '+%F %T') UTC, load $(cut -d' ' -f1-3 /proc/loadavg)"
# Runs in this shell (not in a pipeline), so that the EXIT trap knows the
# pids it has to stop.
: >"$WORK/lines"
for ((r = 1; r <= ROUNDS; r++)); do
    for b in "${BINS[@]}"; do
        run "$b"
    done
done
if [ ${#BINS[@]} -gt 1 ] || [ "$ROUNDS" -gt 1 ]; then
    awk '/ delivered\/s / { if (!($1 in n)) name[++k] = $1; n[$1]++; d[$1] += $3; c[$1] += $7; o[$1] += $10 }
        END { for (i = 1; i <= k; i++) { b = name[i]
            printf "# mean of %d: %s delivered/s %.0f cpu/msg %.0f us own/msg %.0f us\n", n[b], b, d[b] / n[b], c[b] / n[b], o[b] / n[b] } }' "$WORK/lines"
fi
