#!/usr/bin/env python3
"""bench/startup.py: how long `sluice run` takes to its first greeting.

What it measures
  (a) Empty spool: RUNS times (default 20), a fresh daemon on a free
      loopback port is started (`sluice run --config <tmp>`, its spool and
      state under bench/out/, on the real disk) and the script connects
      every millisecond until it reads the 220 greeting. Start-up time =
      from just before the exec to the greeting's first octets. The first
      run also creates the spool and state directories; it is reported on
      its own and left out of the median. Goal (issue 16): < 50 ms.
  (b) A full spool (unless --no-spool): a daemon with `[queue] hold =
      true` (nothing is delivered) takes SPOOL messages (default 100,000;
      1 KiB each) from smtp-source, is stopped with SIGTERM, and is
      started again RUNS_FULL times (default 3): the time to the greeting
      then includes reading the spool back (recovery), the log line
      `spool: recovered N message(s)` is checked for N, and the daemon's
      VmRSS/VmHWM after the greeting are read from /proc.
  The table is printed and written to bench/out/startup-<date>.txt.

How to run (from the repository root)
  bench/startup.py                         (SLUICE_BIN, default target/release/sluice)
  RUNS=50 SPOOL=10000 bench/startup.py
  bench/startup.py --no-spool              (only the empty-spool runs)
  Needs python3 and, for (b), /usr/sbin/smtp-source (Postfix). Loopback only.
"""
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
OUT = os.path.join(BENCH, "out")
SLUICE = os.environ.get("SLUICE_BIN", os.path.join(ROOT, "target/release/sluice"))
SMTP_SOURCE = os.environ.get("SMTP_SOURCE", "/usr/sbin/smtp-source")
RUNS = int(os.environ.get("RUNS", "20"))
RUNS_FULL = int(os.environ.get("RUNS_FULL", "3"))
SPOOL = int(os.environ.get("SPOOL", "100000"))
READY_TIMEOUT = float(os.environ.get("READY_TIMEOUT", "600"))


def free_port():
    """A free TCP port on 127.0.0.1."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def write_config(d, port, hold):
    """A sluice.toml in `d`: a plain loopback listener, logs on stderr,
    the queue on hold when `hold` (a spool that is read back, never sent)."""
    with open(os.path.join(d, "sluice.toml"), "w") as f:
        f.write('# written by bench/startup.py\nhostname = "bench.sluice.test"\n'
                'spool_dir = "spool"\nstate_dir = "state"\n\n'
                '[[listen]]\naddress = "127.0.0.1:%d"\nstarttls = false\n\n'
                '[limits]\nconnections = 1000\nconnections_per_ip = 200\n\n'
                '[queue]\nhold = %s\n\n[syslog]\ntarget = "stderr"\n' % (port, "true" if hold else "false"))
    return os.path.join(d, "sluice.toml")


def greeting(port, deadline):
    """Connects to 127.0.0.1:`port` until the 220 greeting comes; the
    perf_counter() time its first octets arrived (None after `deadline`)."""
    while time.perf_counter() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                data = s.recv(512)
                t = time.perf_counter()
                if data.startswith(b"220"):
                    try:
                        s.sendall(b"QUIT\r\n")
                    except OSError:
                        pass
                    return t
        except OSError:
            pass
        time.sleep(0.001)
    return None


def start(d, port):
    """Starts the daemon of `d`; (process, seconds to its greeting)."""
    err = open(os.path.join(d, "stderr.log"), "ab")
    t0 = time.perf_counter()
    p = subprocess.Popen([SLUICE, "run", "--config", os.path.join(d, "sluice.toml")],
                         stdout=subprocess.DEVNULL, stderr=err)
    t = greeting(port, t0 + READY_TIMEOUT)
    err.close()
    if t is None:
        stop(p)
        sys.exit("no greeting within %.0f s; see %s/stderr.log" % (READY_TIMEOUT, d))
    return p, t - t0


def stop(p):
    """SIGTERM, then waits (SIGKILL after 30 s)."""
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def memory(pid):
    """VmRSS and VmHWM of `pid` in KiB."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0])
    return out


def ms(xs):
    """min / median / max of seconds `xs`, as milliseconds."""
    return "%.1f / %.1f / %.1f" % (min(xs) * 1e3, statistics.median(xs) * 1e3, max(xs) * 1e3)


def empty_spool(base):
    """(a): the first start and the RUNS after it, on an empty spool."""
    d = os.path.join(base, "empty")
    os.makedirs(d)
    port = free_port()
    write_config(d, port, hold=False)
    times = []
    for _ in range(RUNS + 1):
        p, t = start(d, port)
        stop(p)
        times.append(t)
    return [("empty spool, first start (creates the spool)", "%.1f" % (times[0] * 1e3), ""),
            ("empty spool, %d starts (min / median / max)" % RUNS, ms(times[1:]), "")]


def fill(d, port, n):
    """Sends `n` 1 KiB messages to the daemon on `port` (20 sessions, each
    reused for many messages); the seconds it took."""
    t0 = time.perf_counter()
    r = subprocess.run([SMTP_SOURCE, "-s", "20", "-d", "-m", str(n), "-l", "1024",
                        "-f", "a@bench.test", "-t", "b@bench.test", "127.0.0.1:%d" % port],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=3600)
    if r.returncode != 0:
        sys.exit("smtp-source failed: %s" % r.stderr[:300])
    return time.perf_counter() - t0


def full_spool(base):
    """(b): SPOOL messages on hold, then RUNS_FULL restarts that read them back."""
    d = os.path.join(base, "full")
    os.makedirs(d)
    port = free_port()
    write_config(d, port, hold=True)
    p, _ = start(d, port)
    took = fill(d, port, SPOOL)
    stop(p)
    times, mem = [], {}
    for _ in range(RUNS_FULL):
        p, t = start(d, port)
        mem = memory(p.pid)
        stop(p)
        times.append(t)
    with open(os.path.join(d, "stderr.log"), errors="replace") as f:
        recovered = [l.strip() for l in f if "spool: recovered" in l]
    want = "recovered %d message(s)" % SPOOL
    ok = all(want in l for l in recovered[1:])
    du = subprocess.run(["du", "-sk", os.path.join(d, "spool")], capture_output=True, text=True).stdout.split()[0]
    return [("filled: %d x 1 KiB messages over smtp-source -s 20 -d" % SPOOL, "%.1f s" % took,
             "%.0f msg/s, spool %s KiB" % (SPOOL / took, du)),
            ("%d-message spool, %d starts (min / median / max)" % (SPOOL, RUNS_FULL), ms(times),
             "log: %s" % ("every start: " + want if ok else "; ".join(recovered[-2:]))),
            ("after recovery: VmRSS / VmHWM", "%d / %d KiB" % (mem.get("VmRSS", 0), mem.get("VmHWM", 0)), "")]


def main():
    """Runs (a) and, unless --no-spool, (b); prints and writes the table."""
    if not os.access(SLUICE, os.X_OK):
        sys.exit("missing %s (cargo build --release)" % SLUICE)
    os.makedirs(OUT, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = os.path.join(OUT, "startup-%s.d" % stamp)
    os.makedirs(base)
    rows = empty_spool(base)
    if "--no-spool" not in sys.argv:
        if not os.access(SMTP_SOURCE, os.X_OK):
            sys.exit("missing %s (Postfix)" % SMTP_SOURCE)
        rows += full_spool(base)
    lines = ["# sluice: %s (%s)" % (SLUICE, time.ctime(os.path.getmtime(SLUICE))),
             "# %s, load %s" % (time.strftime("%Y-%m-%d %H:%M:%S"), open("/proc/loadavg").read().split()[0])]
    lines += ["%-58s %-24s %s" % r for r in rows]
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    with open(os.path.join(OUT, "startup-%s.txt" % stamp), "w") as f:
        f.write(text)
    if not os.environ.get("KEEP"):
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
