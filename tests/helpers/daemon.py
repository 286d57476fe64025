"""The daemon under test: where its binary is, the config a test daemon
gets, and `Launcher`/`Sluice`, which start it on picked loopback ports,
wait for its listener, stop it, read its log and run its CLI.

Delivery goes nowhere unless a test routes it: every test domain has a
static MX on a loopback port that refuses connections and the DNS servers
are that closed port, so the daemon never sends a packet off the machine.
"""

import json
import os
import shutil
import signal
import subprocess
import time

from helpers.ports import free_port
from helpers.smtp import RawSMTP, check

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOSTNAME = "edge1.test"
# Every domain a test sends to or from: given a static MX so no DNS is needed.
TEST_DOMAINS = ["example.test", "exämple.test", "xn--exmple-cua.test", "x", "y",
                "client.test", "edge1.test"]


def find_binary():
    """The sluice binary: $SLUICE_BIN, else $CARGO_BIN_EXE_sluice, else
    target/debug/sluice of this repository when it exists; None otherwise."""
    for var in ("SLUICE_BIN", "CARGO_BIN_EXE_sluice"):
        if os.environ.get(var):
            return os.environ[var]
    built = os.path.join(ROOT, "target", "debug", "sluice")
    return built if os.path.exists(built) else None


SLUICE_BIN = find_binary()
NO_BINARY = ("no sluice binary: set SLUICE_BIN (or CARGO_BIN_EXE_sluice) to its path, "
             "or build %s with `cargo build --bin sluice`" % os.path.join(ROOT, "target", "debug", "sluice"))


def toml_value(v):
    """`v` (bool, int, str, list) written as a TOML value."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(v)


def _listen_lines(port, port6, tls, starttls):
    lines = []
    for a in ["127.0.0.1:%d" % port] + (["[::1]:%d" % port6] if port6 else []):
        lines += ["[[listen]]", "address = %s" % toml_value(a),
                  "starttls = %s" % toml_value(bool(tls) and starttls), ""]
    return lines


def _tls_lines(tls, ca, client_ca):
    if not tls:
        return []
    lines = ["[tls]"]
    if ca:
        lines.append("ca = %s" % toml_value(ca))
    if client_ca:
        lines.append("client_ca = %s" % toml_value(client_ca))
    return lines + ["certificate = %s" % toml_value(tls[0]), "key = %s" % toml_value(tls[1]), ""]


def _dns_lines(dead_port, dns_servers, static, static_mx, dns_extra):
    if dns_servers is None:
        dns_servers = ["127.0.0.1:%d" % dead_port]
    if static is None:
        static = {"mx.dead.test": ["127.0.0.1:%d" % dead_port]}
    if static_mx is None:
        static_mx = {d: [(10, "mx.dead.test")] for d in TEST_DOMAINS if d.isascii()}
    st = ", ".join("%s = %s" % (toml_value(n), toml_value(list(a))) for n, a in static.items())
    smx = ", ".join("%s = [%s]" % (toml_value(d), ", ".join("[%d, %s]" % (p, toml_value(h)) for p, h in mxs))
                    for d, mxs in static_mx.items())
    return ["[dns]", "servers = %s" % toml_value(list(dns_servers))] + (
        [dns_extra.rstrip("\n")] if dns_extra else []) + [
        "static = { %s }" % st, "static_mx = { %s }" % smx, ""]


def write_config(path, *, port, port6=None, spool_dir, state_dir, tls=None, starttls=True,
                 limits=None, dead_port, hostname=HOSTNAME, extra="", rules=None, retry='"1h"',
                 queue_extra="", dns_servers=None, static=None, static_mx=None, dns_extra="",
                 ca=None, client_ca=None, syslog_target="stderr"):
    """Writes a daemon config: listeners on `port` (and `port6` on ::1),
    `tls` a (certificate, key) pair, `rules` a rule-file path, `retry` the
    TOML of the retry list, `queue_extra`/`dns_extra` raw lines for those
    sections, `static`/`static_mx` the static DNS tables (default: every
    test domain to a refusing port), `extra` raw TOML at the end."""
    lines = (["rules = %s" % toml_value(rules)] if rules else []) + [
        "hostname = %s" % toml_value(hostname),
        "spool_dir = %s" % toml_value(spool_dir),
        "state_dir = %s" % toml_value(state_dir), ""]
    lines += _listen_lines(port, port6, tls, starttls) + _tls_lines(tls, ca, client_ca)
    if limits:
        lines += ["[limits]"] + ["%s = %s" % (k, toml_value(v)) for k, v in limits.items()] + [""]
    lines += ["[queue]", "retry = [%s]" % retry] + ([queue_extra.rstrip("\n")] if queue_extra else []) + [""]
    lines += _dns_lines(dead_port, dns_servers, static, static_mx, dns_extra)
    lines += ["[syslog]", "target = %s" % toml_value(syslog_target), ""]
    if extra:
        lines.append(extra)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


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
        assert SLUICE_BIN and os.path.exists(SLUICE_BIN), NO_BINARY
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

    def wait_log(self, text, timeout=10.0):
        """The stderr log once it holds `text` (the log writer is a thread
        of its own: a line may land just after the reply it follows)."""
        deadline = time.monotonic() + timeout
        log = self.stderr()
        while text not in log and time.monotonic() < deadline:
            time.sleep(0.05)
            log = self.stderr()
        return log

    def edit_config(self, old, new):
        """Replaces `old` (which must be there) by `new` in the config file."""
        with open(self.config, encoding="utf-8") as f:
            text = f.read()
        assert old in text, "%r not in the config:\n%s" % (old, text)
        with open(self.config, "w", encoding="utf-8") as f:
            f.write(text.replace(old, new))

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


class Launcher:
    """Makes daemons under `base` (one work directory each), every one on
    its own picked ports; `dead_port` refuses connections and `tls_files`
    is the (certificate, key) pair a TLS daemon gets a copy of."""

    def __init__(self, base, dead_port, tls_files):
        self.base = str(base)
        self.dead_port = dead_port
        self.tls_files = tls_files
        self.made = []

    def make(self, tls=False, ipv6=False, spool_dir=None, start=True, rules_text=None, **config):
        """A daemon (started unless `start` is false); `rules_text` is
        written to its rules.toml, `config` goes to write_config."""
        work = os.path.join(self.base, "d%d" % len(self.made))
        os.mkdir(work)
        spool = spool_dir or os.path.join(work, "spool")
        state = os.path.join(work, "state")
        tls_paths = None
        if tls:
            tls_paths = (os.path.join(work, "cert.pem"), os.path.join(work, "key.pem"))
            shutil.copy(self.tls_files[0], tls_paths[0])
            shutil.copy(self.tls_files[1], tls_paths[1])
        if rules_text is not None:
            config["rules"] = os.path.join(work, "rules.toml")
            with open(config["rules"], "w", encoding="utf-8") as f:
                f.write(rules_text)
        port = free_port()
        port6 = free_port("::1") if ipv6 else None
        cfg = os.path.join(work, "sluice.toml")
        write_config(cfg, port=port, port6=port6, spool_dir=spool, state_dir=state, tls=tls_paths,
                     dead_port=self.dead_port, **config)
        d = Sluice(work, cfg, spool, state, port, port6, bool(tls), tls_paths and tls_paths[0])
        self.made.append(d)
        if start:
            d.start()
        return d

    def cleanup(self, dump_logs):
        """Kills every daemon made; prints their logs when `dump_logs`."""
        for d in self.made:
            d.kill9()
            if dump_logs:
                log = d.stderr()
                if len(log) > 20000:
                    log = "...\n" + log[-20000:]
                print("\n==== sluice stderr (%s) ====\n%s" % (d.config, log))


def relay(sluice_factory, routes, rules_text=None, retry='"1s"', expire=None, warn=None, queue_extra="",
          **kw):
    """A daemon whose static DNS sends each name in `routes` (name -> port)
    to that loopback port, and each domain in routes["mx"] (domain -> host)
    to that host; DNS servers: a closed port."""
    static = {name: ["127.0.0.1:%d" % port] for name, port in routes.items() if "." in name}
    static_mx = {dom: [(10, host)] for dom, host in routes.get("mx", {}).items()}
    queue = (('expire_after = "%s"\n' % expire if expire else "") + ('warn_after = "%s"\n' % warn if warn else "")
             + queue_extra)
    return sluice_factory(rules_text=rules_text, retry=retry, queue_extra=queue, dns_servers=["127.0.0.1:1"],
                          static=static, static_mx=static_mx, **kw)


def dns_daemon(sluice_factory, dns_servers, static=None, static_mx=None, retry='"1s"', **kw):
    """A daemon that asks `dns_servers` (2 s, one attempt) and knows only
    `static` (name -> ["ip:port"]) and `static_mx` (domain -> [(pref, host)])."""
    return sluice_factory(dns_servers=dns_servers, static=static or {}, static_mx=static_mx or {},
                          dns_extra="timeout = 2\nattempts = 1\n", retry=retry, **kw)
