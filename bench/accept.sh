#!/usr/bin/env bash
# bench/accept.sh: accept throughput of sluice against the loopback ceiling.
#
# What it measures
#   For message sizes 4 KiB and 64 KiB and 1, 10 and 50 parallel sessions:
#   (a) the ceiling: Postfix's smtp-source -> smtp-sink on a free loopback
#       port (no relay, nothing written to disk);
#   (b) sluice: smtp-source -> `sluice run --config <tmp>` with its durable
#       spool on the real disk (a temp dir under bench/out/, never tmpfs:
#       durability is the point).
#   Each sluice row runs right after its ceiling row, against a fresh daemon
#   with a fresh, empty spool that is stopped (SIGTERM) after the row.
#   Messages per row: 5,000 (4 KiB) and 2,000 (64 KiB); --quick: a tenth;
#   MSGS=N: N for every size.
#   msg/s = messages / wall time of the smtp-source run (date +%s.%N).
#   Each row is measured REPEAT times (default 3), ceiling and sluice
#   alternating, so that both see the same moments of a noisy machine; the
#   table gives the medians, the ratio is the median of the pairs' ratios,
#   and "ratios" lists every pair's.
#   After each sluice row, `sluice queue list --json` must count exactly the
#   messages sent; a WARNING line is printed when it does not.
#   The target: sluice >= 0.5 x ceiling with 10 and 50 sessions.
#
#   By default smtp-source opens a new connection for every message, like the
#   baselines in bench/README.md; --reuse sends all of a session's
#   messages over one connection (smtp-source -d).
#
# How to run (from anywhere)
#   bench/accept.sh [--quick] [--reuse] [--ceiling-only]
#   SLUICE_BIN=/path/to/sluice bench/accept.sh      (default: target/release/sluice)
#   KEEP=1 bench/accept.sh                          (keep the temp spools and logs)
#   SIZES="4096" SESSIONS="10 50" bench/accept.sh   (only those rows)
#   REPEAT=5 bench/accept.sh                        (runs per row; default 3)
#   PROBE='cmd' bench/accept.sh   runs cmd 1.5 s into every sluice run (not
#     the ceiling's), {pid} replaced by the daemon's pid, beside the run (the
#     row's figure counts the probe's cost too; the daemon is stopped once
#     both have ended), e.g.
#     PROBE='perf stat -e "syscalls:sys_enter_*" -p {pid} -- sleep 2'
#     PROBE='vmstat 1 4'                            (the machine's idle share)
#     (use MSGS= so that the run outlasts the probe)
#   Needs /usr/sbin/smtp-source and /usr/sbin/smtp-sink (Postfix), python3,
#   awk. Loopback only. The table is printed and written to
#   bench/out/accept-<date>.txt. Without the release binary it runs the
#   ceiling rows only (and says so).
set -u

BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
SLUICE_BIN=${SLUICE_BIN:-$ROOT/target/release/sluice}
SMTP_SOURCE=${SMTP_SOURCE:-/usr/sbin/smtp-source}
SMTP_SINK=${SMTP_SINK:-/usr/sbin/smtp-sink}
OUT_DIR=$BENCH_DIR/out
RUN_TIMEOUT=${RUN_TIMEOUT:-600}   # seconds, per smtp-source run
READY_TIMEOUT=30                  # seconds, for a listener to come up
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

QUICK=0 REUSE=0 CEILING_ONLY=0
for arg in "$@"; do
    case $arg in
        --quick) QUICK=1 ;;
        --reuse) REUSE=1 ;;
        --ceiling-only) CEILING_ONLY=1 ;;
        -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done

# SIZES="4096" SESSIONS="10" bench/accept.sh runs those rows only.
read -r -a SIZES <<<"${SIZES:-4096 65536}"
read -r -a SESSIONS <<<"${SESSIONS:-1 10 50}"
msgs_for() { # size -> message count
    local n
    if [ "$1" -le 4096 ]; then n=5000; else n=2000; fi
    [ $QUICK = 1 ] && n=$((n / 10))
    [ -n "${MSGS:-}" ] && n=$MSGS
    echo $n
}

for tool in "$SMTP_SOURCE" "$SMTP_SINK"; do
    [ -x "$tool" ] || { echo "missing $tool (Postfix test tools)" >&2; exit 2; }
done
if [ $CEILING_ONLY = 0 ] && [ ! -x "$SLUICE_BIN" ]; then
    echo "NOTE: $SLUICE_BIN not found (build: cargo build --release); ceiling rows only" >&2
    CEILING_ONLY=1
fi

mkdir -p "$OUT_DIR"
STAMP=$(date +%Y%m%d-%H%M%S)
RESULT=$OUT_DIR/accept-$STAMP.txt
WORK=$(mktemp -d "$OUT_DIR/accept-run-$STAMP.XXXXXX")
FSTYPE=$(stat -f -c %T "$WORK")
if [ "$FSTYPE" = tmpfs ] || [ "$FSTYPE" = ramfs ]; then
    echo "WARNING: $WORK is on $FSTYPE; the spool is not durable there" >&2
fi

SINK_PID='' SLUICE_PID='' SOURCE_PID=''
cleanup() {
    stop_pid "$SOURCE_PID"; SOURCE_PID=''
    stop_pid "$SINK_PID"; SINK_PID=''
    stop_pid "$SLUICE_PID"; SLUICE_PID=''
    if [ "${KEEP:-0}" = 1 ] || [ "${FAILED:-0}" = 1 ]; then
        echo "temp files kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap '[ -n "${RESULT:-}" ] && echo "# interrupted" >>"$RESULT"; exit 130' INT TERM


# smtp-source run: port size msgs sessions log [pid] -> sets RATE (msg/s, or
# FAIL). It runs in the background and is waited for, so a signal stops it
# at once. With a pid (a sluice row), PROBE runs against it meanwhile.
drive() {
    local port=$1 size=$2 msgs=$3 sessions=$4 log=$5 pid=${6:-} t0 t1 rc
    local opts=(-s "$sessions" -m "$msgs" -l "$size" -M client.bench.test
                -f sender@client.bench.test -t rcpt@sink.bench.test)
    [ $REUSE = 1 ] && opts+=(-d)
    t0=$(date +%s.%N)
    timeout "$RUN_TIMEOUT" "$SMTP_SOURCE" "${opts[@]}" "127.0.0.1:$port" >"$log" 2>&1 &
    SOURCE_PID=$!
    PROBE_PID=''
    [ -n "$pid" ] && start_probe "$pid"
    wait $SOURCE_PID
    rc=$?
    t1=$(date +%s.%N)
    [ -n "$PROBE_PID" ] && wait "$PROBE_PID"
    SOURCE_PID=''
    if [ $rc -ne 0 ]; then
        echo "WARNING: smtp-source exited $rc (size $size, $sessions sessions): $(head -c 300 "$log" | tr '\n' ' ')" >&2
        RATE=FAIL
        return 1
    fi
    RATE=$(awk -v n="$msgs" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }')
}

ceiling_row() { # size msgs sessions -> sets RATE
    local port sink_opts=()
    port=$(free_port)
    [ "$(id -u)" = 0 ] && sink_opts=(-u nobody)
    "$SMTP_SINK" "${sink_opts[@]}" "127.0.0.1:$port" 256 >"$WORK/sink.log" 2>&1 &
    SINK_PID=$!
    if ! wait_port "$port"; then
        echo "WARNING: smtp-sink did not listen on $port: $(head -c 300 "$WORK/sink.log")" >&2
        stop_pid "$SINK_PID"; SINK_PID=''
        RATE=FAIL; return
    fi
    drive "$port" "$1" "$2" "$3" "$WORK/source-ceiling-$1-$3.log"
    stop_pid "$SINK_PID"; SINK_PID=''
}

write_config() { # dir port
    local dead_port
    dead_port=$(free_port)   # nothing listens there: any delivery attempt is refused
    { sluice_config_head accept.sh "$2" 200; cat <<EOF; } >"$1/sluice.toml"

[dns]
# Loopback only: the recipient domain resolves from the static table to a
# closed loopback port, so nothing ever leaves the box. The queue is on
# hold ([queue] hold = true), so nothing is delivered out of the spool while
# we count it and the figure is the accept path alone (with HOLD=0 every
# message gets one attempt, refused at once and deferred: that work then
# runs during the measurement).
servers = ["127.0.0.1:53"]
static = { "sink.bench.test" = ["127.0.0.1:$dead_port"], "client.bench.test" = ["127.0.0.1:$dead_port"] }

[queue]
hold = $([ "${HOLD:-1}" = 1 ] && echo true || echo false)
EOF
}

sluice_row() { # size msgs sessions run -> sets RATE and SPOOLED
    local size=$1 msgs=$2 sessions=$3 dir port i
    SPOOLED='?'
    dir=$WORK/sluice-$size-$sessions-$4
    mkdir -p "$dir"
    port=$(free_port)
    write_config "$dir" "$port"
    "$SLUICE_BIN" run --config "$dir/sluice.toml" >"$dir/stdout.log" 2>"$dir/stderr.log" &
    SLUICE_PID=$!
    for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
        grep -q 'listening on' "$dir/stderr.log" 2>/dev/null && break
        kill -0 "$SLUICE_PID" 2>/dev/null || break
        sleep 0.1
    done
    if ! grep -q 'listening on' "$dir/stderr.log" || ! wait_port "$port"; then
        echo "WARNING: sluice did not come up on $port: $(tail -c 500 "$dir/stderr.log" | tr '\n' ' ')" >&2
        FAILED=1
        stop_pid "$SLUICE_PID"; SLUICE_PID=''
        RATE=FAIL; return
    fi
    drive "$port" "$size" "$msgs" "$sessions" "$dir/source.log" "$SLUICE_PID" || FAILED=1
    stop_pid "$SLUICE_PID"
    local rc=$?
    SLUICE_PID=''
    [ $rc -ne 0 ] && echo "WARNING: sluice exited $rc after SIGTERM (size $size, $sessions sessions)" >&2
    SPOOLED=$("$SLUICE_BIN" queue list --config "$dir/sluice.toml" --json 2>"$dir/queue.err" |
              python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' 2>>"$dir/queue.err") || SPOOLED='ERR'
    if [ "$SPOOLED" != "$msgs" ]; then
        echo "WARNING: size $size, $sessions sessions: expected $msgs, spool holds $SPOOLED $(head -c 300 "$dir/queue.err" | tr '\n' ' ')" >&2
        FAILED=1
    fi
    # Each message's first delivery attempt meets the closed port and is
    # deferred (DEFER ... Connection refused): expected, and part of the
    # cost measured. Anything else is worth a look.
    local errs
    errs=$(grep -iE 'error|panic|warn' "$dir/stderr.log" | grep -vE 'queue: on hold' | grep -cvE ' DEFER .*Connection refused')
    if [ "$errs" -gt 0 ]; then
        echo "WARNING: sluice logged $errs error/warning lines (size $size, $sessions sessions), e.g.: $(grep -iE 'error|panic|warn' "$dir/stderr.log" | grep -vE 'queue: on hold| DEFER .*Connection refused' | head -3 | tr '\n' ' ')" >&2
    fi
    # A run's spool is not needed once counted (64 KiB rows hold 128 MB).
    [ "${KEEP:-0}" = 1 ] || [ "${FAILED:-0}" = 1 ] || rm -rf "$dir"
}

{
    echo "# sluice accept throughput, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "# host $(hostname), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
    if [ $CEILING_ONLY = 1 ]; then
        echo "# sluice: not run (ceiling only)"
    else
        echo "# sluice: $SLUICE_BIN ($(stat -c '%y' "$SLUICE_BIN" | cut -d. -f1))"
    fi
    echo "# spool: $WORK ($FSTYPE); connections: $([ $REUSE = 1 ] && echo 'reused (-d)' || echo 'one per message')$([ $QUICK = 1 ] && echo '; --quick'); queue $([ "${HOLD:-1}" = 1 ] && echo 'on hold (accept path alone)' || echo 'delivering (HOLD=0)')"
} | tee "$RESULT"

REPEAT=${REPEAT:-3}
HEADER=$(printf '%-6s %8s %8s %12s %12s %7s %8s  %s' size sessions msgs 'ceiling/s' 'sluice/s' ratio spooled ratios)
echo "$HEADER" | tee -a "$RESULT"
for size in "${SIZES[@]}"; do
    msgs=$(msgs_for "$size")
    for sessions in "${SESSIONS[@]}"; do
        ceilings='' sluices='' ratios='' spooled=''
        for ((r = 0; r < REPEAT; r++)); do
            # Rows run in this shell (not in $(...)) so the EXIT trap knows their pids.
            ceiling_row "$size" "$msgs" "$sessions"
            ceilings+=" $RATE"
            if [ $CEILING_ONLY = 0 ]; then
                ceiling=$RATE
                sluice_row "$size" "$msgs" "$sessions" "$r"
                sluices+=" $RATE"
                spooled+=" $SPOOLED"
                ratios+=" $(awk -v a="$RATE" -v b="$ceiling" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else print "FAIL" }')"
            fi
        done
        ceiling=$(echo "$ceilings" | median)
        if [ $CEILING_ONLY = 1 ]; then
            sluice=- ratio=- spooled=- ratios=-
        else
            sluice=$(echo "$sluices" | median)
            ratio=$(echo "$ratios" | median)
            # The spool count of every run must be the messages sent.
            spooled=$(echo "$spooled" | tr ' ' '\n' | grep -v '^$' | sort -u | paste -sd/)
        fi
        printf '%-6s %8s %8s %12s %12s %7s %8s %s\n' "$((size / 1024))K" "$sessions" "$msgs" \
            "$ceiling" "$sluice" "$ratio" "$spooled" "$ratios" | tee -a "$RESULT"
    done
done
echo "# medians of $REPEAT alternating runs; target: ratio >= 0.50 with 10 and 50 sessions" | tee -a "$RESULT"
echo "written to $RESULT"
[ "${FAILED:-0}" = 1 ] && exit 1
exit 0
