#!/usr/bin/env bash
# bench/agents.sh: accept throughput with the Edge agents on against off.
#
# What it measures
#   smtp-source -> `sluice run` on loopback, as bench/accept.sh does (durable
#   spool on the real disk, queue on hold, one connection per message), with
#   two rule files, alternating in one run so that both see the same moments
#   of a noisy machine:
#   * off: accepted domain and a connector only; the Edge agents disabled;
#   * on:  the connection filter with a DNS block list and an allow list
#          (dnsmasq on a loopback port answers them; the client, 127.0.0.1,
#          is listed in neither, so the NXDOMAIN answers are cached for
#          their TTL and only the first session waits for DNS), rate limits
#          far above the load, and protocol analysis on; the recipient
#          filter with valid and blocked patterns, a harvest limit, a tarpit
#          and a 200,000-address directory installed (the recipient is found
#          in it); the sender filter with blocked patterns and blank senders
#          refused (the sender is listed in neither).
#   The table gives the medians of REPEAT pairs and the median of the pairs'
#   ratios (on / off). The issue's target: cost < 10 % (ratio >= 0.90) at
#   4 KiB / 10 sessions.
#
#   Other agents' sections (recipient filter, sender filter) go in with
#   AGENTS_ON_RULES=FILE (appended to the "on" rules) and AGENTS_OFF_RULES=FILE
#   (appended to the "off" rules, e.g. [[agent]] ... enabled = false).
#
# How to run (from anywhere)
#   bench/agents.sh [--quick]                   (--quick: a tenth of the messages)
#   SLUICE_BIN=/path/to/sluice bench/agents.sh  (default: target/release/sluice)
#   SIZES="4096" SESSIONS="10" REPEAT=3 bench/agents.sh   (the defaults)
#   Needs smtp-source (Postfix), dnsmasq, python3, awk. Loopback only. The
#   table is printed and written to bench/out/agents-<date>.txt.
set -u

BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
SLUICE_BIN=${SLUICE_BIN:-$ROOT/target/release/sluice}
SMTP_SOURCE=${SMTP_SOURCE:-/usr/sbin/smtp-source}
DNSMASQ=${DNSMASQ:-$(command -v dnsmasq || echo /usr/sbin/dnsmasq)}
OUT_DIR=$BENCH_DIR/out
RUN_TIMEOUT=${RUN_TIMEOUT:-600}
READY_TIMEOUT=30
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

QUICK=0
for arg in "$@"; do
    case $arg in
        --quick) QUICK=1 ;;
        -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done
read -r -a SIZES <<<"${SIZES:-4096}"
read -r -a SESSIONS <<<"${SESSIONS:-10}"
REPEAT=${REPEAT:-3}
msgs_for() { local n; if [ "$1" -le 4096 ]; then n=5000; else n=2000; fi; [ $QUICK = 1 ] && n=$((n / 10)); echo $n; }

for tool in "$SMTP_SOURCE" "$DNSMASQ" "$SLUICE_BIN"; do
    [ -x "$tool" ] || { echo "missing $tool" >&2; exit 2; }
done

mkdir -p "$OUT_DIR"
STAMP=$(date +%Y%m%d-%H%M%S)
RESULT=$OUT_DIR/agents-$STAMP.txt
WORK=$(mktemp -d "$OUT_DIR/agents-run-$STAMP.XXXXXX")
SLUICE_PID='' SOURCE_PID='' DNS_PID=''
cleanup() {
    stop_pid "$SOURCE_PID"; stop_pid "$SLUICE_PID"; stop_pid "$DNS_PID"
    if [ "${KEEP:-0}" = 1 ] || [ "${FAILED:-0}" = 1 ]; then echo "temp files kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The lists' DNS server: authoritative (NXDOMAIN) for both zones.
DNS_PORT=$(free_port)
"$DNSMASQ" --no-daemon --conf-file=/dev/null --port="$DNS_PORT" --listen-address=127.0.0.1 \
    --bind-interfaces --no-resolv --no-hosts --pid-file="$WORK/dnsmasq.pid" \
    --local=/bl.bench.test/ --local=/wl.bench.test/ --local-ttl=300 \
    --address=/2.0.0.127.bl.bench.test/127.0.0.2 >"$WORK/dnsmasq.log" 2>&1 &
DNS_PID=$!

# The directory the "on" rows install: 100,000 users with a secondary
# address each (200,000 addresses), the benchmark's recipient among them.
DIRECTORY=$WORK/directory.csv
python3 - "$DIRECTORY" <<'PY'
import sys
with open(sys.argv[1], "w") as f:
    f.write("mail,proxyAddresses\n")
    f.write("rcpt@sink.bench.test,SMTP:rcpt@sink.bench.test;smtp:r@sink.bench.test\n")
    for i in range(99_999):
        f.write(f"user{i}@sink.bench.test,SMTP:user{i}@sink.bench.test;smtp:u{i}@eu.sink.bench.test\n")
PY

rules_common() {
    cat <<EOF
[domains]
accepted = ["sink.bench.test"]

[[connector]]
name = "internet"
address_spaces = ["*"]
EOF
}

rules_on() {
    rules_common
    cat <<EOF

[connection_filter]
block_lists = [{ zone = "bl.bench.test", codes = ["127.0.0.2"], reply = "{client} listed by {zone}" }]
allow_lists = [{ zone = "wl.bench.test" }]
rate_limits = { connections_per_minute = 1000000, messages_per_minute = 1000000 }

[protocol_analysis]
threshold = 100000
block_for = "1h"

[recipient_filter]
valid = ["postmaster@sink.bench.test", "*.sink.bench.test"]
blocked = ["blocked@sink.bench.test", "old.sink.bench.test"]
directory = true
tarpit = "2s"
max_unknown = 5

[sender_filter]
blocked = ["spammer@bad.example", "*.bad.example", "worse.example"]
action = "reject"
blank_sender = "reject"
EOF
    [ -n "${AGENTS_ON_RULES:-}" ] && cat "$AGENTS_ON_RULES"
}

rules_off() {
    rules_common
    cat <<EOF

[[agent]]
name = "connection_filter"
enabled = false

[[agent]]
name = "protocol_analysis"
enabled = false

[[agent]]
name = "recipient_filter"
enabled = false

[[agent]]
name = "sender_filter"
enabled = false
EOF
    [ -n "${AGENTS_OFF_RULES:-}" ] && cat "$AGENTS_OFF_RULES"
}

write_config() { # dir port mode
    local dead_port
    dead_port=$(free_port)
    "rules_$3" >"$1/rules.toml"
    { echo "rules = \"$1/rules.toml\""; sluice_config_head agents.sh "$2" 200; cat <<EOF; } >"$1/sluice.toml"

[dns]
servers = ["127.0.0.1:$DNS_PORT"]
timeout = 2
attempts = 1
static = { "sink.bench.test" = ["127.0.0.1:$dead_port"], "client.bench.test" = ["127.0.0.1:$dead_port"] }

[queue]
hold = true
EOF
}

drive() { # port size msgs sessions log -> RATE
    local t0 t1 rc
    t0=$(date +%s.%N)
    timeout "$RUN_TIMEOUT" "$SMTP_SOURCE" -s "$4" -m "$3" -l "$2" -M client.bench.test \
        -f sender@client.bench.test -t rcpt@sink.bench.test "127.0.0.1:$1" >"$5" 2>&1 &
    SOURCE_PID=$!
    wait $SOURCE_PID; rc=$?
    t1=$(date +%s.%N)
    SOURCE_PID=''
    if [ $rc -ne 0 ]; then echo "WARNING: smtp-source exited $rc: $(head -c 300 "$5")" >&2; RATE=FAIL; return 1; fi
    RATE=$(awk -v n="$3" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }')
}

row() { # mode size msgs sessions run -> RATE
    local dir=$WORK/$1-$2-$4-$5 port i spooled
    mkdir -p "$dir"
    port=$(free_port)
    write_config "$dir" "$port" "$1"
    if [ "$1" = on ] && ! "$SLUICE_BIN" directory apply --config "$dir/sluice.toml" "$DIRECTORY" \
        >"$dir/directory.log" 2>&1; then
        echo "WARNING: directory apply: $(tail -c 300 "$dir/directory.log")" >&2
        FAILED=1; RATE=FAIL; return
    fi
    "$SLUICE_BIN" run --config "$dir/sluice.toml" >"$dir/stdout.log" 2>"$dir/stderr.log" &
    SLUICE_PID=$!
    for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
        grep -q 'listening on' "$dir/stderr.log" 2>/dev/null && break
        kill -0 "$SLUICE_PID" 2>/dev/null || break
        sleep 0.1
    done
    if ! wait_port "$port"; then
        echo "WARNING: sluice did not come up: $(tail -c 500 "$dir/stderr.log")" >&2
        FAILED=1; stop_pid "$SLUICE_PID"; SLUICE_PID=''; RATE=FAIL; return
    fi
    drive "$port" "$2" "$3" "$4" "$dir/source.log" || FAILED=1
    stop_pid "$SLUICE_PID"; SLUICE_PID=''
    spooled=$("$SLUICE_BIN" queue list --config "$dir/sluice.toml" --json 2>/dev/null |
              python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' 2>/dev/null)
    if [ "$spooled" != "$3" ]; then
        echo "WARNING: $1: expected $3 spooled, found ${spooled:-?}" >&2; FAILED=1
    fi
    # An agent refusing or failing open here would measure something else.
    if grep -q 'REJECT\|let through' "$dir/stderr.log"; then
        echo "WARNING: $1: an Edge agent refused or failed open: $(grep -m2 'REJECT\|let through' "$dir/stderr.log")" >&2
    fi
    [ "${KEEP:-0}" = 1 ] || [ "${FAILED:-0}" = 1 ] || rm -rf "$dir"
}


{
    echo "# sluice accept throughput, Edge agents on vs off, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "# host $(hostname), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "# sluice: $SLUICE_BIN; one connection per message; queue on hold$([ $QUICK = 1 ] && echo '; --quick')"
    printf '%-6s %8s %8s %10s %10s %7s  %s\n' size sessions msgs 'off/s' 'on/s' ratio ratios
} | tee "$RESULT"
for size in "${SIZES[@]}"; do
    msgs=$(msgs_for "$size")
    for sessions in "${SESSIONS[@]}"; do
        offs='' ons='' ratios=''
        for ((r = 0; r < REPEAT; r++)); do
            row off "$size" "$msgs" "$sessions" "$r"; off=$RATE; offs+=" $off"
            row on "$size" "$msgs" "$sessions" "$r"; ons+=" $RATE"
            ratios+=" $(awk -v a="$RATE" -v b="$off" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else print "FAIL" }')"
        done
        printf '%-6s %8s %8s %10s %10s %7s %s\n' "$((size / 1024))K" "$sessions" "$msgs" \
            "$(echo "$offs" | median)" "$(echo "$ons" | median)" "$(echo "$ratios" | median)" "$ratios" | tee -a "$RESULT"
    done
done
echo "# medians of $REPEAT alternating pairs; target: ratio >= 0.90 at 4K / 10 sessions" | tee -a "$RESULT"
echo "written to $RESULT"
[ "${FAILED:-0}" = 1 ] && exit 1
exit 0
