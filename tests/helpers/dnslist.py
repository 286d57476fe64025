"""DNS list servers for the Edge agents' tests: dnsmasq on a loopback port
serving a block-list and an allow-list zone (answers given by the test),
and a "black hole" that reads UDP queries and never answers."""

import os
import shutil
import socket
import struct
import subprocess
import threading
import time

import pytest

from helpers.ports import free_port

DNSMASQ = shutil.which("dnsmasq") or next(
    (p for p in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq") if os.access(p, os.X_OK)), None)


def query_a(port, name, timeout=0.3):
    """One A query to 127.0.0.1:port; the rcode, or None without an answer."""
    qname = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"
    msg = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + qname + struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(msg, ("127.0.0.1", port))
        data, _ = s.recvfrom(4096)
        return data[3] & 0x0F
    except OSError:
        return None
    finally:
        s.close()


def nibbles(ip6):
    """The RFC 5782 nibble-format name of an IPv6 address (without zone)."""
    packed = socket.inet_pton(socket.AF_INET6, ip6)
    return ".".join(reversed("".join("%02x" % b for b in packed)))


class Dnsmasq:
    """dnsmasq on 127.0.0.1:<port>: `answers` maps names to A addresses;
    every other name under `zones` is NXDOMAIN."""

    def __init__(self, workdir, zones, answers, extra=()):
        """`extra`: more dnsmasq options (--txt-record, --mx-host,
        --host-record, --ptr-record) for the test's zone."""
        if not DNSMASQ:
            pytest.skip("dnsmasq is not installed (Debian package dnsmasq-base)")
        args = ["--local=/%s/" % z for z in zones]
        args += ["--address=/%s/%s" % (n, a) for n, a in answers.items()]
        args += list(extra)
        last = ""
        for attempt in range(5):
            self.port = free_port()
            self.log = os.path.join(workdir, "dnsmasq%d.log" % attempt)
            with open(self.log, "wb") as log:
                self.proc = subprocess.Popen(
                    [DNSMASQ, "--no-daemon", "--conf-file=/dev/null", "--port=%d" % self.port,
                     "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
                     "--pid-file=" + os.path.join(workdir, "dnsmasq.pid"),
                     "--local-ttl=300", "--log-queries", "--log-facility=-", *args],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and self.proc.poll() is None:
                if query_a(self.port, "probe." + zones[0]) is not None:
                    return
                time.sleep(0.05)
            self.stop()
            last = open(self.log, encoding="utf-8", errors="replace").read()
        pytest.fail("dnsmasq did not start:\n%s" % last)

    def queries(self):
        """How many queries dnsmasq logged."""
        with open(self.log, encoding="utf-8", errors="replace") as f:
            return sum(1 for l in f if "query[" in l)

    def queried(self, names):
        """How many queries dnsmasq logged for exactly each of `names`, in
        their order (one read of the log)."""
        with open(self.log, encoding="utf-8", errors="replace") as f:
            asked = [l.split()[-3] for l in f if "query[" in l]
        return [asked.count(n) for n in names]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class BlackHole:
    """A UDP socket on 127.0.0.1 that reads queries and drops them."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            try:
                self.sock.recvfrom(4096)
            except OSError:
                return
            self.received += 1

    def stop(self):
        self.sock.close()
