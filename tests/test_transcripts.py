"""Golden transcripts of the receiver: tests/transcripts/NAME.in is what a
client sends, NAME.ref the daemon's exact replies; each runs against the real
daemon and the replies are diffed. The format is in tests/transcripts/README.

To record a .ref deliberately (a new transcript, or a reply changed on
purpose), run with SLUICE_TRANSCRIPTS_RECORD=1, then read the diff of the
.ref files before committing them.
"""

import ast
import difflib
import glob
import os
import re
import socket
import time

import pytest

from helpers.rules import variant_text
from helpers.smtp import unverified_context

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "transcripts")
RECORD = bool(os.environ.get("SLUICE_TRANSCRIPTS_RECORD"))
NAMES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(HERE, "*.in")))
FINAL = re.compile(rb"^\d{3}(?: [^\r\n]*)?\r\n")
# The body a `!bdat N` chunk takes its first N bytes from.
BDAT_BODY = b"Subject: chunked\r\n\r\n" + b"0123456789abcdef\r\n" * 4096
QUIET = 1.0 if RECORD else 0.2  # how long no more bytes means no more replies


def bursts(text):
    """The .in file as a list of bursts (blank-line separated), each a list
    of (kind, argument): ("send", bytes) or ("starttls", None)."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        steps = []
        for line in block.splitlines():
            if not line or line.startswith("#"):
                continue
            steps.append(step(line))
        if steps:
            out.append(steps)
    return out


def step(line):
    """One line of a .in file as a (kind, argument) step."""
    if line == "C:" or line.startswith("C: "):
        return ("send", line[3:].encode("utf-8") + b"\r\n")
    if line.startswith("R: "):
        return ("send", ast.literal_eval('b"%s"' % line[3:].replace('"', '\\"')))
    words = line.split()
    if words[0] == "!starttls":
        return ("starttls", None)
    if words[0] == "!fill":
        return ("send", b"x" * int(words[1]))
    if words[0] == "!bdat":
        n = int(words[1])
        return ("send", b"BDAT %d%s\r\n" % (n, b" LAST" if words[2:] == ["LAST"] else b"") + BDAT_BODY[:n])
    raise ValueError("bad transcript line: %r" % line)


def placeholders(line):
    """A reply line with what changes from run to run replaced (<QID>)."""
    return re.sub(r"\b[0-9A-F]{16}\b", "<QID>", line)


class Client:
    """A socket that reads replies until the expected number of final lines
    came and then nothing more for QUIET seconds."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        self.closed = False

    def read(self, finals):
        lines = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not self.closed:
            done = sum(1 for ln in lines if FINAL.match(ln)) >= finals
            self.sock.settimeout(QUIET if done else max(0.05, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except (socket.timeout, TimeoutError):
                if done:
                    break
                continue
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
            self.buf += chunk
            while b"\r\n" in self.buf:
                ln, self.buf = self.buf.split(b"\r\n", 1)
                lines.append(ln + b"\r\n")
        return [placeholders(ln.decode("utf-8", "replace").rstrip("\r\n")) for ln in lines]

    def starttls(self):
        self.sock = unverified_context().wrap_socket(self.sock, server_hostname="edge1.test")


def expected_groups(ref):
    """The .ref file as reply groups (greeting first, then one per burst)."""
    groups = [[]]
    for line in ref.splitlines():
        if line == "":
            groups.append([])
        elif line.startswith("S: "):
            groups[-1].append(line[3:])
    return groups


def run(port, script, groups):
    """Runs the bursts; returns the .ref text of what the daemon said."""
    finals = [sum(1 for ln in g if re.match(r"^\d{3}( |$)", ln)) for g in groups] + [1] * (len(script) + 1)
    c = Client(port)
    got = [c.read(finals[0])]
    for i, burst in enumerate(script):
        for kind, arg in burst:
            if kind == "starttls":
                c.starttls()
            else:
                c.sock.sendall(arg)
        got.append(c.read(finals[i + 1]))
    c.sock.close()
    return "\n\n".join("\n".join("S: " + ln for ln in g) for g in got) + "\n" + ("!closed\n" if c.closed else "")


@pytest.fixture
def transcript_daemon(sluice_factory):
    """A daemon with STARTTLS, at most 3 recipients, and the sample rules
    with 127.0.0.1 anonymous (so relaying outside the domains is denied)."""
    return sluice_factory(tls=True, limits={"max_recipients": 3},
                          rules_text=variant_text("onprem_off_loopback"))


@pytest.mark.parametrize("name", NAMES)
def test_transcript(transcript_daemon, name):
    with open(os.path.join(HERE, name + ".in"), encoding="utf-8") as f:
        script = bursts(f.read())
    ref_path = os.path.join(HERE, name + ".ref")
    ref = open(ref_path, encoding="utf-8").read() if os.path.exists(ref_path) else ""
    got = run(transcript_daemon.port, script, expected_groups(ref))
    if RECORD:
        with open(ref_path, "w", encoding="utf-8") as f:
            f.write(got)
        return
    assert ref, "no %s: record it with SLUICE_TRANSCRIPTS_RECORD=1" % ref_path
    diff = "".join(difflib.unified_diff(ref.splitlines(True), got.splitlines(True), name + ".ref", "got"))
    assert got == ref, "replies differ from %s:\n%s" % (ref_path, diff)


def test_there_are_transcripts():
    assert len(NAMES) >= 8, NAMES
