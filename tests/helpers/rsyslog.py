"""A real rsyslogd for the tests (Debian package `rsyslog`), run in the
foreground with its own config in a temp dir: imudp and imtcp on free
loopback ports and imuxsock on a socket there, everything written to a file
in RSYSLOG_SyslogProtocol23Format; no system service is touched. `Line`
parses one line of that file, `parse_sd` its RFC 5424 structured data.
Used by test_syslog.py and test_metrics_syslog.py."""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from helpers.ports import free_port, free_udp_port

RSYSLOGD = shutil.which("rsyslogd") or ("/usr/sbin/rsyslogd" if os.path.exists("/usr/sbin/rsyslogd") else None)

TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)$")


def parse_sd(s):
    """RFC 5424 STRUCTURED-DATA at the start of s -> ({sd_id: {name: value}}, rest)."""
    out = {}
    if s.startswith("-"):
        return out, s[1:].lstrip(" ")
    i = 0
    while i < len(s) and s[i] == "[":
        j = i + 1
        while s[j] not in " ]":
            j += 1
        sd_id = s[i + 1:j]
        params = out.setdefault(sd_id, {})
        i = j
        while s[i] == " ":
            i += 1
            eq = s.index("=", i)
            name = s[i:eq]
            assert s[eq + 1] == '"', s
            k = eq + 2
            val = []
            while s[k] != '"':
                if s[k] == "\\" and s[k + 1] in '"\\]':
                    k += 1
                val.append(s[k])
                k += 1
            params[name] = "".join(val)
            i = k + 1
        assert s[i] == "]", s
        i += 1
    return out, s[i:].lstrip(" ")


class Line:
    """One line of RSYSLOG_SyslogProtocol23Format: <PRI>1 TS HOST APP PROCID MSGID SD MSG."""

    def __init__(self, raw):
        self.raw = raw
        m = re.match(r"<(\d+)>1 (\S+) (\S+) (\S+) (\S+) (\S+) (.*)$", raw)
        assert m, raw
        pri = int(m.group(1))
        self.facility, self.severity = pri >> 3, pri & 7
        self.timestamp, self.host, self.app, self.procid, self.msgid = m.group(2, 3, 4, 5, 6)
        self.sd, self.msg = parse_sd(m.group(7))

    def __repr__(self):
        return self.raw


class Rsyslog:
    def __init__(self):
        # Short: a unix socket path must fit in 108 octets.
        self.dir = tempfile.mkdtemp(prefix="rsl", dir="/tmp")
        self.udp_port = free_udp_port()
        self.tcp_port = free_port()
        self.sock = os.path.join(self.dir, "log")
        self.out = os.path.join(self.dir, "messages")
        self.conf = os.path.join(self.dir, "rsyslog.conf")
        self.pidfile = os.path.join(self.dir, "rsyslogd.pid")
        self.stderr_path = os.path.join(self.dir, "rsyslogd.stderr")
        with open(self.conf, "w") as f:
            f.write('global(workDirectory="%s")\n' % self.dir)
            f.write('module(load="imudp")\n')
            f.write('module(load="imtcp")\n')
            f.write('module(load="imuxsock" SysSock.Use="off")\n')
            f.write('input(type="imudp" port="%d" address="127.0.0.1")\n' % self.udp_port)
            f.write('input(type="imtcp" port="%d" address="127.0.0.1")\n' % self.tcp_port)
            f.write('input(type="imuxsock" Socket="%s")\n' % self.sock)
            f.write('*.* action(type="omfile" file="%s" template="RSYSLOG_SyslogProtocol23Format")\n'
                    % self.out)
        self.proc = None
        self.starts = 0

    def target(self, kind):
        return {"udp": "udp:127.0.0.1:%d" % self.udp_port,
                "tcp": "tcp:127.0.0.1:%d" % self.tcp_port,
                "unix": "unix:" + self.sock}[kind]

    def start(self, timeout=15.0):
        err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen([RSYSLOGD, "-n", "-f", self.conf, "-i", self.pidfile],
                                     stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                     start_new_session=True)
        err.close()
        self.starts += 1
        # Ready when a probe sent over each input is in the file.
        deadline = time.monotonic() + timeout
        want = {"udp", "tcp", "unix"}
        while want and time.monotonic() < deadline:
            assert self.proc.poll() is None, "rsyslogd exited:\n" + self.stderr()
            for kind in list(want):
                token = "ready-%s-%d" % (kind, self.starts)
                probe = "<14>1 - - probe - - - " + token
                try:
                    if kind == "udp":
                        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                            s.sendto(probe.encode(), ("127.0.0.1", self.udp_port))
                    elif kind == "tcp":
                        with socket.create_connection(("127.0.0.1", self.tcp_port), timeout=2) as s:
                            s.sendall(b"%d %s" % (len(probe), probe.encode()))
                    else:
                        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                            s.sendto(b"<14>probe: " + token.encode(), self.sock)
                except OSError:
                    continue
            time.sleep(0.2)
            text = self.text()
            want = {k for k in want if "ready-%s-%d" % (k, self.starts) not in text}
        assert not want, "rsyslogd not ready (%s):\n%s" % (want, self.stderr())
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def stderr(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def text(self):
        try:
            with open(self.out, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def lines(self, app="sluice"):
        out = []
        for raw in self.text().splitlines():
            if raw.strip():
                ln = Line(raw)
                if ln.app == app:
                    out.append(ln)
        return out

    def wait_for(self, pred, timeout=10.0):
        """Lines from sluice, once pred(lines) holds."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.lines()
            if pred(lines):
                return lines
            if time.monotonic() > deadline:
                raise AssertionError("rsyslog's file never matched; it has:\n%s" % self.text())
            time.sleep(0.1)
