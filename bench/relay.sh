#!/usr/bin/env bash
# bench/relay.sh: end-to-end relay throughput and memory, sluice against
# Postfix, Exim and OpenSMTPD.
#
# What it measures
#   smtp-source -> relay -> smtp-sink on loopback, with the relays side by
#   side in one run (PEERS picks the peers, default "postfix exim opensmtpd"):
#   (a) sluice: `sluice run --config <tmp>`, durable spool on the real disk
#       (a temp dir under bench/out/, never tmpfs), embedded default policy
#       (loopback clients relay, everything goes by MX); `[dns] static_mx`
#       sends bench.test to sink.bench, `[dns] static` points sink.bench at
#       the sink; [queue] concurrency 50, 20 per destination.
#   (b) Postfix (the Debian package): a private instance with its own
#       config_directory, queue_directory and data_directory under the
#       run's temp dir (never /etc/postfix, /var/spool/postfix or port 25):
#       smtpd on a free loopback port only, chroot off, relayhost =
#       [127.0.0.1]:<sink>, TLS off, maillog_file in the temp dir, every
#       other setting Debian's default (20 deliveries per destination,
#       connection caching on demand, in_flow_delay 1s).
#   (c) Exim 4.96 (Debian exim4-daemon-light): `exim4 -C <config> -bdf
#       -odf` with bench/peers/exim.conf (its own spool, logs and pid file
#       in the run's temp dir, a loopback listener, relaying from
#       127.0.0.1 to the sink by manualroute; the config names each change
#       from the defaults: no DNS/ident lookups, smtp_accept_max 200,
#       smtp_connect_backlog 256, remote_max_parallel 100,
#       smtp_accept_queue_per_connection 0, no TLS). Deliveries start at
#       once, one process per message. fsyncs 4 times per message.
#   (d) OpenSMTPD 6.8 (Debian opensmtpd): `smtpd -d -f <config>` with
#       bench/peers/smtpd.conf (loopback listener, `action relay host
#       smtp://127.0.0.1:<sink>`, match from local for any; `mta limit`
#       lifts its delivery side's 5 connections per route and 2-5 s
#       connection delays) in a private
#       mount namespace (`unshare -m`): its compiled-in queue path
#       /var/spool/smtpd is a bind mount of a fresh dir under the run's
#       temp dir, /run, /var/lib/opensmtpd/empty and /etc/resolv.conf
#       (nameserver 127.0.0.1) are private too. Its queue is NEVER synced
#       (no fsync/fdatasync; strace -f -c: 0 per message): it does not
#       promise durability, and the table says so ("NO FSYNC"). Its
#       listen(2) backlog is a constant 5 in its source: bursts of
#       connections overflow it and stall for the 1 s SYN retransmit.
#       Each of its delivery connections carries ~22 msg/s (Nagle holds
#       the final ".", sent apart, for the receiver's delayed ACK).
#   Exim and OpenSMTPD are not installed as Debian packages (each
#   conflicts with postfix, which must stay for smtp-source/smtp-sink):
#   the script fetches them with `apt-get download` into PEERS_DIR
#   (default bench/out/peers/) and unpacks them there with `dpkg-deb -x`,
#   never registering them with dpkg; a missing shared library (ldd) is
#   installed from the package's lib* dependencies (libraries do not
#   conflict); the users the packages' postinst would create
#   (Debian-exim; opensmtpd and opensmtpq) are created if missing.
#   sluice, Postfix and Exim acknowledge a message only after it is
#   fsynced to their queue; OpenSMTPD does not.
#   For 4 KiB and 64 KiB messages and 10 and 50 sessions, each relay gets a
#   fresh daemon, an empty queue and a fresh smtp-sink (-c counts messages):
#     accepted/s  = messages / wall time of the smtp-source run
#     delivered/s = messages / time from smtp-source's start until the sink
#                   has received all of them (polled every 10 ms)
#     peak PSS    = max over 0.2 s samples of the sum of Pss
#                   (/proc/PID/smaps_rollup) over the relay's processes
#                   (sluice: its one pid; Postfix: master and every
#                   descendant of it; Exim: the daemon and its children;
#                   OpenSMTPD: the parent and its processes)
#     machine busy, CPU/msg = the whole machine's CPU (/proc/stat) from
#                   smtp-source's start until the sink has every message:
#                   its share of the cores, and CPU time per message; a
#                   table gives each relay's own (minus the ceiling row's,
#                   which is smtp-source and smtp-sink alone)
#     sluice's process CPU/msg = the sluice process's user + system time
#                   (/proc/PID/stat) over the run, per message: its own
#                   cost without the peers' (between runs it moves about
#                   as much as delivered/s: +-8-10 % in 4 rounds here)
#   The first row of each size and session count is the loopback ceiling
#   (smtp-source straight to smtp-sink, no relay; CEILING=0 leaves it
#   out), and a table gives sluice's delivered/s over it (issue 16's
#   target at 4 KiB / 10 sessions: >= 0.50).
#   REPEAT=N runs every row N times, the relays in order on odd runs and
#   in reverse on even ones (each run in fresh directories); a table of
#   medians follows, and the ratio tables use the medians.
#   Messages per row: 3,000 (4 KiB) and 1,000 (64 KiB); --quick: a tenth.
#   Each message uses a new client connection (smtp-source without -d).
#   Every relay's row checks the sink counted every message and that the
#   relay's log has one delivery line per message and nothing else.
#   Targets (issue 16): sluice's delivered/s >= 6 x Postfix, >= 3 x Exim,
#   > 1 x OpenSMTPD; peak PSS <= 1/10 of Postfix's.
#
#   Then (unless --no-perf) two more sluice runs, 4 KiB, 50 sessions
#   (PROFILE_SESSIONS=N to change):
#   `perf record -a -g` over the run (CPU by command, sluice's top symbols,
#   user/kernel split) and `perf trace -s -p <sluice>` (syscall counts and
#   latencies: fdatasync, connect, ...). Symbols need an unstripped binary
#   (the release profile strips): SLUICE_PERF_BIN, default
#   target/perf/release/sluice when it exists, built with
#     CARGO_TARGET_DIR=target/perf CARGO_PROFILE_RELEASE_STRIP=false \
#         cargo build --release
#   (same code and optimisation, symbols kept).
#
#   With --milter, each relay runs twice per row: without a milter and
#   with one no-op milter (bench/noop_milter.py, python3-milter, which
#   negotiates every step away but end of message and accepts there),
#   shared by both relays: sluice's `[[milter]]`, Postfix's
#   `smtpd_milters` (Exim and OpenSMTPD are left out of --milter runs).
#   Rows: sluice, sluice_milter, postfix, postfix_milter,
#   then the milter's cost per relay and sluice_milter / postfix_milter.
#   SIZES="4096" SESSIONS="10" restrict the rows (default: both of each).
#   MSGS=N sends N messages a row (default 3,000 at 4 KiB, 1,000 at 64 KiB;
#   more makes a run longer and its figure steadier).
#
#   With --sender-auth (sluice only, no profile): four sluice rows per row
#   of the table, in this order: sluice (embedded default, the client is
#   originating), sluice_sign (the same with two [[dkim]] keys for
#   bench.test, RSA 2048 and Ed25519: every message gets two signatures),
#   sluice_anon (a rule file accepting bench.test and attributing nothing:
#   the client is anonymous), sluice_verify (the same with
#   [authentication]: SPF, DKIM, DMARC and ARC on every message; dnsmasq
#   on a loopback port serves the SPF, DMARC and key records with a
#   300 s TTL, so all but the first lookups are cache hits). Then the
#   ratios sign/default and verify/anon (issue 11's target: >= 0.85).
#   smtp-source's messages are unsigned, so sluice_verify finds no
#   signature; the last two rows chain two sluices, smtp-source -> A -> B
#   -> smtp-sink: chain (A relays, B takes A's mail as anonymous mail for
#   an accepted domain) against chain_on (A signs with SIGN_KEYS, B
#   verifies those signatures, SPF and DMARC): the issue's "verification
#   and signing on against off" on real signatures. Both sluices share
#   the 2 cores, so the chain's rate is about half a single relay's.
#   CHAIN_SIGNS=1 makes A sign in the "off" row too: the pair then
#   measures B's verification of real signatures alone.
#
# How to run (as root, from anywhere)
#   bench/relay.sh [--quick] [--no-perf] [--only sluice|postfix|exim|opensmtpd] [--milter] [--sender-auth]
#   SLUICE_BIN=/path/to/sluice bench/relay.sh   (default: target/release/sluice)
#   PEERS="postfix exim" bench/relay.sh         (the peers beside sluice; default
#                                                "postfix exim opensmtpd")
#   PEERS_DIR=/opt/bench-peers bench/relay.sh   (where Exim and OpenSMTPD are
#                                                unpacked; default bench/out/peers)
#   KEEP=1 bench/relay.sh                       (keep temp queues, logs, perf data)
#   REPEAT=3 bench/relay.sh --no-perf           (medians of 3 alternating runs)
#   Needs /usr/sbin/smtp-source, smtp-sink, postfix, postconf (Postfix; the
#   users postfix/postdrop), python3, awk, perf (for the profile); for
#   Exim and OpenSMTPD apt-get and dpkg-deb (first run only), unshare and
#   mount (util-linux). Loopback only.
#   The table is printed and written to bench/out/relay-<date>.txt,
#   the perf reports to bench/out/relay-<date>-perf-*.txt.
set -u

BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
SLUICE_BIN=${SLUICE_BIN:-$ROOT/target/release/sluice}
if [ -z "${SLUICE_PERF_BIN:-}" ]; then
    if [ -x "$ROOT/target/perf/release/sluice" ]; then
        SLUICE_PERF_BIN=$ROOT/target/perf/release/sluice
    else
        SLUICE_PERF_BIN=$SLUICE_BIN
    fi
fi
SMTP_SOURCE=${SMTP_SOURCE:-/usr/sbin/smtp-source}
SMTP_SINK=${SMTP_SINK:-/usr/sbin/smtp-sink}
POSTFIX=${POSTFIX:-/usr/sbin/postfix}
POSTCONF=${POSTCONF:-/usr/sbin/postconf}
PERF=${PERF:-perf}
OUT_DIR=$BENCH_DIR/out
RUN_TIMEOUT=${RUN_TIMEOUT:-600}   # seconds, per row: sending plus delivery
PROFILE_SESSIONS=${PROFILE_SESSIONS:-50}
PROFILE_SIZE=${PROFILE_SIZE:-4096}   # octets per message in the profile runs
READY_TIMEOUT=30                  # seconds, for a listener to come up
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

QUICK=0 NO_PERF=0 ONLY='' MILTER=0 SENDER_AUTH=0
while [ $# -gt 0 ]; do
    case $1 in
        --quick) QUICK=1 ;;
        --no-perf) NO_PERF=1 ;;
        --milter) MILTER=1 ;;
        --sender-auth) SENDER_AUTH=1 NO_PERF=1 ;;
        --only) shift; ONLY=${1:-} ;;
        --only=*) ONLY=${1#--only=} ;;
        -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
case $ONLY in ''|sluice|postfix|exim|opensmtpd) ;; *) echo "--only: sluice, postfix, exim or opensmtpd" >&2; exit 2 ;; esac
read -r -a PEER_LIST <<<"${PEERS-postfix exim opensmtpd}"
for p in "${PEER_LIST[@]}"; do
    case $p in postfix|exim|opensmtpd) ;; *) echo "PEERS: postfix, exim, opensmtpd (not $p)" >&2; exit 2 ;; esac
done
# The milter rows exist for sluice and Postfix only.
[ $MILTER = 1 ] && PEER_LIST=(postfix)
RELAYS=(sluice "${PEER_LIST[@]}")
# The loopback ceiling (smtp-source -> smtp-sink, no relay) beside them.
[ $MILTER = 0 ] && [ -z "$ONLY" ] && [ "${CEILING:-1}" = 1 ] && RELAYS=(ceiling "${RELAYS[@]}")
[ -n "$ONLY" ] && RELAYS=("$ONLY")
if [ $MILTER = 1 ]; then
    R2=()
    for r in "${RELAYS[@]}"; do R2+=("$r" "${r}_milter"); done
    RELAYS=("${R2[@]}")
fi

SIGN_KEYS=${SIGN_KEYS:-rsa ed}
# CHAIN_SIGNS=1: A signs in the chain's "off" row too, so that the pair
# measures B's verification of real signatures alone.
CHAIN_SIGNS=${CHAIN_SIGNS:-}
if [ $SENDER_AUTH = 1 ]; then
    RELAYS=(sluice sluice_sign sluice_anon sluice_verify chain chain_on)
    DNSMASQ=${DNSMASQ:-$(command -v dnsmasq || echo /usr/sbin/dnsmasq)}
    [ -x "$DNSMASQ" ] || { echo "missing dnsmasq (--sender-auth)" >&2; exit 2; }
fi

read -r -a SIZES <<<"${SIZES:-4096 65536}"
read -r -a SESSIONS <<<"${SESSIONS:-10 50}"
msgs_for() { # size -> message count
    local n
    if [ -n "${MSGS:-}" ]; then n=$MSGS
    elif [ "$1" -le 4096 ]; then n=3000; else n=1000; fi
    [ $QUICK = 1 ] && n=$((n / 10))
    echo $n
}

for tool in "$SMTP_SOURCE" "$SMTP_SINK"; do
    [ -x "$tool" ] || { echo "missing $tool (Postfix test tools)" >&2; exit 2; }
done
for relay in "${RELAYS[@]}"; do
    case $relay in
        *_milter|sluice_*|ceiling) ;;
        sluice) [ -x "$SLUICE_BIN" ] || { echo "missing $SLUICE_BIN (cargo build --release, or SLUICE_BIN=)" >&2; exit 2; } ;;
        postfix)
            [ "$(id -u)" = 0 ] || { echo "the private Postfix instance needs root (postfix start)" >&2; exit 2; }
            [ -x "$POSTFIX" ] && [ -x "$POSTCONF" ] || { echo "missing $POSTFIX / $POSTCONF" >&2; exit 2; }
            getent passwd postfix >/dev/null && getent group postdrop >/dev/null ||
                { echo "missing user postfix or group postdrop (Debian package)" >&2; exit 2; } ;;
        exim|opensmtpd)
            [ "$(id -u)" = 0 ] || { echo "the private $relay instance needs root" >&2; exit 2; } ;;
    esac
done
if [ $NO_PERF = 0 ] && { [ -n "$ONLY" ] && [ "$ONLY" != sluice ] || ! command -v "$PERF" >/dev/null; }; then
    [ -z "$ONLY" ] || [ "$ONLY" = sluice ] && echo "NOTE: perf not found; no profile" >&2
    NO_PERF=1
fi

mkdir -p "$OUT_DIR"
STAMP=$(date +%Y%m%d-%H%M%S)
RESULT=$OUT_DIR/relay-$STAMP.txt
WORK=$(mktemp -d "$OUT_DIR/relay-run-$STAMP.XXXXXX")
chmod 755 "$WORK"   # Postfix's daemons (user postfix) must reach their queue in here
FSTYPE=$(stat -f -c %T "$WORK")
if [ "$FSTYPE" = tmpfs ] || [ "$FSTYPE" = ramfs ]; then
    echo "WARNING: $WORK is on $FSTYPE; the queues are not durable there" >&2
fi

# ---------------------------------------------------------------- helpers
HELPER=$WORK/helper.py
cat >"$HELPER" <<'PY'
"""drive: run smtp-source, time it and the sink's count; pss: sample memory."""
import os, signal, subprocess, sys, time


def sink_count(path):
    # smtp-sink -c rewrites "sess=N quit=N mesg=N\r" after every message.
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 256))
            tail = f.read().decode("ascii", "replace")
    except OSError:
        return 0
    i = tail.rfind("mesg=")
    if i < 0:
        return 0
    digits = ""
    for ch in tail[i + 5:]:
        if not ch.isdigit():
            break
        digits += ch
    return int(digits or 0)


def cpu_jiffies():
    """The whole machine's (busy, all) jiffies so far (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    total = sum(v[:8])  # guest time is counted in user already
    return total - idle, total


def drive(source, port, size, msgs, sessions, sink_out, log, timeout):
    msgs, timeout = int(msgs), float(timeout)
    cmd = [source, "-s", sessions, "-l", size, "-m", str(msgs),
           "-f", "a@bench.test", "-t", "b@bench.test", "127.0.0.1:" + port]
    child = []

    def stop(sig, frm):
        for p in child:
            if p.poll() is None:
                p.kill()
                p.wait()
        sys.exit(128 + sig)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with open(log, "wb") as out:
        busy0, all0 = cpu_jiffies()
        busy_del = all_del = None
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        child.append(p)
        t_acc = t_del = None
        n = 0
        while time.monotonic() - t0 < timeout:
            if t_acc is None and p.poll() is not None:
                t_acc = time.monotonic() - t0
            n = sink_count(sink_out)
            if t_del is None and n >= msgs:
                t_del = time.monotonic() - t0
                busy_del, all_del = cpu_jiffies()
            if t_acc is not None and t_del is not None:
                break
            time.sleep(0.01)
        if p.poll() is None:
            p.kill()
        rc = p.wait()
    # The machine's CPU from the start until the sink had every message:
    # how busy it was, and CPU time per message (smtp-source's and
    # smtp-sink's included; the ceiling row shows theirs alone).
    busy, cpu_us = "-", "-"
    if busy_del is not None and all_del > all0:
        hz = os.sysconf("SC_CLK_TCK")
        busy = "%.0f" % (100.0 * (busy_del - busy0) / (all_del - all0))
        cpu_us = "%.0f" % ((busy_del - busy0) * 1e6 / hz / msgs)
    print("%s %s %d %d %s %s" % ("%.3f" % t_acc if t_acc is not None else "-",
                                 "%.3f" % t_del if t_del is not None else "-", n, rc,
                                 busy, cpu_us))


def descendants(root):
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                s = f.read()
        except OSError:
            continue
        ppid = int(s[s.rfind(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def pss_of(pid):
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss(mode, root, out, stop_file, max_secs, interval):
    root, max_secs, interval = int(root), float(max_secs), float(interval)
    best = [0, 0]

    def write():
        with open(out, "w") as f:
            f.write("%d %d\n" % (best[0], best[1]))

    def stop(sig, frm):
        write()
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_secs and not os.path.exists(stop_file):
        if not os.path.exists("/proc/%d" % root):
            break
        pids = descendants(root) if mode == "tree" else [root]
        total = sum(pss_of(p) for p in pids)
        if total > best[0]:
            best = [total, len(pids)]
            write()
        time.sleep(interval)
    write()


if __name__ == "__main__":
    {"drive": drive, "pss": pss}[sys.argv[1]](*sys.argv[2:])
PY

MILTER_PID='' MILTER_ADDR='' WITH_MILTER='' WITH_SIGN='' WITH_ANON='' WITH_VERIFY=''
DNS_PID='' DNS_PORT=''
CHAIN_PIDS='' SINK_PID='' SLUICE_PID='' DRIVE_PID='' SAMPLER_PID='' PERF_PID='' PF_CONF='' PF_MASTER=''
EXIM_PID='' SMTPD_PID=''
pf_cmd() { # postfix/postconf with its messages on stderr (they go to syslog when stderr is no tty)
    if command -v script >/dev/null; then
        script -qec "$(printf '%q ' "$@")" /dev/null
    else
        "$@"
    fi
}
pf_stop() { # stop the private Postfix instance and wait for its master to go
    local i
    [ -n "$PF_CONF" ] || return 0
    pf_cmd "$POSTFIX" -c "$PF_CONF" stop >/dev/null 2>&1
    if [ -n "$PF_MASTER" ]; then
        for ((i = 0; i < 100; i++)); do
            kill -0 "$PF_MASTER" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$PF_MASTER" 2>/dev/null; then
            echo "WARNING: Postfix master $PF_MASTER still up 10 s after 'postfix stop'; SIGKILL to it and its children" >&2
            pkill -KILL -P "$PF_MASTER" 2>/dev/null
            kill -KILL "$PF_MASTER" 2>/dev/null
        fi
    fi
    PF_CONF='' PF_MASTER=''
}
cleanup() {
    stop_pid "$DRIVE_PID"; DRIVE_PID=''
    stop_pid "$SAMPLER_PID"; SAMPLER_PID=''
    stop_pid "$PERF_PID" INT; PERF_PID=''
    stop_pid "$SLUICE_PID"; SLUICE_PID=''
    for p in $CHAIN_PIDS; do stop_pid "$p"; done
    pf_stop
    stop_pid "$EXIM_PID"; EXIM_PID=''
    stop_pid "$SMTPD_PID"; SMTPD_PID=''
    stop_pid "$SINK_PID"; SINK_PID=''
    stop_pid "$MILTER_PID"; MILTER_PID=''
    stop_pid "$DNS_PID"; DNS_PID=''
    if [ "${KEEP:-0}" = 1 ] || [ "${FAILED:-0}" = 1 ]; then
        echo "temp files kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap '[ -n "${RESULT:-}" ] && echo "# interrupted" >>"$RESULT"; exit 130' INT TERM


start_sink() { # dir -> SINK_PORT, SINK_PID, SINK_OUT
    local opts=(-c)
    [ "$(id -u)" = 0 ] && opts+=(-u nobody)
    SINK_PORT=$(free_port)
    SINK_OUT=$1/sink.out
    "$SMTP_SINK" "${opts[@]}" "127.0.0.1:$SINK_PORT" 256 >"$SINK_OUT" 2>&1 &
    SINK_PID=$!
    wait_port "$SINK_PORT" && return 0
    echo "WARNING: smtp-sink did not listen on $SINK_PORT: $(head -c 300 "$SINK_OUT")" >&2
    stop_pid "$SINK_PID"; SINK_PID=''
    return 1
}

start_sampler() { # mode pid dir
    rm -f "$3/pss.stop" "$3/pss.max"
    python3 "$HELPER" pss "$1" "$2" "$3/pss.max" "$3/pss.stop" "$RUN_TIMEOUT" 0.2 &
    SAMPLER_PID=$!
}
stop_sampler() { # dir -> PSS_MIB
    local i
    touch "$1/pss.stop"
    for ((i = 0; i < 50; i++)); do
        kill -0 "$SAMPLER_PID" 2>/dev/null || break
        sleep 0.1
    done
    stop_pid "$SAMPLER_PID"; SAMPLER_PID=''
    PSS_MIB=$(awk '{ if ($1 > 0) printf "%.1f", $1 / 1024; else print "?" }' "$1/pss.max" 2>/dev/null)
    [ -n "$PSS_MIB" ] || PSS_MIB='?'
    PSS_PROCS=$(awk '{ print $2 }' "$1/pss.max" 2>/dev/null)
}

# Send msgs and wait for the sink to count them: port size msgs sessions dir
#   -> ACC (accepted/s), DEL (delivered/s), SUNK (messages the sink counted),
#      BUSY (% of the machine's CPU in use until delivered), CPU_US (the
#      machine's CPU microseconds per message, every process included)
drive() {
    local port=$1 size=$2 msgs=$3 sessions=$4 dir=$5 t_acc t_del rc res
    python3 "$HELPER" drive "$SMTP_SOURCE" "$port" "$size" "$msgs" "$sessions" \
        "$SINK_OUT" "$dir/source.log" "$RUN_TIMEOUT" >"$dir/drive.out" 2>&1 &
    DRIVE_PID=$!
    wait $DRIVE_PID
    DRIVE_PID=''
    read -r t_acc t_del SUNK rc BUSY CPU_US <"$dir/drive.out" || { t_acc=- t_del=- SUNK='?' rc='?'; }
    BUSY=${BUSY:--} CPU_US=${CPU_US:--}
    res=$(head -c 300 "$dir/drive.out" | tr '\n' ' ')
    if [ "$rc" != 0 ]; then
        echo "WARNING: smtp-source exited $rc ($dir): $(head -c 300 "$dir/source.log" | tr '\n' ' ') $res" >&2
        FAILED=1
    fi
    if [ "$t_del" = - ]; then
        echo "WARNING: the sink counted $SUNK of $msgs messages within ${RUN_TIMEOUT}s ($dir)" >&2
        FAILED=1
    fi
    ACC=$(awk -v n="$msgs" -v t="$t_acc" 'BEGIN { if (t + 0 > 0) printf "%.0f", n / t; else print "FAIL" }')
    DEL=$(awk -v n="$msgs" -v t="$t_del" 'BEGIN { if (t + 0 > 0) printf "%.0f", n / t; else print "FAIL" }')
}

# ---------------------------------------------------------------- ceiling
# smtp-source straight to smtp-sink: what loopback and the two Postfix
# tools do without a relay between them (delivered/s = accepted/s).
ceiling_row() { # size msgs sessions -> ACC DEL PSS_MIB SUNK NOTE
    local size=$1 msgs=$2 sessions=$3 dir
    ACC=FAIL DEL=FAIL PSS_MIB=- SUNK='?' NOTE='no relay'
    dir=$WORK/ceiling-$size-$sessions${RUN_TAG:-}
    mkdir -p "$dir"
    start_sink "$dir" || { FAILED=1; NOTE='sink down'; return; }
    drive "$SINK_PORT" "$size" "$msgs" "$sessions" "$dir"
    stop_pid "$SINK_PID"; SINK_PID=''
    [ "$SUNK" = "$msgs" ] || { NOTE="the sink counted $SUNK of $msgs"; FAILED=1; }
}

# ---------------------------------------------------------------- sluice
write_sluice_config() { # dir port sinkport
    local dns="127.0.0.1:1"
    [ -n "$DNS_PORT" ] && dns="127.0.0.1:$DNS_PORT"
    {
        [ -n "$WITH_ANON$WITH_VERIFY" ] && echo 'rules = "rules.toml"'
        sluice_config_head relay.sh "$2" 1000
        sluice_relay_tail "$dns" "$3"
    } >"$1/sluice.toml"
    if [ -n "$WITH_MILTER" ]; then
        printf '\n[[milter]]\nname = "noop"\naddress = "%s"\non_failure = "tempfail"\n' \
            "$MILTER_ADDR" >>"$1/sluice.toml"
    fi
    if [ -n "$WITH_SIGN" ]; then
        for k in $SIGN_KEYS; do
            printf '\n[[dkim]]\ndomain = "bench.test"\nselector = "%s"\nkey = "%s"\n' \
                "$k" "$WORK/dkim-$k.pem" >>"$1/sluice.toml"
        done
    fi
    if [ -n "$WITH_ANON$WITH_VERIFY" ]; then
        # The client is anonymous (no inbound connector), the recipient's
        # domain accepted: mail from outside for the organisation, handed
        # to the sink as the inside smart host.
        printf '[domains]\naccepted = ["bench.test"]\n\n[[connector]]\nname = "inside"\naddress_spaces = ["bench.test"]\nsmart_hosts = ["sink.bench"]\n' >"$1/rules.toml"
        [ -n "$WITH_VERIFY" ] && printf '\n[authentication]\n' >>"$1/rules.toml"
    fi
}

# The sender-authentication rows (--sender-auth): signing on originating
# mail against the default, verification on anonymous mail against the
# same rules without [authentication].
sluice_sign_row() { WITH_SIGN=1 sluice_row "$@"; }
sluice_anon_row() { WITH_ANON=1 sluice_row "$@"; }
sluice_verify_row() { WITH_VERIFY=1 sluice_row "$@"; }
chain_on_row() { chain_row "$@" on; }

# Starts `sluice run` in dir on port and waits for it: -> CHAIN_PID (empty
# when it did not come up).
start_chain_sluice() { # dir port
    "$SLUICE_BIN" run --config "$1/sluice.toml" >"$1/stdout.log" 2>"$1/stderr.log" &
    CHAIN_PID=$!
    CHAIN_PIDS="$CHAIN_PIDS $CHAIN_PID"
    local i
    for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
        grep -q 'listening on' "$1/stderr.log" 2>/dev/null && wait_port "$2" && return 0
        kill -0 "$CHAIN_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "WARNING: sluice did not come up on $2: $(tail -c 500 "$1/stderr.log" | tr '\n' ' ')" >&2
    CHAIN_PID=''
    return 1
}

# Two sluices in a row, smtp-source -> A -> B -> smtp-sink: A takes the
# mail from an originating client (and signs it with SIGN_KEYS when on), B
# takes it from A as anonymous mail for an accepted domain (and verifies
# it when on), so B checks real signatures. size msgs sessions on|off.
chain_row() {
    local size=$1 msgs=$2 sessions=$3 on=${4:-off} dir pa pb p
    ACC=FAIL DEL=FAIL PSS_MIB='?' SUNK='?' NOTE='' CHAIN_PIDS=''
    dir=$WORK/chain-$size-$sessions-$on${RUN_TAG:-}
    mkdir -p "$dir/a" "$dir/b"
    start_sink "$dir" || { FAILED=1; NOTE='sink down'; return; }
    pa=$(free_port) pb=$(free_port)
    if [ "$on" = on ]; then
        WITH_VERIFY=1 write_sluice_config "$dir/b" "$pb" "$SINK_PORT"
        WITH_SIGN=1 write_sluice_config "$dir/a" "$pa" "$pb"
    else
        WITH_ANON=1 write_sluice_config "$dir/b" "$pb" "$SINK_PORT"
        WITH_SIGN=$CHAIN_SIGNS write_sluice_config "$dir/a" "$pa" "$pb"
    fi
    if start_chain_sluice "$dir/b" "$pb" && start_chain_sluice "$dir/a" "$pa"; then
        drive "$pa" "$size" "$msgs" "$sessions" "$dir"
    else
        FAILED=1 NOTE='sluice down'
    fi
    for p in $CHAIN_PIDS; do stop_pid "$p"; done
    CHAIN_PIDS=''
    stop_pid "$SINK_PID"; SINK_PID=''
    log_note sluice "$dir/b/stderr.log" "$msgs" "$size" "$sessions" "" \
        ' SEND q?id=' ' DEFER q?id=' ' BOUNCE q?id=' 'error|panic|warn'
    [ "$on" = on ] && NOTE="$NOTE; $(grep -c 'dkim=pass' "$dir/b/stderr.log") with dkim=pass at B"
}

# dnsmasq on a free loopback port, authoritative for bench.test, with the
# records the checks ask for (TTL 300 s, so the resolver's cache answers
# after the first message): SPF passes for 127.0.0.1, DMARC p=none, and
# the two DKIM keys.
start_auth_dns() { # -> DNS_PID, DNS_PORT
    local rsa ed
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/dkim-rsa.pem" 2>/dev/null
    openssl genpkey -algorithm ED25519 -out "$WORK/dkim-ed.pem" 2>/dev/null
    rsa=$(openssl pkey -in "$WORK/dkim-rsa.pem" -pubout -outform DER 2>/dev/null | base64 -w0)
    ed=$(openssl pkey -in "$WORK/dkim-ed.pem" -pubout -outform DER 2>/dev/null | tail -c 32 | base64 -w0)
    DNS_PORT=$(free_port)
    "$DNSMASQ" --no-daemon --conf-file=/dev/null --port="$DNS_PORT" --listen-address=127.0.0.1 \
        --bind-interfaces --no-resolv --no-hosts --local=/bench.test/ --local-ttl=300 \
        --txt-record=bench.test,"v=spf1 ip4:127.0.0.0/8 -all" \
        --txt-record=_dmarc.bench.test,"v=DMARC1; p=none" \
        --txt-record=rsa._domainkey.bench.test,"v=DKIM1; k=rsa; p=${rsa:0:200}","${rsa:200}" \
        --txt-record=ed._domainkey.bench.test,"v=DKIM1; k=ed25519; p=$ed" \
        >"$WORK/dnsmasq.log" 2>&1 &
    DNS_PID=$!
    sleep 0.3
}

# The same rows with the no-op milter.
sluice_milter_row() { WITH_MILTER=1 sluice_row "$@"; }
postfix_milter_row() { WITH_MILTER=1 postfix_row "$@"; }

start_milter() { # -> MILTER_PID, MILTER_ADDR: bench/noop_milter.py on a free port
    local port
    port=$(free_port)
    /usr/bin/python3 "$BENCH_DIR/noop_milter.py" "inet:$port@127.0.0.1" >"$WORK/milter.log" 2>&1 &
    MILTER_PID=$!
    MILTER_ADDR=inet:127.0.0.1:$port
    wait_port "$port" || { echo "the no-op milter did not listen: $(head -c 300 "$WORK/milter.log")" >&2; exit 2; }
}

# size msgs sessions [record|trace] -> ACC DEL PSS_MIB SUNK NOTE
sluice_row() {
    local size=$1 msgs=$2 sessions=$3 prof=${4:-} dir port i n
    ACC=FAIL DEL=FAIL PSS_MIB='?' SUNK='?' NOTE=''
    dir=$WORK/sluice-$size-$sessions${prof:+-$prof}${WITH_MILTER:+-milter}${WITH_SIGN:+-sign}${WITH_ANON:+-anon}${WITH_VERIFY:+-verify}${RUN_TAG:-}
    mkdir -p "$dir"
    start_sink "$dir" || { FAILED=1; NOTE='sink down'; return; }
    port=$(free_port)
    write_sluice_config "$dir" "$port" "$SINK_PORT"
    local bin=$SLUICE_BIN
    [ -n "$prof" ] && bin=$SLUICE_PERF_BIN
    "$bin" run --config "$dir/sluice.toml" >"$dir/stdout.log" 2>"$dir/stderr.log" &
    SLUICE_PID=$!
    for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
        grep -q 'listening on' "$dir/stderr.log" 2>/dev/null && break
        kill -0 "$SLUICE_PID" 2>/dev/null || break
        sleep 0.1
    done
    if ! grep -q 'listening on' "$dir/stderr.log" || ! wait_port "$port"; then
        echo "WARNING: sluice did not come up on $port: $(tail -c 500 "$dir/stderr.log" | tr '\n' ' ')" >&2
        FAILED=1 NOTE='sluice down'
        stop_pid "$SLUICE_PID"; SLUICE_PID=''
        stop_pid "$SINK_PID"; SINK_PID=''
        return
    fi
    case $prof in
        record)
            "$PERF" record -a -g -F 999 -o "$dir/perf.data" >"$dir/perf.log" 2>&1 &
            PERF_PID=$! ; sleep 1 ;;
        trace)
            "$PERF" trace -s -p "$SLUICE_PID" -o "$dir/trace.txt" >"$dir/perf.log" 2>&1 &
            PERF_PID=$! ; sleep 1 ;;
    esac
    start_sampler pid "$SLUICE_PID" "$dir"
    local cpu0
    cpu0=$(proc_cpu "$SLUICE_PID")
    drive "$port" "$size" "$msgs" "$sessions" "$dir"
    # Not for a run whose messages did not all arrive (its delivered/s is FAIL).
    SELF_US=$(awk -v a="$cpu0" -v b="$(proc_cpu "$SLUICE_PID")" -v m="$msgs" -v hz="$CLK_TCK" -v d="$DEL" \
        'BEGIN { if (a == "" || b == "" || d == "FAIL") print "-"; else printf "%.0f", (b - a) * 1e6 / hz / m }')
    stop_sampler "$dir"
    if [ -n "$PERF_PID" ]; then
        stop_pid "$PERF_PID" INT; PERF_PID=''
    fi
    LAST_SLUICE_DIR=$dir LAST_SLUICE_PID=$SLUICE_PID
    stop_pid "$SLUICE_PID"
    local rc=$?
    SLUICE_PID=''
    [ $rc -ne 0 ] && echo "WARNING: sluice exited $rc after SIGTERM ($dir)" >&2
    stop_pid "$SINK_PID"; SINK_PID=''
    # What the log says: one SEND per delivered recipient, nothing else expected.
    log_note sluice "$dir/stderr.log" "$msgs" "$size" "$sessions" "" \
        ' SEND q?id=' ' DEFER q?id=' ' BOUNCE q?id=' 'error|panic|warn'
}

# ", sluice's process N us CPU/msg" for a median that exists.
self_note() { [ "$1" = FAIL ] || [ -z "$1" ] || printf ", sluice's process %s us CPU/msg" "$1"; }

CLK_TCK=$(getconf CLK_TCK)

# What a relay's log says of a row: one sent line per message, nothing
# else expected (patterns: extended, case-insensitive). Sets NOTE; warns
# otherwise.
# who log msgs size sessions extra sent_re defer_re bounce_re err_re
log_note() {
    local who=$1 log=$2 msgs=$3 size=$4 sessions=$5 extra=$6 sent defer bounce errs
    sent=$(grep -ciE "$7" "$log")
    defer=$(grep -ciE "$8" "$log")
    bounce=$(grep -ciE "$9" "$log")
    errs=$(grep -ciE "${10}" "$log")
    NOTE="log: $sent sent$extra"
    [ "$defer" -gt 0 ] && NOTE+=", $defer deferred"
    [ "$bounce" -gt 0 ] && NOTE+=", $bounce bounced"
    [ "$errs" -gt 0 ] && NOTE+=", $errs error/warning lines"
    if [ "$sent" != "$msgs" ] || [ "$defer" -gt 0 ] || [ "$bounce" -gt 0 ] || [ "$errs" -gt 0 ]; then
        echo "WARNING: $who, size $size, $sessions sessions: $NOTE, e.g.: $(grep -iE "$8|$9|${10}" "$log" | head -3 | tr '\n' ' ')" >&2
    fi
}

# ---------------------------------------------------------------- Postfix
# dir port sinkport -> a private instance: config in dir/etc, queue in
# dir/queue, data in dir/data, log in dir/maillog
pf_setup() {
    local dir=$1 port=$2 sinkport=$3 conf=$1/etc f
    mkdir -p "$conf" "$dir/queue" "$dir/data"
    # Debian's main.cf; a package installed with "No configuration" has none
    # in /etc/postfix, only the template the installer would have used.
    if [ -f /etc/postfix/main.cf ]; then
        cp /etc/postfix/main.cf "$conf/"
    else
        cp /usr/share/postfix/main.cf.debian "$conf/main.cf"
    fi
    cp /etc/postfix/master.cf "$conf/"
    for f in dynamicmaps.cf dynamicmaps.cf.d; do
        [ -e "/etc/postfix/$f" ] && cp -r "/etc/postfix/$f" "$conf/"
    done
    chown postfix: "$dir/data"
    "$POSTCONF" -c "$conf" -e \
        "queue_directory = $dir/queue" \
        "data_directory = $dir/data" \
        "inet_interfaces = 127.0.0.1" \
        "inet_protocols = ipv4" \
        "mynetworks = 127.0.0.0/8" \
        "relayhost = [127.0.0.1]:$sinkport" \
        "smtp_tls_security_level = none" \
        "smtpd_tls_security_level = none" \
        "smtp_tls_session_cache_database =" \
        "myhostname = bench.local" \
        "mydestination =" \
        "alias_maps =" \
        "alias_database =" \
        "compatibility_level = 3.6" \
        "maillog_file_prefixes = $dir" \
        "maillog_file = $dir/maillog" || return 1
    if [ -n "$WITH_MILTER" ]; then
        "$POSTCONF" -c "$conf" -e "smtpd_milters = $MILTER_ADDR" "milter_default_action = tempfail" || return 1
    fi
    # smtpd on the bench port only (no port 25), nothing chrooted (the
    # private queue has no chroot tree).
    "$POSTCONF" -c "$conf" -MX smtp/inet || return 1
    "$POSTCONF" -c "$conf" -M "127.0.0.1:$port/inet = 127.0.0.1:$port inet n - n - - smtpd" || return 1
    "$POSTCONF" -c "$conf" -F '*/*/chroot = n' || return 1
}

postfix_row() { # size msgs sessions -> ACC DEL PSS_MIB SUNK NOTE
    local size=$1 msgs=$2 sessions=$3 dir port i
    ACC=FAIL DEL=FAIL PSS_MIB='?' SUNK='?' NOTE=''
    dir=$WORK/postfix-$size-$sessions${WITH_MILTER:+-milter}${RUN_TAG:-}
    mkdir -p "$dir"
    start_sink "$dir" || { FAILED=1; NOTE='sink down'; return; }
    port=$(free_port)
    if ! pf_setup "$dir" "$port" "$SINK_PORT" >"$dir/setup.log" 2>&1; then
        echo "WARNING: Postfix config failed: $(head -c 500 "$dir/setup.log" | tr '\n' ' ')" >&2
        FAILED=1 NOTE='config failed'
        stop_pid "$SINK_PID"; SINK_PID=''
        return
    fi
    PF_CONF=$dir/etc
    pf_cmd "$POSTFIX" -c "$PF_CONF" check >>"$dir/setup.log" 2>&1
    pf_cmd "$POSTFIX" -c "$PF_CONF" start >>"$dir/setup.log" 2>&1
    PF_MASTER=$(tr -dc 0-9 <"$dir/queue/pid/master.pid" 2>/dev/null)
    if [ -z "$PF_MASTER" ] || ! kill -0 "$PF_MASTER" 2>/dev/null || ! wait_port "$port"; then
        echo "WARNING: Postfix did not come up on $port: $(tail -c 600 "$dir/setup.log" | tr '\n' ' ') $(tail -c 400 "$dir/maillog" 2>/dev/null | tr '\n' ' ')" >&2
        FAILED=1 NOTE='postfix down'
        pf_stop
        stop_pid "$SINK_PID"; SINK_PID=''
        return
    fi
    start_sampler tree "$PF_MASTER" "$dir"
    drive "$port" "$size" "$msgs" "$sessions" "$dir"
    stop_sampler "$dir"
    pf_stop
    stop_pid "$SINK_PID"; SINK_PID=''
    log_note postfix "$dir/maillog" "$msgs" "$size" "$sessions" ", $PSS_PROCS processes at peak" \
        'status=sent' 'status=deferred' 'status=bounced' 'warning:|error:|fatal:|panic:'
}

# ---------------------------------------------------------------- Exim, OpenSMTPD
# Debian's packages of these conflict with postfix (and with each other),
# so they are unpacked, not installed: PEERS_DIR/<package>/ holds the
# .deb (apt-get download) and its files (dpkg-deb -x); dpkg never hears
# of them. Libraries they need that are missing (ldd) are installed with
# apt-get from the package's own lib* dependencies.
PEERS_DIR=${PEERS_DIR:-$OUT_DIR/peers}
EXIM_PKG=exim4-daemon-light OPENSMTPD_PKG=opensmtpd
EXIM=$PEERS_DIR/$EXIM_PKG/root/usr/sbin/exim4
SMTPD=$PEERS_DIR/$OPENSMTPD_PKG/root/usr/sbin/smtpd

deb_of() { # package -> the .deb apt-get download left in PEERS_DIR/<package>/
    local f
    for f in "$PEERS_DIR/$1"/*.deb; do
        [ -e "$f" ] && { echo "$f"; return 0; }
    done
    return 1
}

peer_unpack() { # package binary-in-it -> 0 when the binary is there and its libraries resolve
    local pkg=$1 bin=$2 dir=$PEERS_DIR/$1 deb missing deps
    if [ ! -x "$bin" ]; then
        echo "# unpacking $pkg into $dir (apt-get download, dpkg-deb -x; not registered with dpkg)" >&2
        mkdir -p "$dir" && rm -rf "$dir/root" "$dir"/*.deb
        # apt-get download writes into the current directory.
        (cd "$dir" && apt-get download "$pkg") >"$dir/download.log" 2>&1 ||
            { echo "apt-get download $pkg failed: $(tail -c 300 "$dir/download.log")" >&2; return 1; }
        deb=$(deb_of "$pkg")
        dpkg-deb -x "$deb" "$dir/root" || { echo "dpkg-deb -x $deb failed" >&2; return 1; }
    fi
    [ -x "$bin" ] || { echo "no $bin in $pkg" >&2; return 1; }
    missing=$(ldd "$bin" 2>&1 | awk '/not found/ { print $1 }')
    if [ -n "$missing" ]; then
        deb=$(deb_of "$pkg")
        # The package's library dependencies, without version constraints
        # or alternatives.
        deps=$(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed 's/|.*//; s/(.*//; s/ //g' | grep '^lib')
        echo "# $bin misses $(echo "$missing" | tr '\n' ' '); apt-get install $(echo "$deps" | tr '\n' ' ')" >&2
        # shellcheck disable=SC2086 # one word per package
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $deps >"$dir/libs.log" 2>&1
        missing=$(ldd "$bin" 2>&1 | awk '/not found/ { print $1 }')
        [ -z "$missing" ] || { echo "$bin: still missing $missing" >&2; return 1; }
    fi
}

# The users the packages' postinst scripts create (the binaries look them
# up by these compiled-in names).
peer_users() { # exim|opensmtpd
    local n
    case $1 in
        exim)
            getent passwd Debian-exim >/dev/null ||
                adduser --system --group --quiet --home /var/spool/exim4 --no-create-home \
                    --disabled-login --force-badname Debian-exim ;;
        opensmtpd)
            for n in opensmtpd opensmtpq; do
                getent group "$n" >/dev/null || addgroup --system --quiet "$n"
                getent passwd "$n" >/dev/null ||
                    adduser --system --quiet --home /var/lib/opensmtpd/empty --no-create-home \
                        --disabled-password --gecos "OpenSMTPD" --ingroup "$n" "$n"
            done ;;
    esac
}

# The host's count of connections its listeners' full accept queues
# dropped (TcpExt ListenOverflows; host-wide, so other loopback traffic
# during a row adds to it).
listen_overflows() {
    awk '$1 == "TcpExt:" { if (!n) { for (i = 2; i <= NF; i++) k[i] = $i; n = 1 }
                           else for (i = 2; i <= NF; i++) if (k[i] == "ListenOverflows") print $i }' /proc/net/netstat
}

# A config from bench/peers/ with its @NAME@ placeholders filled in.
peer_config() { # template out exim dir port sinkport
    sed -e "s|@EXIM@|$3|g; s|@DIR@|$4|g; s|@PORT@|$5|g; s|@SINKPORT@|$6|g" "$1" >"$2"
}

exim_row() { # size msgs sessions -> ACC DEL PSS_MIB SUNK NOTE
    local size=$1 msgs=$2 sessions=$3 dir port
    ACC=FAIL DEL=FAIL PSS_MIB='?' SUNK='?' NOTE=''
    dir=$WORK/exim-$size-$sessions${RUN_TAG:-}
    mkdir -p "$dir/spool" "$dir/log"
    chown Debian-exim: "$dir/spool" "$dir/log"
    start_sink "$dir" || { FAILED=1; NOTE='sink down'; return; }
    port=$(free_port)
    peer_config "$BENCH_DIR/peers/exim.conf" "$dir/exim.conf" "$EXIM" "$dir" "$port" "$SINK_PORT"
    # -bdf: the daemon in the foreground (its pid is ours to stop);
    # -odf: each message delivered at once by a process of its own.
    "$EXIM" -C "$dir/exim.conf" -bdf -odf >"$dir/stdout.log" 2>&1 &
    EXIM_PID=$!
    if ! wait_port "$port"; then
        echo "WARNING: Exim did not come up on $port: $(tail -c 500 "$dir/stdout.log" "$dir/log/paniclog" 2>/dev/null | tr '\n' ' ')" >&2
        FAILED=1 NOTE='exim down'
        stop_pid "$EXIM_PID"; EXIM_PID=''
        stop_pid "$SINK_PID"; SINK_PID=''
        return
    fi
    start_sampler tree "$EXIM_PID" "$dir"
    drive "$port" "$size" "$msgs" "$sessions" "$dir"
    stop_sampler "$dir"
    stop_pid "$EXIM_PID"; EXIM_PID=''
    stop_pid "$SINK_PID"; SINK_PID=''
    # mainlog: "=>" a delivery, "==" a deferral, "**" a bounce; the panic
    # log is counted with the errors.
    cat "$dir/log/paniclog" >>"$dir/log/mainlog" 2>/dev/null
    log_note exim "$dir/log/mainlog" "$msgs" "$size" "$sessions" ", $PSS_PROCS processes at peak" \
        ' => ' ' == ' ' \*\* ' 'panic|error|lost privilege'
}

opensmtpd_row() { # size msgs sessions -> ACC DEL PSS_MIB SUNK NOTE
    local size=$1 msgs=$2 sessions=$3 dir port drops
    ACC=FAIL DEL=FAIL PSS_MIB='?' SUNK='?' NOTE=''
    dir=$WORK/opensmtpd-$size-$sessions${RUN_TAG:-}
    mkdir -p "$dir/queue" "$dir/chroot"
    chmod 711 "$dir/queue"   # smtpd checks its queue root: root, 0711
    echo 'nameserver 127.0.0.1' >"$dir/resolv.conf"
    start_sink "$dir" || { FAILED=1; NOTE='sink down'; return; }
    port=$(free_port)
    peer_config "$BENCH_DIR/peers/smtpd.conf" "$dir/smtpd.conf" '' "$dir" "$port" "$SINK_PORT"
    # In a private mount namespace (propagation private: nothing leaks
    # out): tmpfs over /run (its control socket), /var/spool and /var/lib
    # (so the compiled-in /var/spool/smtpd and chroot
    # /var/lib/opensmtpd/empty can be made there whether or not they
    # exist on the host), the queue bound from the run's dir on the real
    # disk, and a resolv.conf that names no server off the box. Then
    # `exec smtpd -d` (foreground, log on stderr): SMTPD_PID is smtpd's.
    # shellcheck disable=SC2016 # $1 and $2 are the inner shell's arguments
    unshare -m --propagation private sh -ec '
        mount -t tmpfs -o mode=755 bench-run /run
        mount -t tmpfs -o mode=755 bench-spool /var/spool
        mkdir /var/spool/smtpd
        mount --bind "$1/queue" /var/spool/smtpd
        mount -t tmpfs -o mode=755 bench-lib /var/lib
        mkdir -p /var/lib/opensmtpd/empty
        mount --bind "$1/resolv.conf" /etc/resolv.conf
        exec "$2" -d -f "$1/smtpd.conf"' sh "$dir" "$SMTPD" >"$dir/smtpd.log" 2>&1 &
    SMTPD_PID=$!
    if ! wait_port "$port"; then
        echo "WARNING: OpenSMTPD did not come up on $port: $(tail -c 500 "$dir/smtpd.log" | tr '\n' ' ')" >&2
        FAILED=1 NOTE='opensmtpd down'
        stop_pid "$SMTPD_PID"; SMTPD_PID=''
        stop_pid "$SINK_PID"; SINK_PID=''
        return
    fi
    start_sampler tree "$SMTPD_PID" "$dir"
    drops=$(listen_overflows)
    drive "$port" "$size" "$msgs" "$sessions" "$dir"
    drops=$(($(listen_overflows) - drops))
    stop_sampler "$dir"
    stop_pid "$SMTPD_PID"; SMTPD_PID=''
    stop_pid "$SINK_PID"; SINK_PID=''
    # "purge_task: opendir" is a start-up race of its own (the purge
    # directory is made after the task first looks), not an error; nor is
    # a client's reset ("smtp disconnected reason=io-error"), counted
    # apart.
    log_note opensmtpd "$dir/smtpd.log" "$msgs" "$size" "$sessions" ", $PSS_PROCS processes at peak" \
        'mta delivery .*result="Ok"' 'result="TempFail"' 'result="PermFail"' 'fatal|warn: [^p]|mta error'
    local resets
    resets=$(grep -c 'smtp disconnected reason="io-error' "$dir/smtpd.log")
    [ "$resets" -gt 0 ] && NOTE+=", $resets client sessions reset"
    NOTE+=", $drops SYNs dropped (listen backlog 5)"
    NOTE="NO FSYNC (queue not synced); $NOTE"
}

# ---------------------------------------------------------------- run
# Exim and OpenSMTPD unpacked (first run) and their users made.
for relay in "${RELAYS[@]}"; do
    case $relay in
        exim) { peer_unpack "$EXIM_PKG" "$EXIM" && peer_users exim; } || exit 2 ;;
        opensmtpd)
            command -v unshare >/dev/null || { echo "missing unshare (util-linux)" >&2; exit 2; }
            { peer_unpack "$OPENSMTPD_PKG" "$SMTPD" && peer_users opensmtpd; } || exit 2 ;;
    esac
done
{
    echo "# end-to-end relay: smtp-source -> relay -> smtp-sink, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "# host $(hostname), $(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
    for relay in "${RELAYS[@]}"; do
        case $relay in
            sluice) echo "# sluice: $SLUICE_BIN (built $(stat -c '%y' "$SLUICE_BIN" | cut -d. -f1)); repository now at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$([ -n "$(git -C "$ROOT" status --porcelain -- src 2>/dev/null)" ] && echo ' + uncommitted changes in src/')" ;;
            postfix) echo "# postfix: $("$POSTCONF" -dh mail_version 2>/dev/null) (Debian package), private instance, default tuning" ;;
            exim) echo "# exim: $("$EXIM" -C /dev/null -bV 2>/dev/null | awk 'NR == 1 { print $3 }') ($(basename "$(deb_of "$EXIM_PKG")"), unpacked), private instance, bench/peers/exim.conf; fsyncs its queue (4 per message)" ;;
            opensmtpd) echo "# opensmtpd: $("$SMTPD" -h 2>&1 | awk '/^version/ { print $3 }') ($(basename "$(deb_of "$OPENSMTPD_PKG")"), unpacked), private instance in its own mount namespace, bench/peers/smtpd.conf; NO FSYNC: its queue is never synced, it does not promise durability" ;;
        esac
    done
    echo "# queues: $WORK ($FSTYPE); one client connection per message$([ $QUICK = 1 ] && echo '; --quick')"
} | tee "$RESULT"

[ $MILTER = 1 ] && start_milter
[ $SENDER_AUTH = 1 ] && start_auth_dns

# REPEAT runs of every row; odd runs take the relays in order, even runs
# in reverse, so that no relay always runs first on a cold machine (or
# last, after the others warmed the disk). The ratios use the medians.
REPEAT=${REPEAT:-1}
declare -A R_ACC R_DEL R_PSS L_ACC L_DEL L_PSS R_CPU R_BUSY L_CPU L_BUSY R_SELF L_SELF
row_line() { # relay size sessions msgs acc del pss note
    printf '%-14s %5s %8s %6s %11s %12s %14s  %s\n' "$1" "$(($2 / 1024))K" "$3" "$4" "$5" "$6" "$7" "$8"
}
HEADER=$(printf '%-14s %5s %8s %6s %11s %12s %14s  %s' relay size sessions msgs 'accepted/s' 'delivered/s' 'peak PSS MiB' notes)
echo "$HEADER" | tee -a "$RESULT"
for size in "${SIZES[@]}"; do
    msgs=$(msgs_for "$size")
    for sessions in "${SESSIONS[@]}"; do
        for ((rep = 1; rep <= REPEAT; rep++)); do
            order=("${RELAYS[@]}")
            if [ $((rep % 2)) = 0 ]; then
                order=()
                for ((i = ${#RELAYS[@]} - 1; i >= 0; i--)); do order+=("${RELAYS[$i]}"); done
            fi
            # A fresh directory (queue, logs) for every run of a row.
            RUN_TAG=-run$rep
            for relay in "${order[@]}"; do
                BUSY=- CPU_US=- SELF_US=-
                # Rows run in this shell (not in $(...)) so the EXIT trap knows their pids.
                "${relay}_row" "$size" "$msgs" "$sessions"
                key=$relay-$size-$sessions
                L_ACC[$key]+=" $ACC" L_DEL[$key]+=" $DEL" L_PSS[$key]+=" $PSS_MIB"
                L_CPU[$key]+=" $CPU_US" L_BUSY[$key]+=" $BUSY" L_SELF[$key]+=" $SELF_US"
                R_ACC[$key]=$ACC R_DEL[$key]=$DEL R_PSS[$key]=$PSS_MIB R_CPU[$key]=$CPU_US R_BUSY[$key]=$BUSY
                [ "$SELF_US" != - ] && NOTE="sluice's process ${SELF_US} us CPU/msg${NOTE:+; $NOTE}"
                NOTE="machine ${BUSY}% busy, ${CPU_US} us CPU/msg${NOTE:+; $NOTE}"
                [ "$REPEAT" -gt 1 ] && NOTE="run $rep/$REPEAT; $NOTE"
                row_line "$relay" "$size" "$sessions" "$msgs" "$ACC" "$DEL" "$PSS_MIB" "$NOTE" | tee -a "$RESULT"
            done
        done
    done
done
if [ "$REPEAT" -gt 1 ]; then
    # The medians, in this shell (a pipeline's assignments would be lost).
    for size in "${SIZES[@]}"; do
        for sessions in "${SESSIONS[@]}"; do
            for relay in "${RELAYS[@]}"; do
                key=$relay-$size-$sessions
                R_ACC[$key]=$(echo "${L_ACC[$key]}" | median)
                R_DEL[$key]=$(echo "${L_DEL[$key]}" | median)
                R_PSS[$key]=$(echo "${L_PSS[$key]}" | tr -d '?-' | median)
                R_CPU[$key]=$(echo "${L_CPU[$key]}" | tr -d '?-' | median)
                R_BUSY[$key]=$(echo "${L_BUSY[$key]}" | tr -d '?-' | median)
                R_SELF[$key]=$(echo "${L_SELF[$key]}" | tr -d '?-' | median)
                [ "$relay" = ceiling ] && R_PSS[$key]=-
            done
        done
    done
    {
        echo
        echo "# medians of $REPEAT runs (alternating order); the tables below use them"
        echo "$HEADER"
        for size in "${SIZES[@]}"; do
            for sessions in "${SESSIONS[@]}"; do
                for relay in "${RELAYS[@]}"; do
                    key=$relay-$size-$sessions
                    row_line "$relay" "$size" "$sessions" "$(msgs_for "$size")" "${R_ACC[$key]}" "${R_DEL[$key]}" \
                        "${R_PSS[$key]}" "delivered/s:${L_DEL[$key]}; machine ${R_BUSY[$key]}% busy, ${R_CPU[$key]} us CPU/msg$(self_note "${R_SELF[$key]}")"
                done
            done
        done
    } | tee -a "$RESULT"
fi
if [[ " ${RELAYS[*]} " == *" ceiling "* ]] && [[ " ${RELAYS[*]} " == *" sluice "* ]]; then
    {
        echo
        echo "# sluice delivered/s / loopback ceiling (target at 4K, 10 sessions: >= 0.50)"
        for size in "${SIZES[@]}"; do
            for sessions in "${SESSIONS[@]}"; do
                awk -v sz="$((size / 1024))K" -v ss="$sessions" -v s="${R_DEL[sluice-$size-$sessions]}" \
                    -v c="${R_DEL[ceiling-$size-$sessions]}" 'BEGIN {
                    printf "%5s %8s %8s\n", sz, ss, (s + 0 > 0 && c + 0 > 0) ? sprintf("%.2f", s / c) : "-" }'
            done
        done
    } | tee -a "$RESULT"
fi

# CPU per message: the whole machine's CPU time from the start until the
# sink had every message, over the messages. The ceiling row is what
# smtp-source and smtp-sink cost alone, so a relay's own cost is its row's
# figure minus the ceiling's (approximately: the tools work the same with a
# relay between them). A row whose machine is near 100 % busy is bound by
# CPU, and there the relays' own costs set the throughput ratio.
if [[ " ${RELAYS[*]} " == *" ceiling "* ]] && [ ${#RELAYS[@]} -gt 1 ]; then
    {
        echo
        echo "# CPU per message (us, whole machine) and the relay's own (minus the ceiling's); machine busy %"
        printf '%5s %8s %-14s %10s %10s %6s\n' size sessions relay machine own busy
        for size in "${SIZES[@]}"; do
            for sessions in "${SESSIONS[@]}"; do
                c=${R_CPU[ceiling-$size-$sessions]:--}
                for relay in "${RELAYS[@]}"; do
                    key=$relay-$size-$sessions
                    awk -v sz="$((size / 1024))K" -v ss="$sessions" -v r="$relay" -v m="${R_CPU[$key]:--}" \
                        -v c="$c" -v b="${R_BUSY[$key]:--}" 'BEGIN {
                        own = (r != "ceiling" && m + 0 > 0 && c + 0 > 0) ? sprintf("%.0f", m - c) : "-"
                        printf "%5s %8s %-14s %10s %10s %6s\n", sz, ss, r, m, own, b }'
                done
            done
        done
    } | tee -a "$RESULT"
fi

# sluice / each peer, for every row: delivered/s and peak PSS. Targets
# (issue 16): delivered >= 6 x Postfix, >= 3 x Exim, > 1 x OpenSMTPD
# (which does not sync its queue); PSS <= 1/10 of Postfix's.
peer_target() { # peer -> minimum delivered ratio
    case $1 in postfix) echo 6 ;; exim) echo 3 ;; *) echo 1 ;; esac
}
if [ $MILTER = 0 ] && [ $SENDER_AUTH = 0 ] && [ -z "$ONLY" ] && [ ${#PEER_LIST[@]} -gt 0 ]; then
    {
        echo
        echo "# sluice / peer: delivered/s (target: >= 6 x postfix, >= 3 x exim, > 1 x opensmtpd) and peak PSS (target vs postfix: <= 0.10)"
        printf '%5s %8s %-22s %12s %10s %9s\n' size sessions peer delivered/s 'peak PSS' target
        for size in "${SIZES[@]}"; do
            for sessions in "${SESSIONS[@]}"; do
                for peer in "${PEER_LIST[@]}"; do
                    s=sluice-$size-$sessions p=$peer-$size-$sessions label=$peer
                    [ "$peer" = opensmtpd ] && label='opensmtpd (no fsync)'
                    awk -v sz="$((size / 1024))K" -v ss="$sessions" -v peer="$label" -v want="$(peer_target "$peer")" \
                        -v mem="$([ "$peer" = postfix ] && echo 1 || echo 0)" \
                        -v sd="${R_DEL[$s]}" -v pd="${R_DEL[$p]}" -v sm="${R_PSS[$s]}" -v pm="${R_PSS[$p]}" 'BEGIN {
                        dr = (sd + 0 > 0 && pd + 0 > 0) ? sprintf("%.2f", sd / pd) : "-"
                        mr = (sm + 0 > 0 && pm + 0 > 0) ? sprintf("%.2f", sm / pm) : "-"
                        ok = "-"
                        if (dr != "-") {
                            ok = (want > 1 ? dr + 0 >= want : dr + 0 > want) ? "met" : "not met"
                            if (mem && (mr == "-" || mr + 0 > 0.10)) ok = "not met"
                        }
                        printf "%5s %8s %-22s %12s %10s %9s\n", sz, ss, peer, dr, mr, ok }'
                done
            done
        done
    } | tee -a "$RESULT"
fi

if [ $MILTER = 1 ]; then
    {
        echo
        echo "# the no-op milter's cost (delivered/s with / without) and sluice_milter / postfix_milter"
        printf '%5s %8s %14s %15s %24s\n' size sessions sluice postfix 'sluice/postfix (milter)'
        for size in "${SIZES[@]}"; do
            for sessions in "${SESSIONS[@]}"; do
                k=$size-$sessions
                awk -v sz="$((size / 1024))K" -v ss="$sessions" \
                    -v s0="${R_DEL[sluice-$k]:-}" -v s1="${R_DEL[sluice_milter-$k]:-}" \
                    -v p0="${R_DEL[postfix-$k]:-}" -v p1="${R_DEL[postfix_milter-$k]:-}" 'BEGIN {
                    sr = (s0 + 0 > 0 && s1 + 0 > 0) ? sprintf("%.2f", s1 / s0) : "-"
                    pr = (p0 + 0 > 0 && p1 + 0 > 0) ? sprintf("%.2f", p1 / p0) : "-"
                    xr = (s1 + 0 > 0 && p1 + 0 > 0) ? sprintf("%.2f", s1 / p1) : "-"
                    printf "%5s %8s %14s %15s %24s\n", sz, ss, sr, pr, xr }'
            done
        done
    } | tee -a "$RESULT"
fi

if [ $SENDER_AUTH = 1 ]; then
    {
        echo
        echo "# sender authentication's cost: delivered/s with / without (target: >= 0.85)"
        printf '%5s %8s %22s %28s %20s\n' size sessions "sign ($SIGN_KEYS)" 'verify (unsigned mail)' 'chain sign+verify'
        for size in "${SIZES[@]}"; do
            for sessions in "${SESSIONS[@]}"; do
                k=$size-$sessions
                awk -v sz="$((size / 1024))K" -v ss="$sessions" \
                    -v o="${R_DEL[sluice-$k]:-}" -v s="${R_DEL[sluice_sign-$k]:-}" \
                    -v a="${R_DEL[sluice_anon-$k]:-}" -v v="${R_DEL[sluice_verify-$k]:-}" \
                    -v c0="${R_DEL[chain-$k]:-}" -v c1="${R_DEL[chain_on-$k]:-}" 'BEGIN {
                    sr = (o + 0 > 0 && s + 0 > 0) ? sprintf("%.2f", s / o) : "-"
                    vr = (a + 0 > 0 && v + 0 > 0) ? sprintf("%.2f", v / a) : "-"
                    cr = (c0 + 0 > 0 && c1 + 0 > 0) ? sprintf("%.2f", c1 / c0) : "-"
                    printf "%5s %8s %22s %28s %20s\n", sz, ss, sr, vr, cr }'
            done
        done
    } | tee -a "$RESULT"
fi

# ---------------------------------------------------------------- profile
if [ $NO_PERF = 0 ]; then
    PERF_OUT=$OUT_DIR/relay-$STAMP-perf
    msgs=$(msgs_for "$PROFILE_SIZE")
    {
        echo
        echo "# profile: sluice, $((PROFILE_SIZE / 1024))K, $PROFILE_SESSIONS sessions, $msgs messages; binary $SLUICE_PERF_BIN"
        [ "$SLUICE_PERF_BIN" = "$SLUICE_BIN" ] && echo "# (the release binary is stripped: user symbols will not resolve; see --help for SLUICE_PERF_BIN)"
    } | tee -a "$RESULT"
    sluice_row "$PROFILE_SIZE" "$msgs" "$PROFILE_SESSIONS" record
    d=$LAST_SLUICE_DIR
    printf '# under perf record -a -g: accepted/s %s, delivered/s %s (%s)\n' "$ACC" "$DEL" "$NOTE" | tee -a "$RESULT"
    if [ -s "$d/perf.data" ]; then
        "$PERF" report -i "$d/perf.data" --no-children --sort comm --stdio >"$PERF_OUT-comm.txt" 2>/dev/null
        "$PERF" report -i "$d/perf.data" --no-children --pid "$LAST_SLUICE_PID" --percentage relative --sort dso --stdio -g none >"$PERF_OUT-dso.txt" 2>/dev/null
        "$PERF" report -i "$d/perf.data" --no-children --pid "$LAST_SLUICE_PID" --percentage relative --sort sym --stdio -g none >"$PERF_OUT-sym.txt" 2>/dev/null
        "$PERF" report -i "$d/perf.data" --children --pid "$LAST_SLUICE_PID" --percentage relative --sort sym --stdio -g none >"$PERF_OUT-children.txt" 2>/dev/null
        {
            echo "# CPU samples by command, all CPUs (swapper = idle; sluice's threads: sluice, smtp-N, spool-writer):"
            grep -E '^ +[0-9]' "$PERF_OUT-comm.txt" | head -10
            echo "# sluice, all threads (pid $LAST_SLUICE_PID), by object (share of sluice's own samples from here on):"
            grep -E '^ +[0-9]' "$PERF_OUT-dso.txt" | head -6
            echo "# sluice top symbols, self ([k] kernel, [.] user):"
            grep -E '^ +[0-9]' "$PERF_OUT-sym.txt" | head -25
            echo "# sluice top symbols, with children:"
            grep -E '^ +[0-9]' "$PERF_OUT-children.txt" | head -20
        } | tee -a "$RESULT"
        [ "${KEEP:-0}" = 1 ] && cp "$d/perf.data" "$PERF_OUT.data"
    else
        echo "# perf record wrote nothing: $(head -c 300 "$d/perf.log" | tr '\n' ' ')" | tee -a "$RESULT"
    fi
    sluice_row "$PROFILE_SIZE" "$msgs" "$PROFILE_SESSIONS" trace
    d=$LAST_SLUICE_DIR
    printf '# under perf trace -s: accepted/s %s, delivered/s %s (%s)\n' "$ACC" "$DEL" "$NOTE" | tee -a "$RESULT"
    if [ -s "$d/trace.txt" ]; then
        cp "$d/trace.txt" "$PERF_OUT-syscalls.txt"
        {
            echo "# sluice syscalls, summed over its $(grep -cE '^ +[^ ]+ \([0-9]+\), [0-9]+ events' "$d/trace.txt") threads (time in the call, msec; off-CPU waits included):"
            printf '%-16s %9s %7s %11s %9s %9s\n' syscall calls errors total avg max
            awk '$2 ~ /^[0-9]+$/ && $3 ~ /^[0-9]+$/ && NF >= 8 {
                     c[$1] += $2; e[$1] += $3; t[$1] += $4; if ($7 > m[$1]) m[$1] = $7 }
                 END { for (k in c) printf "%-16s %9d %7d %11.1f %9.3f %9.3f\n", k, c[k], e[k], t[k], t[k] / c[k], m[k] }' \
                "$d/trace.txt" | sort -k4,4 -g -r | head -15
        } | tee -a "$RESULT"
    else
        echo "# perf trace wrote nothing: $(head -c 300 "$d/perf.log" | tr '\n' ' ')" | tee -a "$RESULT"
    fi
fi

echo "written to $RESULT"
[ "${FAILED:-0}" = 1 ] && exit 1
exit 0
