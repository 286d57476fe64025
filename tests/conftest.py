"""Harness for sluice's black-box tests.

The binary is $SLUICE_BIN, else /work/main/target/debug/sluice (build it first:
`cargo build --bin sluice`). Run: `python3 -m pytest -q tests/`.

Each test starts its own daemon on 127.0.0.1 (port picked by binding port 0),
in a temp dir with its own config, spool and state. Delivery of what it spools
can go nowhere: every test domain has a static MX on a loopback port that
refuses connections, and the DNS servers are a closed loopback port, so the
daemon never sends a packet off the machine and nothing leaves the spool.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from smtpclient import RawSMTP, check  # noqa: E402

SLUICE_BIN = os.environ.get("SLUICE_BIN", "/work/main/target/debug/sluice")


def needs_tool(available, reason):
    """Mark for tests that need an outside tool (socat, sshd, rsyslogd):
    skipped when it is missing, except under CI (the CI environment
    variable set), where a missing tool fails the test instead."""
    if available or not os.environ.get("CI"):
        return pytest.mark.skipif(not available, reason=reason)
    return pytest.mark.missing_tool(reason)


def pytest_configure(config):
    config.addinivalue_line("markers", "missing_tool(reason): a needed tool is missing under CI: fail")


@pytest.fixture(autouse=True)
def _fail_when_a_tool_is_missing_under_ci(request):
    m = request.node.get_closest_marker("missing_tool")
    if m is not None:
        pytest.fail("CI is set and %s" % m.args[0], pytrace=False)
HOSTNAME = "edge1.test"
# Every domain a test sends to or from: given a static MX so no DNS is needed.
TEST_DOMAINS = ["example.test", "exämple.test", "xn--exmple-cua.test", "x", "y",
                "client.test", "edge1.test"]


def free_port(host="127.0.0.1"):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def ipv6_available():
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.bind(("::1", 0))
        s.close()
        return True
    except OSError:
        return False


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(v)


class Sluice:
    """One daemon under test, with helpers around its CLI."""

    def __init__(self, workdir, config_path, spool_dir, state_dir, port, port6, tls, cert):
        self.workdir = workdir
        self.cwd = workdir  # where the daemon and the CLI run
        self.config = config_path
        self.spool_dir = spool_dir
        self.state_dir = state_dir
        self.host = "127.0.0.1"
        self.port = port
        self.port6 = port6
        self.tls = tls
        self.cert = cert
        self.proc = None
        self.log_path = os.path.join(workdir, "sluice.stderr")
        self.starts = 0

    # -- process -------------------------------------------------------
    def start(self, timeout=10.0):
        assert os.path.exists(SLUICE_BIN), "no sluice binary at %s (set SLUICE_BIN)" % SLUICE_BIN
        self.starts += 1
        log = open(self.log_path, "ab")
        log.write(b"---- start %d ----\n" % self.starts)
        log.flush()
        self.proc = subprocess.Popen(
            [SLUICE_BIN, "run", "--config", self.config],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.cwd,
            start_new_session=True)
        log.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=10.0):
        """Poll until the listener answers with a greeting; end that probe session cleanly."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("sluice exited with %s during startup:\n%s"
                                     % (self.proc.returncode, self.stderr()))
            try:
                with RawSMTP(self.host, self.port, timeout=max(0.5, deadline - time.monotonic())) as c:
                    g = c.reply()
                    check(g, 220)
                    c.send(b"QUIT\r\n")
                    c.reply()
                    c.wait_closed(2)
                return
            except (ConnectionRefusedError, ConnectionResetError) as e:
                last = e
                time.sleep(0.05)
        raise AssertionError("sluice did not accept connections within %ss (%r):\n%s"
                             % (timeout, last, self.stderr()))

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        if self.running():
            self.proc.send_signal(sig)

    def stop(self, timeout=10.0):
        """SIGTERM, then wait; returns the exit code (raises if it did not exit in time)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise AssertionError("sluice did not exit within %ss of SIGTERM" % timeout)

    def kill9(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self, timeout=10.0):
        if self.running():
            self.stop()
        return self.start(timeout)

    def stderr(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    # -- CLI -------------------------------------------------------------
    def cli(self, *args, timeout=30):
        return subprocess.run([SLUICE_BIN, *args, "--config", self.config],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                              cwd=self.cwd)

    def queue_list(self):
        p = self.cli("queue", "list", "--json")
        assert p.returncode == 0, "queue list failed (%d): %s" % (p.returncode, p.stderr.decode(errors="replace"))
        out = json.loads(p.stdout.decode("utf-8"))
        assert isinstance(out, list), out
        return out

    def queue_raw(self, qid):
        p = self.cli("queue", "show", qid, "--raw")
        assert p.returncode == 0, "queue show %s --raw failed (%d): %s" % (
            qid, p.returncode, p.stderr.decode(errors="replace"))
        return p.stdout

    def queue_json(self, qid):
        p = self.cli("queue", "show", qid, "--json")
        assert p.returncode == 0, "queue show %s --json failed (%d): %s" % (
            qid, p.returncode, p.stderr.decode(errors="replace"))
        return json.loads(p.stdout.decode("utf-8"))

    def queue_entry(self, qid):
        entries = [e for e in self.queue_list() if e["id"] == qid]
        assert len(entries) == 1, "id %s listed %d times in the queue" % (qid, len(entries))
        return entries[0]

    # -- clients -----------------------------------------------------------
    def connect(self, timeout=10.0, source=None, greet=True):
        c = RawSMTP(self.host, self.port, timeout=timeout, source=source)
        if greet:
            c.greeting()
        return c

    def session(self, timeout=10.0):
        """Connected, greeted and EHLO'd."""
        c = self.connect(timeout)
        c.ehlo()
        return c


def write_config(path, *, port, port6=None, spool_dir, state_dir, tls=None, starttls=True,
                 limits=None, dead_port, hostname=HOSTNAME, extra=""):
    lines = ["hostname = %s" % toml_value(hostname),
             "spool_dir = %s" % toml_value(spool_dir),
             "state_dir = %s" % toml_value(state_dir), ""]
    addrs = ["127.0.0.1:%d" % port]
    if port6:
        addrs.append("[::1]:%d" % port6)
    for a in addrs:
        lines += ["[[listen]]", "address = %s" % toml_value(a),
                  "starttls = %s" % toml_value(bool(tls) and starttls), ""]
    if tls:
        lines += ["[tls]", "certificate = %s" % toml_value(tls[0]), "key = %s" % toml_value(tls[1]), ""]
    if limits:
        lines.append("[limits]")
        for k, v in limits.items():
            lines.append("%s = %s" % (k, toml_value(v)))
        lines.append("")
    mx = ", ".join('%s = [[10, "mx.dead.test"]]' % toml_value(d) for d in TEST_DOMAINS if d.isascii())
    lines += ["[queue]", 'retry = ["1h"]', "",
              "[dns]",
              'servers = ["127.0.0.1:%d"]' % dead_port,
              'static = { "mx.dead.test" = ["127.0.0.1:%d"] }' % dead_port,
              "static_mx = { %s }" % mx, "",
              "[syslog]", 'target = "stderr"', ""]
    if extra:
        lines.append(extra)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture(scope="session")
def dead_port():
    """A loopback TCP port that is bound but never listens: connections are refused."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    yield s.getsockname()[1]
    s.close()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    """A self-signed certificate for edge1.test, made with the openssl CLI."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", "3", "-subj", "/CN=" + HOSTNAME,
         "-addext", "subjectAltName=DNS:" + HOSTNAME],
        check=True, capture_output=True, timeout=30)
    return cert, key


@pytest.fixture
def sluice_factory(tmp_path, request, dead_port, tls_files):
    """make(tls=False, ipv6=False, limits=None, spool_dir=None, start=True) -> Sluice."""
    made = []

    def make(tls=False, ipv6=False, limits=None, spool_dir=None, start=True, starttls=True, extra=""):
        work = tmp_path / ("d%d" % len(made))
        work.mkdir()
        spool = spool_dir or str(work / "spool")
        state = str(work / "state")
        tls_paths = None
        if tls:
            shutil.copy(tls_files[0], work / "cert.pem")
            shutil.copy(tls_files[1], work / "key.pem")
            tls_paths = (str(work / "cert.pem"), str(work / "key.pem"))
        port = free_port()
        port6 = free_port("::1") if ipv6 else None
        cfg = str(work / "sluice.toml")
        write_config(cfg, port=port, port6=port6, spool_dir=spool, state_dir=state, tls=tls_paths,
                     starttls=starttls, limits=limits, dead_port=dead_port, extra=extra)
        d = Sluice(str(work), cfg, spool, state, port, port6, bool(tls), tls_paths and tls_paths[0])
        made.append(d)
        if start:
            d.start()
        return d

    yield make

    failed = any(getattr(request.node, "rep_" + w, None) is not None and
                 getattr(request.node, "rep_" + w).failed for w in ("setup", "call"))
    for d in made:
        d.kill9()
        if failed:
            log = d.stderr()
            if len(log) > 20000:
                log = "...\n" + log[-20000:]
            print("\n==== sluice stderr (%s) ====\n%s" % (d.config, log))


@pytest.fixture
def sluice(sluice_factory):
    """A daemon with the default limits, no TLS."""
    return sluice_factory()


@pytest.fixture
def sluice_tls(sluice_factory):
    """A daemon offering STARTTLS with a self-signed certificate for edge1.test."""
    return sluice_factory(tls=True)
