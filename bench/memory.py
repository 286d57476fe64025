#!/usr/bin/env python3
"""bench/memory.py: resident memory of the sluice daemon, idle and per session.

What it measures
    Starts `sluice run --config <tmp>` (fresh spool in a temp dir under
    bench/out/) and reads VmRSS (/proc/PID/status) and Pss
    (/proc/PID/smaps_rollup) of the daemon:
      * idle, after the listener is up;
      * with 100 idle sessions, then with 1,000 idle sessions: sockets
        connected to the listener from 127.0.0.1, each greeting (220) read,
        all kept open and silent;
      * after closing them all again.
    Per additional session = (RSS_1000 - RSS_idle) / 1000; the 100-session
    figure shows whether growth is linear. Targets: idle < 8 MiB,
    < 24 KiB per idle session. The config allows the sessions
    (limits.connections = 2000, connections_per_ip = 2000); RLIMIT_NOFILE is
    raised for this process and, by inheritance, for the daemon.
    Then everything is closed and the daemon stopped with SIGTERM.

How to run
    python3 bench/memory.py [--sessions 1000] [--step 100] [--bin PATH] [--keep]
    SLUICE_BIN=/path/to/sluice python3 bench/memory.py
    Default binary: target/release/sluice. Loopback only; stdlib only.
    The figures are printed and written to bench/out/memory-<date>.txt.
"""

import argparse
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
OUT_DIR = os.path.join(BENCH_DIR, "out")
READY_TIMEOUT = 30.0  # seconds for the daemon to print `listening on`
GREETING_TIMEOUT = 10.0  # seconds per greeting
SETTLE = 1.0  # seconds to let the daemon settle before a reading

IDLE_TARGET_KIB = 8 * 1024
PER_SESSION_TARGET_KIB = 24


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_kib(path, key):
    """The `key:   N kB` line of a /proc file, in KiB (None if absent)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reading(pid):
    status = "/proc/%d/status" % pid
    rollup = "/proc/%d/smaps_rollup" % pid
    threads = None
    try:
        with open(status) as f:
            for line in f:
                if line.startswith("Threads:"):
                    threads = int(line.split()[1])
    except OSError:
        pass
    try:
        fds = len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        fds = None
    return {
        "rss": read_kib(status, "VmRSS"),
        "hwm": read_kib(status, "VmHWM"),
        "anon": read_kib(status, "RssAnon"),
        "pss": read_kib(rollup, "Pss"),
        "threads": threads,
        "fds": fds,
    }


def raise_nofile(needed):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft
    if hard != resource.RLIM_INFINITY and hard < needed:
        try:  # only root may raise the hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return needed
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return needed


CONFIG = """\
# written by bench/memory.py
hostname = "bench.sluice.test"
spool_dir = "spool"
state_dir = "state"

[[listen]]
address = "127.0.0.1:{port}"
starttls = false

[limits]
connections = 2000
connections_per_ip = 2000
command_timeout = "5m"
data_timeout = "10m"

[dns]
servers = ["127.0.0.1:53"]   # loopback only

[syslog]
target = "stderr"
"""


def open_session(port):
    """Connect, read the greeting line, return the socket (kept open)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=GREETING_TIMEOUT)
    buf = b""
    deadline = time.monotonic() + GREETING_TIMEOUT
    while b"\n" not in buf:
        if time.monotonic() > deadline:
            s.close()
            raise TimeoutError("no greeting within %.0f s" % GREETING_TIMEOUT)
        chunk = s.recv(512)
        if not chunk:
            s.close()
            raise ConnectionError("closed before greeting (got %r)" % buf)
        buf += chunk
    if not buf.startswith(b"220"):
        s.close()
        raise ConnectionError("greeting was %r" % buf.strip())
    return s


class Report:
    def __init__(self, path):
        self.lines = []
        self.path = path

    def __call__(self, line=""):
        print(line, flush=True)
        self.lines.append(line)

    def save(self):
        with open(self.path, "w") as f:
            f.write("\n".join(self.lines) + "\n")


def fmt(r):
    return "%8s %8s %8s %8s %7s %6s" % (
        r["rss"], r["pss"], r["anon"], r["hwm"], r["threads"], r["fds"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--step", type=int, default=100,
                    help="also measure after this many sessions (0: no)")
    ap.add_argument("--bin", default=os.environ.get(
        "SLUICE_BIN", os.path.join(ROOT, "target", "release", "sluice")))
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args()
    if not os.access(args.bin, os.X_OK):
        sys.exit("no sluice binary at %s (cargo build --release, or --bin)" % args.bin)
    if args.sessions < 1 or args.sessions > 10000:
        sys.exit("--sessions must be 1..10000")

    os.makedirs(OUT_DIR, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = tempfile.mkdtemp(prefix="memory-run-%s." % stamp, dir=OUT_DIR)
    report = Report(os.path.join(OUT_DIR, "memory-%s.txt" % stamp))
    nofile = raise_nofile(args.sessions + 200)  # inherited by the daemon
    if nofile < args.sessions + 50:
        sys.exit("RLIMIT_NOFILE is %d; too low for %d sessions" % (nofile, args.sessions))

    port = free_port()
    conf = os.path.join(work, "sluice.toml")
    with open(conf, "w") as f:
        f.write(CONFIG.format(port=port))
    log_path = os.path.join(work, "stderr.log")
    log = open(log_path, "wb")
    proc = None
    socks = []
    failed = False

    def on_signal(signum, _frame):
        raise KeyboardInterrupt("signal %d" % signum)

    signal.signal(signal.SIGTERM, on_signal)
    try:
        proc = subprocess.Popen([args.bin, "run", "--config", conf],
                                stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            with open(log_path, "rb") as f:
                if b"listening on" in f.read():
                    break
            if proc.poll() is not None:
                raise RuntimeError("sluice exited %d before listening" % proc.returncode)
            if time.monotonic() > deadline:
                raise RuntimeError("sluice not listening after %.0f s" % READY_TIMEOUT)
            time.sleep(0.1)

        pid = proc.pid
        report("# sluice memory, %s" % time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
        report("# binary %s; pid %d; RLIMIT_NOFILE %d; figures in KiB" % (args.bin, pid, nofile))
        report("%-20s %8s %8s %8s %8s %7s %6s" % ("state", "VmRSS", "Pss", "RssAnon", "VmHWM", "threads", "fds"))
        time.sleep(SETTLE)
        idle = reading(pid)
        report("%-20s %s" % ("idle", fmt(idle)))

        marks = sorted({n for n in (args.step, args.sessions) if 0 < n <= args.sessions})
        at = {}
        for mark in marks:
            while len(socks) < mark:
                if proc.poll() is not None:
                    raise RuntimeError("sluice exited %d with %d sessions open" % (proc.returncode, len(socks)))
                try:
                    socks.append(open_session(port))
                except (OSError, TimeoutError, ConnectionError) as e:
                    raise RuntimeError("session %d: %s" % (len(socks) + 1, e))
            time.sleep(SETTLE)
            at[mark] = reading(pid)
            report("%-20s %s" % ("%d sessions" % mark, fmt(at[mark])))

        for s in socks:
            s.close()
        socks = []
        time.sleep(2 * SETTLE)
        after = reading(pid)
        report("%-20s %s" % ("after close", fmt(after)))

        report()
        n = args.sessions
        per = (at[n]["rss"] - idle["rss"]) / n
        per_pss = (at[n]["pss"] - idle["pss"]) / n if idle["pss"] is not None else None
        report("idle VmRSS            %8d KiB  (%.2f MiB)  target < %d KiB: %s" % (
            idle["rss"], idle["rss"] / 1024, IDLE_TARGET_KIB,
            "ok" if idle["rss"] < IDLE_TARGET_KIB else "OVER"))
        if idle["pss"] is not None:
            report("idle Pss              %8d KiB  (%.2f MiB)" % (idle["pss"], idle["pss"] / 1024))
        report("per session (VmRSS)   %8.2f KiB  = (%d - %d) / %d   target < %d KiB: %s" % (
            per, at[n]["rss"], idle["rss"], n, PER_SESSION_TARGET_KIB,
            "ok" if per < PER_SESSION_TARGET_KIB else "OVER"))
        if per_pss is not None:
            report("per session (Pss)     %8.2f KiB  = (%d - %d) / %d" % (
                per_pss, at[n]["pss"], idle["pss"], n))
        for mark in marks:
            if mark == n:
                continue
            report("linearity: first %d sessions %.2f KiB each; sessions %d..%d %.2f KiB each" % (
                mark, (at[mark]["rss"] - idle["rss"]) / mark, mark + 1, n,
                (at[n]["rss"] - at[mark]["rss"]) / (n - mark)))
    except (RuntimeError, KeyboardInterrupt) as e:
        failed = True
        report("ERROR: %s" % e)
    finally:
        for s in socks:
            s.close()
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(timeout=10)
                report("daemon stopped by SIGTERM, exit %d" % rc)
                if rc != 0:
                    failed = True
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                report("WARNING: daemon ignored SIGTERM for 10 s; killed")
                failed = True
        log.close()
        with open(log_path, "rb") as f:
            tail = f.read().decode("utf-8", "replace").splitlines()
        bad = [l for l in tail if any(w in l.lower() for w in ("error", "panic", "warn"))]
        if bad:
            report("WARNING: sluice logged %d error/warning lines, e.g.: %s" % (len(bad), " | ".join(bad[:3])))
        report.save()
        print("written to %s" % report.path)
        if args.keep or failed:
            print("temp files kept in %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
