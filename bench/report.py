#!/usr/bin/env python3
"""Benchmark of the mail-flow report (issue 15):

* `history`: the history's octets per day at 100 destinations. A daemon
  (queue on hold, `[report] local_domains`) receives mail rewritten from
  contoso.com to 100 location domains (`u<N>@contoso.com` ->
  `u<N>@loc<N>.contoso.com`, real Internet-length names) over loopback; at
  its shutdown flush the day's file is measured. The counts in this run are
  small (1-octet varints); the figure for a busy day (up to 10^6 messages
  and 10^11 octets a row) is worked from the file's own rows: each count
  then takes up to 3, 6 and 3 varint octets.
* `fromlog`: `sluice report --from-log` over a ~1 GB syslog file of four
  relays (RFC 5424 and rsyslog file format, 1 in 20 lines foreign),
  generated in /tmp and deleted afterwards: wall time, MB/s, lines/s, and
  the peak RSS of the report (GNU time's %M).

Run: `python3 bench/report.py [history|fromlog|all] [--bin PATH] [--size-mb N]`
(default: all, the release binary, 1000 MB). Loopback only; every process
started is stopped.
"""

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DESTINATIONS = 100
PER_DESTINATION = 10


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def smtp(port, rcpts, body):
    """One connection, one message per recipient list (plain SMTP)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    f = s.makefile("rwb")

    def reply():
        while True:
            line = f.readline()
            if not line:
                raise RuntimeError("connection closed")
            if line[3:4] != b"-":
                return line

    def cmd(c):
        f.write(c + b"\r\n")
        f.flush()
        return reply()

    reply()
    cmd(b"EHLO bench.test")
    for r in rcpts:
        cmd(b"MAIL FROM:<s@example.org>")
        assert cmd(b"RCPT TO:<%s>" % r.encode()).startswith(b"250")
        cmd(b"DATA")
        assert cmd(body + b"\r\n.").startswith(b"250")
    cmd(b"QUIT")
    s.close()


def history(binary):
    work = tempfile.mkdtemp(prefix="sluice-bench-report-")
    try:
        rcpts = ["u%d@contoso.com" % i for i in range(DESTINATIONS)]
        locs = ["loc%d.contoso.com" % i for i in range(DESTINATIONS)]
        mapping = ", ".join('"%s" = "u%d@%s"' % (r, i, l) for i, (r, l) in enumerate(zip(rcpts, locs)))
        with open(os.path.join(work, "rules.toml"), "w") as f:
            f.write('version = 1\n[domains]\naccepted = ["contoso.com", %s]\n'
                    '[[rewrite]]\ndirection = "inbound"\nmap = { %s }\n'
                    % (", ".join('"%s"' % l for l in locs), mapping))
        port = free_port()
        cfg = os.path.join(work, "sluice.toml")
        with open(cfg, "w") as f:
            f.write('hostname = "bench.test"\nrules = "rules.toml"\nstate_dir = "state"\n'
                    'spool_dir = "spool"\n[[listen]]\naddress = "127.0.0.1:%d"\n'
                    '[queue]\nhold = true\n[syslog]\ntarget = "stderr"\n'
                    '[report]\nlocal_domains = ["loc0.contoso.com"]\nflush_interval = "1h"\n' % port)
        log = open(os.path.join(work, "stderr"), "wb")
        p = subprocess.Popen([binary, "run", "--config", cfg], cwd=work, stdout=log, stderr=log)
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            body = b"Subject: bench\r\n\r\n" + b"x" * 2000
            for _ in range(PER_DESTINATION):
                smtp(port, rcpts, body)
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(30)
        hist = os.path.join(work, "state", "history")
        files = [os.path.join(hist, n) for n in os.listdir(hist) if n.endswith(".day")]
        assert len(files) == 1, files
        size = os.path.getsize(files[0])
        rep = subprocess.run([binary, "report", "--json", "--config", cfg], cwd=work,
                             capture_output=True, check=True)
        import json
        doc = json.loads(rep.stdout)
        rows = len(doc["destinations"])
        names = sum(len(r["domain"]) + len(r["location"]) for r in doc["destinations"])
        counted = sum(r["messages"] for r in doc["destinations"])
        # a busy day: messages <= 10^6 (3 varint octets), bytes <= 10^11
        # (6), redirected <= 10^6 (3); names and length prefixes unchanged
        busy = 8 + 3 + 4 + 2 + rows * (2 + 3 + 6 + 3) + names + 2 * rows
        print("history: %d destinations, %d messages counted: day file %d octets "
              "(%.1f octets/destination); a busy day at the same names: %d octets; "
              "400 days: %.0f KiB (this run) / %.0f KiB (busy)"
              % (rows, counted, size, size / rows, busy, 400 * size / 1024, 400 * busy / 1024))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def make_log(path, size_mb):
    """A syslog file of four relays, about `size_mb` MB."""
    rnd = random.Random(1)
    relays = [("us1", "rfc5424"), ("us2", "rfc5424"), ("eu1", "rsyslog"), ("ap1", "rsyslog")]
    locs = ["us.contoso.com", "eu.contoso.com", "ap.contoso.com"]
    target = size_mb * 1000 * 1000
    written = 0
    n = 0
    with open(path, "w", buffering=1 << 22) as f:
        while written < target:
            chunk = []
            for _ in range(2000):
                host, fmt = relays[n % 4]
                n += 1
                qid = "%012X" % n
                loc = locs[rnd.randrange(3)]
                ts = "2026-11-%02dT08:%02d:%02d.%06dZ" % (1 + n // 400000 % 28, n // 60 % 60, n % 60, n % 999999)
                sd = '[sluice@32473 qid="%s" msgid="<%d.bench@example.org>"]' % (qid, n)
                red = "redirected=yes " if not loc.startswith(host[:2]) else ""
                lines = [("RECEIVE", "from=<s%d@example.org> rcpts=1 size=%d peer=192.0.2.%d:%d tls=true result=NoAction"
                          % (n, 2000 + n % 50000, n % 250, 1024 + n % 60000)),
                         ("ROUTE", "to=<u%d@%s> orig=<u%d@contoso.com> connector=internet next_hop=mx:%s %sroute of the connector"
                          % (n % 1000, loc, n % 1000, loc, red)),
                         ("RULE", 'rule 3 "location rewrite" matched: rewrite recipient'),
                         ("SEND", "to=<u%d@%s> relay=mx.%s:25 250 2.0.0 ok" % (n % 1000, loc, loc))]
                for kind, text in lines:
                    if fmt == "rfc5424":
                        chunk.append("<22>1 %s %s sluice 4242 %s %s %s\n" % (ts, host, kind, sd, text))
                    else:
                        chunk.append("%s %s sluice[4242]: %s %s %s\n" % (ts.replace("Z", "+00:00"), host, kind, sd, text))
                if n % 5 == 0:
                    chunk.append("Nov  1 08:00:00 %s postfix/smtpd[999]: connect from unknown[192.0.2.%d]\n" % (host, n % 250))
            s = "".join(chunk)
            f.write(s)
            written += len(s)
    return written


def fromlog(binary, size_mb):
    path = os.path.join(tempfile.gettempdir(), "sluice-bench-report-%d.log" % os.getpid())
    try:
        t0 = time.monotonic()
        size = make_log(path, size_mb)
        gen = time.monotonic() - t0
        lines = sum(1 for _ in open(path, "rb"))  # also warms the page cache
        runs = []
        for _ in range(3):
            t0 = time.monotonic()
            tm = ["/usr/bin/time", "-f", "%M"] if os.path.exists("/usr/bin/time") else []
            p = subprocess.run(tm + [binary, "report", "--json", "--from-log", path], capture_output=True)
            took = time.monotonic() - t0
            assert p.returncode == 0, p.stderr[-2000:]
            rss = p.stderr.decode().strip().splitlines()[-1] if tm else "?"
            runs.append((took, rss))
        import json
        doc = json.loads(p.stdout)
        best = min(r[0] for r in runs)
        print("fromlog: %.0f MB, %d lines (generated in %.0f s); report --from-log: %s s "
              "(best %.1f s = %.0f MB/s, %.2f M lines/s); peak RSS %s KiB; counted %d ROUTE, %d foreign"
              % (size / 1e6, lines, gen, ", ".join("%.1f" % r[0] for r in runs), best, size / 1e6 / best,
                 lines / 1e6 / best, runs[0][1], doc["lines"]["route"], doc["lines"]["foreign"]))
    finally:
        if os.path.exists(path):
            os.remove(path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", nargs="?", default="all", choices=["history", "fromlog", "all"])
    ap.add_argument("--bin", default=os.environ.get("SLUICE_BIN", os.path.join(ROOT, "target", "release", "sluice")))
    ap.add_argument("--size-mb", type=int, default=1000)
    a = ap.parse_args()
    a.bin = os.path.abspath(a.bin)
    if not os.path.exists(a.bin):
        sys.exit("no binary %s: cargo build --release, or --bin PATH" % a.bin)
    if a.what in ("history", "all"):
        history(a.bin)
    if a.what in ("fromlog", "all"):
        fromlog(a.bin, a.size_mb)


if __name__ == "__main__":
    main()
