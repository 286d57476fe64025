"""Milters for the content filter tests: the python3-milter test filter
(helpers/milters/testmilter.py, run by Debian's /usr/bin/python3, since the
tests themselves may run under another interpreter), and a raw fake milter
for the protocol's bad input (garbage, over-long packets, closing at a
chosen stage), which no well-behaved milter library can produce."""

import json
import os
import socket
import struct
import subprocess
import threading
import time

from helpers.ports import free_port

HERE = os.path.dirname(os.path.abspath(__file__))
SYSTEM_PYTHON = "/usr/bin/python3"


def wait_port(port, timeout=10.0, proc=None):
    """Waits until 127.0.0.1:port accepts a connection."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("milter exited: %s" % proc.stderr.read().decode(errors="replace"))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nothing listens on %d" % port)


class PyMilter:
    """The python3-milter test filter on a loopback port (or a unix
    socket); `seen()` is what it saw of each message, in order."""

    def __init__(self, workdir, unix=False):
        self.log = os.path.join(str(workdir), "milter-%d.jsonl" % free_port())
        if unix:
            self.path = os.path.join(str(workdir), "milter.sock")
            spec, self.address = "unix:" + self.path, "unix:" + self.path
        else:
            self.port = free_port()
            spec, self.address = "inet:%d@127.0.0.1" % self.port, "inet:127.0.0.1:%d" % self.port
        self.proc = subprocess.Popen([SYSTEM_PYTHON, os.path.join(HERE, "milters", "testmilter.py"),
                                      spec, self.log], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if unix:
            deadline = time.time() + 10
            while not os.path.exists(self.path) and time.time() < deadline:
                time.sleep(0.05)
        else:
            wait_port(self.port, proc=self.proc)

    def seen(self):
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            return [json.loads(line) for line in f if line.strip()]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def packet(cmd, data=b""):
    """One milter packet."""
    return struct.pack(">I", len(data) + 1) + cmd + data


class FakeMilter:
    """A milter that negotiates properly, answers `continue` and then, at
    the command `at` (a milter command octet such as b"E" for end of
    message), does `what`: "garbage" (an unknown reply), "overlong" (a
    length field of 16 MiB), "malformed" (a header change without its
    NULs), "close" (closes the connection), "silent" (never answers)."""

    def __init__(self, at, what):
        self.at, self.what = at, what
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.address = "inet:127.0.0.1:%d" % self.port
        self.conns = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._one, args=(c,), daemon=True).start()

    def _read(self, c, n):
        b = b""
        while len(b) < n:
            x = c.recv(n - len(b))
            if not x:
                raise EOFError
            b += x
        return b

    def _one(self, c):
        try:
            while True:
                (n,) = struct.unpack(">I", self._read(c, 4))
                body = self._read(c, n)
                cmd = body[:1]
                if cmd == b"O":
                    c.sendall(packet(b"O", struct.pack(">III", 6, 0x1FF, 0)))
                    continue
                if cmd == b"D":
                    continue
                if cmd == self.at:
                    self._misbehave(c)
                    return
                if cmd in (b"Q", b"A", b"K"):
                    continue
                c.sendall(packet(b"a" if cmd == b"E" else b"c"))
        except (EOFError, OSError):
            pass

    def _misbehave(self, c):
        if self.what == "garbage":
            c.sendall(b"\x00\x00\x00\x03Z??")
        elif self.what == "overlong":
            c.sendall(struct.pack(">I", 16 * 1024 * 1024) + b"h")
        elif self.what == "malformed":
            c.sendall(packet(b"m", b"\x00\x00\x00\x01Subject-without-nul"))
        elif self.what == "silent":
            time.sleep(30)
        c.close()

    def stop(self):
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass
