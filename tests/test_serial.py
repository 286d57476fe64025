"""Rule upload over a serial line: `sluice rules send --serial DEV FILE` to a
daemon whose `[upload] serial` is the other end of a pseudo-terminal pair made
by socat. A good upload is installed (status names the serial line), a bad
rule file comes back with its `LINE:COL: error:` lines, a frame damaged on the
line is resent and the file applied once, and an upload cut off half-way
changes nothing and leaves the daemon ready for the next one.

For the damaged and cut-off cases a relay sits in the middle: two socat pairs,
daemon <-> A and B <-> operator, and a thread that copies A <-> B, decoding the
operator's frames (0x00-delimited COBS of postcard `Wire { payload, crc }`,
payload = `Up::Begin | Up::Data | Up::End`) to tamper with one of them.
"""

import json
import os
import select
import shutil
import signal
import subprocess
import threading
import time

import pytest

from helpers.daemon import SLUICE_BIN
from helpers.pty import PtyPair
from helpers.rules import SAMPLE
from helpers.tools import needs_tool

pytestmark = needs_tool(shutil.which("socat") is not None, "socat is not installed")


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

@pytest.fixture
def ptys(tmp_path):
    made = []

    def make(a, b):
        p = PtyPair(str(tmp_path / a), str(tmp_path / b))
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def start_daemon(sluice_factory, dev):
    d = sluice_factory(extra='[upload]\nserial = %s\nbaud = 115200\n' % json.dumps(dev))
    deadline = time.monotonic() + 10
    while "serial upload: listening on" not in d.stderr():
        assert d.running(), d.stderr()
        assert time.monotonic() < deadline, "the daemon did not open %s:\n%s" % (dev, d.stderr())
        time.sleep(0.05)
    return d


def send(d, dev, path, timeout=60):
    return subprocess.run([SLUICE_BIN, "rules", "send", "--serial", dev, str(path), "--config", d.config],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, cwd=d.cwd)


def status(d):
    p = d.cli("status", "--json")
    assert p.returncode == 0, p
    return json.loads(p.stdout)


def info(p):
    return "exit %s\nstdout: %s\nstderr: %s" % (
        p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))


def policy_source(d):
    # state.json names the active generation directory.
    with open(os.path.join(d.state_dir, "state.json"), encoding="utf-8") as f:
        gen = json.load(f)["policy"]["dir"]
    with open(os.path.join(d.state_dir, gen, "policy.toml"), encoding="utf-8") as f:
        return f.read()


def applied_count(d, want=None):
    """How many uploads the log says were applied; with `want`, waits up
    to 5 s for that many (the log writer is a thread of its own)."""
    deadline = time.monotonic() + 5
    n = d.stderr().count("octets applied")
    while want is not None and n < want and time.monotonic() < deadline:
        time.sleep(0.02)
        n = d.stderr().count("octets applied")
    return n


# ---------------------------------------------------------------------------
# the wire format, enough to recognise the operator's frames
# ---------------------------------------------------------------------------

def cobs_decode(data):
    out = bytearray()
    i = 0
    while i < len(data):
        code = data[i]
        if code == 0 or i + code > len(data):
            raise ValueError("bad COBS")
        out += data[i + 1:i + code]
        i += code
        if code < 0xFF and i < len(data):
            out.append(0)
    return bytes(out)


def varint(b, i):
    v = shift = 0
    while True:
        c = b[i]
        i += 1
        v |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return v, i


def parse_up(frame):
    """('begin'|'data'|'end', session, seq) of one operator frame (COBS, no delimiters)."""
    raw = cobs_decode(frame)
    n, i = varint(raw, 0)
    payload = raw[i:i + n]
    kind, j = varint(payload, 0)
    session, j = varint(payload, j)
    if kind == 0:
        return ("begin", session, 0)
    seq, j = varint(payload, j)
    return ({1: "data", 2: "end"}[kind], session, seq)


class Relay(threading.Thread):
    """Copies daemon-side `a` <-> operator-side `b`; `tamper(kind, session, seq, frame)`
    returns the frame to pass on (changed or not) or None to drop it."""

    def __init__(self, a, b, tamper):
        super().__init__(daemon=True)
        self.fa = os.open(a, os.O_RDWR | os.O_NOCTTY)
        self.fb = os.open(b, os.O_RDWR | os.O_NOCTTY)
        self.tamper = tamper
        self.seen = []  # (kind, session, seq) of every operator frame
        self.stop = False
        self.buf = b""

    def run(self):
        try:
            while not self.stop:
                r, _, _ = select.select([self.fa, self.fb], [], [], 0.1)
                if self.fa in r:
                    os.write(self.fb, os.read(self.fa, 4096))
                if self.fb in r:
                    self.buf += os.read(self.fb, 4096)
                    while b"\0" in self.buf:
                        frame, self.buf = self.buf.split(b"\0", 1)
                        if not frame:
                            continue
                        try:
                            what = parse_up(frame)
                        except (ValueError, IndexError, KeyError):
                            what = ("?", 0, 0)
                        self.seen.append(what)
                        out = self.tamper(*what, frame)
                        if out is not None:
                            os.write(self.fa, b"\0" + out + b"\0")
        except OSError:
            pass

    def close(self):
        self.stop = True
        self.join(5)
        os.close(self.fa)
        os.close(self.fb)


def relayed(ptys, sluice_factory, tamper):
    """daemon <-> A ~relay~ B <-> op; returns (daemon, op path, relay)."""
    p1 = ptys("daemon", "relay-a")
    p2 = ptys("relay-b", "op")
    relay = Relay(p1.b, p2.a, tamper)
    relay.start()
    d = start_daemon(sluice_factory, p1.a)
    return d, p2.b, relay


# ---------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------

def test_good_upload_is_installed(ptys, sluice_factory):
    pair = ptys("daemon", "op")
    d = start_daemon(sluice_factory, pair.a)
    before = status(d)
    p = send(d, pair.b, SAMPLE)
    assert p.returncode == 0, info(p)
    assert b"installed policy version" in p.stdout, info(p)
    s = status(d)
    assert s["policy"]["version"] != before["policy"]["version"], s
    assert s["policy"]["via"] == "serial %s" % pair.a, s
    assert s["previous"]["version"] == before["policy"]["version"], s
    with open(SAMPLE, encoding="utf-8") as f:
        assert policy_source(d) == f.read()
    assert s["policy"]["version"] in p.stdout.decode(), info(p)
    # The line stays open for the next upload: the same file again.
    p = send(d, pair.b, SAMPLE)
    assert p.returncode == 0, info(p)
    assert applied_count(d, 2) == 2, d.stderr()


def test_bad_rule_file_errors_come_back(ptys, sluice_factory, tmp_path):
    pair = ptys("daemon", "op")
    d = start_daemon(sluice_factory, pair.a)
    before = status(d)
    bad = tmp_path / "bad.toml"
    bad.write_text('version = 1\n[[connector]]\nname = "x"\nadress_spaces = ["*"]\n', encoding="utf-8")
    p = send(d, pair.b, bad)
    assert p.returncode == 1, info(p)
    assert ("%s:4:1: error:" % bad).encode() in p.stderr, info(p)
    assert b"adress_spaces" in p.stderr, info(p)
    assert status(d)["policy"] == before["policy"]
    # A good file right after is installed.
    p = send(d, pair.b, SAMPLE)
    assert p.returncode == 0, info(p)
    assert status(d)["policy"]["via"] == "serial %s" % pair.a


def test_corrupted_frame_is_resent_and_applied_once(ptys, sluice_factory):
    state = {"done": False}

    def flip_first_data(kind, session, seq, frame):
        if kind == "data" and not state["done"]:
            state["done"] = True
            b = bytearray(frame)
            k = len(b) // 2
            b[k] ^= 0x40
            if b[k] == 0:
                b[k] = 0x20
            return bytes(b)
        return frame

    d, op, relay = relayed(ptys, sluice_factory, flip_first_data)
    try:
        before = status(d)
        p = send(d, op, SAMPLE)
        assert p.returncode == 0, info(p)
        assert state["done"]
        data = [(s, q) for k, s, q in relay.seen if k == "data"]
        assert data[0] == data[1], "the damaged frame was not resent first: %r" % relay.seen[:6]
        assert len(data) == len(set(data)) + 1, "only the damaged frame is sent twice: %r" % data
    finally:
        relay.close()
    s = status(d)
    assert s["policy"]["version"] != before["policy"]["version"]
    assert s["policy"]["via"].startswith("serial ")
    with open(SAMPLE, encoding="utf-8") as f:
        assert policy_source(d) == f.read()
    assert applied_count(d) == 1, d.stderr()


def test_truncated_upload_changes_nothing(ptys, sluice_factory, tmp_path):
    cut = threading.Event()
    state = {"cutting": True}

    def cut_after_two(kind, session, seq, frame):
        if state["cutting"] and kind in ("data", "end") and (kind == "end" or seq > 2):
            cut.set()
            return None
        return frame

    d, op, relay = relayed(ptys, sluice_factory, cut_after_two)
    try:
        before = status(d)
        sender = subprocess.Popen([SLUICE_BIN, "rules", "send", "--serial", op, SAMPLE, "--config", d.config],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  cwd=d.cwd)
        assert cut.wait(20), "the upload never got past Data 2: %r" % relay.seen
        sender.send_signal(signal.SIGKILL)  # the operator's side dies half-way
        sender.wait(10)
        # The daemon forgets the stalled session (10 s without a frame) and
        # installs nothing.
        deadline = time.monotonic() + 20
        while "nothing applied" not in d.stderr():
            assert time.monotonic() < deadline, d.stderr()
            time.sleep(0.2)
        assert status(d)["policy"] == before["policy"]
        assert applied_count(d) == 0
        # The next upload goes through.
        state["cutting"] = False
        small = tmp_path / "rules.toml"
        with open(SAMPLE, encoding="utf-8") as f:
            text = f.read()
        small.write_text(text, encoding="utf-8")
        p = send(d, op, small)
        assert p.returncode == 0, info(p)
    finally:
        relay.close()
    assert status(d)["policy"]["via"].startswith("serial ")
    assert policy_source(d) == text
    assert applied_count(d) == 1, d.stderr()


def test_no_daemon_on_the_line_is_a_transport_failure(ptys, sluice_factory):
    pair = ptys("daemon", "op")
    d = sluice_factory()  # not listening on the line
    t0 = time.monotonic()
    p = send(d, pair.b, SAMPLE, timeout=120)
    assert p.returncode == 2, info(p)
    assert b"no answer" in p.stderr, info(p)
    assert time.monotonic() - t0 < 60
    p = send(d, "/nonexistent/tty", SAMPLE)
    assert p.returncode == 2, info(p)


def test_daemon_reopens_the_line_when_it_comes_back(ptys, sluice_factory):
    pair = ptys("daemon", "op")
    d = start_daemon(sluice_factory, pair.a)
    pair.close()  # the line goes away (a USB adapter pulled, socat restarted)
    deadline = time.monotonic() + 10
    while "reopening" not in d.stderr():
        assert time.monotonic() < deadline, d.stderr()
        time.sleep(0.1)
    pair = ptys("daemon", "op")
    deadline = time.monotonic() + 40
    while d.stderr().count("serial upload: listening on") < 2:
        assert d.running(), d.stderr()
        assert time.monotonic() < deadline, d.stderr()
        time.sleep(0.1)
    p = send(d, pair.b, SAMPLE)
    assert p.returncode == 0, info(p)
    assert status(d)["policy"]["via"] == "serial %s" % pair.a
