"""Delivery against real DNS and real TLS checks.

MX fallback: a real DNS server (Debian's dnsmasq, started here on a loopback
port) serves the MX and A records; the daemon's `[dns] servers` points at it
and its static tables say nothing about the names under test. MX hosts are
contacted on port 25, so their sinks listen on port 25 of distinct loopback
addresses in a random 127.R.S.0/24 (tests run as root; they skip when port
25 cannot be bound). Only loopback addresses are ever used.

Forced TLS: the `fabrikam` connector of config/rules.toml has tls = "verify";
a test CA made with openssl signs the sinks' certificates and is given to
the daemon as `[tls] ca`; a certificate for the wrong name (or from a CA the
daemon does not trust) must stop delivery."""
import os
import random
import shutil
import socket
import struct
import subprocess
import threading
import time

import pytest

from helpers import certs
from helpers.daemon import dns_daemon
from helpers.ports import free_port
from helpers.queue import detail, state_names, states, submit
from helpers.rules import sample_text
from helpers.sink import Sink

DNSMASQ = shutil.which("dnsmasq") or next(
    (p for p in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq") if os.access(p, os.X_OK)), None)


# ---------------------------------------------------------------- sinks -----

class Greeter:
    """Answers every connection with one line (e.g. "421 4.3.2 busy") and closes."""

    def __init__(self, host, port, line):
        self.line = line.encode() + b"\r\n"
        self.connections = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            try:
                conn.settimeout(2)
                conn.sendall(self.line)
                conn.shutdown(socket.SHUT_WR)
                # Read what the client says (QUIT, perhaps) until it closes.
                while conn.recv(4096):
                    pass
            except OSError:
                pass
            finally:
                conn.close()

    def stop(self):
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def servers():
    """make(kind, *args, **kw): a started Sink or Greeter, stopped at teardown."""
    made = []

    def make(kind, *args, **kw):
        if kind == "greeter":
            s = Greeter(*args, **kw)
        else:
            s = Sink(*args, **kw).start()
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


# ----------------------------------------------------------- dnsmasq --------

def dns_query(port, name, qtype, timeout=0.5):
    """One UDP query to 127.0.0.1:port; the raw answer (or None)."""
    qid = random.randrange(65536)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    q += struct.pack(">HH", qtype, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(q, ("127.0.0.1", port))
        a = s.recv(4096)
        return a if a[:2] == q[:2] else None
    except OSError:
        return None
    finally:
        s.close()


class DnsServer:
    def __init__(self, proc, port, base, log_path):
        self.proc = proc
        self.port = port
        self.base = base  # "127.R.S."
        self.log_path = log_path

    def addr(self, last):
        return self.base + str(last)

    def log(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def queries(self, qtype, name):
        return self.log().count("query[%s] %s from" % (qtype, name))


def pick_subnet():
    """A random 127.R.S. prefix where port 25 of .21 can be bound (skips
    when binding port 25 is not allowed)."""
    rnd = random.SystemRandom()
    for _ in range(20):
        base = "127.%d.%d." % (rnd.randint(100, 254), rnd.randint(1, 254))
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((base + "21", 25))
            return base
        except PermissionError as e:
            pytest.skip("cannot bind port 25 on loopback (not root?): %s" % e)
        except OSError:
            continue
        finally:
            s.close()
    pytest.skip("no free loopback address for port 25 sinks")


@pytest.fixture(scope="module")
def dns(tmp_path_factory):
    """dnsmasq on 127.0.0.1:<port>, authoritative for .test:
    pref.test  MX 10 mx1.pref.test (.21), MX 20 mx2.pref.test (.22)
    eq.test    MX 10 mxa.eq.test (.24), MX 10 mxb.eq.test (.25)
    amx.test   no MX, A .23
    null.test  MX 0 "." (RFC 7505)"""
    if not DNSMASQ:
        pytest.skip("dnsmasq is not installed (Debian package dnsmasq-base)")
    base = pick_subnet()
    work = tmp_path_factory.mktemp("dnsmasq")
    records = [
        "--mx-host=pref.test,mx1.pref.test,10", "--mx-host=pref.test,mx2.pref.test,20",
        "--host-record=mx1.pref.test,%s21" % base, "--host-record=mx2.pref.test,%s22" % base,
        "--mx-host=eq.test,mxa.eq.test,10", "--mx-host=eq.test,mxb.eq.test,10",
        "--host-record=mxa.eq.test,%s24" % base, "--host-record=mxb.eq.test,%s25" % base,
        "--host-record=amx.test,%s23" % base,
        "--mx-host=null.test,.,0",
    ]
    last = ""
    for attempt in range(5):
        port = free_port()
        log_path = str(work / ("dnsmasq%d.log" % attempt))
        log = open(log_path, "wb")
        proc = subprocess.Popen(
            [DNSMASQ, "--no-daemon", "--conf-file=/dev/null", "--port=%d" % port,
             "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
             "--pid-file=" + str(work / "dnsmasq.pid"),
             # Answer for .test from the records only: NODATA / NXDOMAIN, never REFUSED.
             "--local=/test/", "--log-queries", "--log-facility=-", *records],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 5
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            if dns_query(port, "pref.test", 15, timeout=0.2):
                ready = True
                break
            time.sleep(0.05)
        if ready:
            break
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        last = open(log_path, encoding="utf-8", errors="replace").read()
    else:
        pytest.fail("dnsmasq did not start:\n%s" % last)
    server = DnsServer(proc, port, base, log_path)
    # dnsmasq must publish the null MX as such (preference 0, root name).
    a = dns_query(port, "null.test", 15)
    assert a is not None and a.endswith(b"\x00\x0f\x00\x01" + b"\x00\x00\x00\x00" + b"\x00\x03\x00\x00\x00"), \
        "dnsmasq did not serve a null MX for null.test: %r" % a
    yield server
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def mx_daemon(sluice_factory, dns, **kw):
    return dns_daemon(sluice_factory, ["127.0.0.1:%d" % dns.port], **kw)


# ------------------------------------------------------- MX fallback -------

def test_the_preferred_mx_gets_the_mail(dns, sluice_factory, servers):
    mx1 = servers("sink", dns.addr(21), 25)
    mx2 = servers("sink", dns.addr(22), 25)
    d = mx_daemon(sluice_factory, dns)
    qids = [submit(d, "a@contoso.com", ["x%d@pref.test" % i], "pref %d" % i) for i in range(4)]
    mx1.wait(4)
    for q in qids:
        states(d, q, ["Delivered"])
    assert sorted(m.rcpts[0] for m in mx1.messages) == ["x%d@pref.test" % i for i in range(4)]
    assert mx2.messages == [], "preference 20 used while preference 10 was up"
    assert dns.queries("MX", "pref.test") >= 1, "the MX did not come from the DNS server"


def test_preferred_mx_down_the_next_one_gets_the_mail(dns, sluice_factory, servers):
    # Nothing listens on mx1's address: connection refused.
    mx2 = servers("sink", dns.addr(22), 25)
    d = mx_daemon(sluice_factory, dns)
    qid = submit(d, "a@contoso.com", ["x@pref.test"], "mx1 down")
    m = mx2.wait(1)
    assert m[0].rcpts == ["x@pref.test"] and m[0].mail_from == "a@contoso.com"
    entry = states(d, qid, ["Delivered"])
    assert "captured" in detail(entry).get("reply", ""), entry
    log = d.stderr()
    assert "SEND qid=%s" % qid in log, log  # the log names the message so
    assert "DEFER qid=%s" % qid not in log, "fallback must happen within the attempt"


@pytest.mark.parametrize("refusal", ["greeting 421 4.3.2 busy", "greeting 451 4.3.0 not now",
                                     "mail 451 4.3.0 try later"])
def test_preferred_mx_refuses_the_next_one_gets_the_mail(dns, sluice_factory, servers, refusal):
    where, reply = refusal.split(" ", 1)
    if where == "greeting":
        mx1 = servers("greeter", dns.addr(21), 25, reply)
    else:
        mx1 = servers("sink", dns.addr(21), 25, mail_reply=reply)
    mx2 = servers("sink", dns.addr(22), 25)
    d = mx_daemon(sluice_factory, dns)
    qid = submit(d, "a@contoso.com", ["x@pref.test"], "mx1 refuses")
    m = mx2.wait(1)
    assert m[0].rcpts == ["x@pref.test"]
    states(d, qid, ["Delivered"])
    if where == "greeting":
        assert mx1.connections >= 1, "mx1 (preference 10) was never tried"
    else:
        assert mx1.ehlos and mx1.messages == [], "mx1 (preference 10) was never tried"
    assert len(mx2.messages) == 1


def test_equal_preferences_share_the_load(dns, sluice_factory, servers):
    a = servers("sink", dns.addr(24), 25)
    b = servers("sink", dns.addr(25), 25)
    d = mx_daemon(sluice_factory, dns)
    n = 30
    qids = [submit(d, "a@contoso.com", ["x%d@eq.test" % i], "eq %d" % i) for i in range(n)]
    deadline = time.time() + 20
    while len(a.messages) + len(b.messages) < n and time.time() < deadline:
        time.sleep(0.05)
    for q in qids:
        states(d, q, ["Delivered"])
    got = sorted(m.rcpts[0] for m in a.messages + b.messages)
    assert got == sorted("x%d@eq.test" % i for i in range(n)), got
    assert len(a.messages) >= 3 and len(b.messages) >= 3, \
        "two MX at preference 10 should share %d messages; got %d / %d" % (
            n, len(a.messages), len(b.messages))


def test_no_mx_falls_back_to_the_a_record(dns, sluice_factory, servers):
    host = servers("sink", dns.addr(23), 25)
    d = mx_daemon(sluice_factory, dns)
    qid = submit(d, "a@contoso.com", ["x@amx.test"], "implicit mx")
    m = host.wait(1)
    assert m[0].rcpts == ["x@amx.test"]
    states(d, qid, ["Delivered"])
    assert dns.queries("MX", "amx.test") >= 1 and dns.queries("A", "amx.test") >= 1


def test_null_mx_bounces_at_once(dns, sluice_factory, servers):
    home = servers("sink")  # where the DSN goes: home.test, from the static tables
    d = mx_daemon(sluice_factory, dns, static={"mx.home.test": ["127.0.0.1:%d" % home.port]},
                  static_mx={"home.test": [(10, "mx.home.test")]})
    before = dns.queries("MX", "null.test")
    qid = submit(d, "a@home.test", ["x@null.test"], "to a null mx")
    entry = states(d, qid, [("Bounced", "Notified")])
    reason = detail(entry).get("reason", "")
    assert "5.1.10" in reason, entry
    dsn = home.wait(1)[0]
    assert dsn.mail_from in ("", "<>") and dsn.rcpts == ["a@home.test"]
    assert b"Status: 5.1.10" in dsn.data, dsn.data[:2000]
    assert b"to a null mx" in dsn.data
    # No retry: with retry = 1s, another attempt would ask DNS again.
    time.sleep(2.5)
    assert dns.queries("MX", "null.test") - before == 1, dns.log()
    log = d.stderr()
    assert "BOUNCE qid=%s" % qid in log, log  # the log names the message so
    assert "DEFER qid=%s" % qid not in log, log
    assert state_names(d.queue_json(qid))[0] in ("Bounced", "Notified")
    assert len(home.messages) == 1


# -------------------------------------------------------- TLS verify -------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A test CA, a CA the daemon does not know, and server certificates."""
    if not certs.have_openssl():
        pytest.skip("openssl CLI not installed")
    d = tmp_path_factory.mktemp("pki")
    test_ca = certs.make_ca(d, "ca", "sluice test ca")
    rogue_ca = certs.make_ca(d, "rogue", "sluice test rogue")
    return {
        "ca": test_ca[0],
        "mx1": certs.make_leaf(d, test_ca, "mx1", "mx1.fabrikam.example"),
        "mx2": certs.make_leaf(d, test_ca, "mx2", "mx2.fabrikam.example"),
        "wrong": certs.make_leaf(d, test_ca, "wrong", "wrong.example"),
        "rogue-mx1": certs.make_leaf(d, rogue_ca, "rogue-mx1", "mx1.fabrikam.example"),
        "rogue-mx2": certs.make_leaf(d, rogue_ca, "rogue-mx2", "mx2.fabrikam.example"),
    }


def server_context(pair):
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*pair)
    return ctx


def fabrikam_daemon(sluice_factory, tmp_path, pki, mx1_port, mx2_port):
    return dns_daemon(sluice_factory, ["127.0.0.1:1"],
                      static={"mx1.fabrikam.example": ["127.0.0.1:%d" % mx1_port],
                              "mx2.fabrikam.example": ["127.0.0.1:%d" % mx2_port]},
                      rules_text=sample_text(), tls=True, ca=pki["ca"])


def test_verify_delivers_to_a_host_with_the_right_certificate(sluice_factory, tmp_path, servers, pki):
    mx1 = servers("sink", "127.0.0.1", tls_context=server_context(pki["mx1"]))
    d = fabrikam_daemon(sluice_factory, tmp_path, pki, mx1.port, free_port())  # mx2: refused
    # 127.0.0.1 is exchange-onprem in the sample: originating.
    qid = submit(d, "user@contoso.com", ["x@fabrikam.com"], "verified")
    m = mx1.wait(1)
    assert m[0].rcpts == ["x@fabrikam.com"] and m[0].mail_from == "user@contoso.com"
    assert m[0].tls, "the message reached the sink in clear text"
    assert [tls for _, tls in mx1.ehlos] == [False, True], mx1.ehlos  # EHLO, STARTTLS, EHLO
    states(d, qid, ["Delivered"])


@pytest.mark.parametrize("bad", ["wrong name", "unknown CA"])
def test_verify_rejects_a_bad_certificate(sluice_factory, tmp_path, servers, pki, bad):
    # Both smart hosts present a bad certificate: nothing may be delivered.
    pairs = ([pki["wrong"], pki["wrong"]] if bad == "wrong name"
             else [pki["rogue-mx1"], pki["rogue-mx2"]])
    mx1 = servers("sink", "127.0.0.1", tls_context=server_context(pairs[0]))
    mx2 = servers("sink", "127.0.0.1", tls_context=server_context(pairs[1]))
    d = fabrikam_daemon(sluice_factory, tmp_path, pki, mx1.port, mx2.port)
    qid = submit(d, "user@contoso.com", ["x@fabrikam.com"], "must not leak")
    entry = states(d, qid, ["Deferred"])
    reason = detail(entry).get("reason", "")
    assert "TLS" in reason and "certificate" in reason.lower(), entry
    time.sleep(1.5)  # retry = 1s: let it try again
    assert mx1.messages == [] and mx2.messages == [], "delivered despite a bad certificate"
    assert mx1.ehlos and mx2.ehlos, "both smart hosts should have been tried (%r / %r)" % (
        mx1.ehlos, mx2.ehlos)
    assert all(not tls for _, tls in mx1.ehlos + mx2.ehlos), "a TLS session was established"
    assert state_names(d.queue_json(qid)) == ["Deferred"]


def test_verify_falls_back_to_the_host_with_a_good_certificate(sluice_factory, tmp_path, servers, pki):
    # mx1 presents a certificate for another name; mx2's is right: mx2 gets it.
    mx1 = servers("sink", "127.0.0.1", tls_context=server_context(pki["wrong"]))
    mx2 = servers("sink", "127.0.0.1", tls_context=server_context(pki["mx2"]))
    d = fabrikam_daemon(sluice_factory, tmp_path, pki, mx1.port, mx2.port)
    qid = submit(d, "user@contoso.com", ["x@fabrikam.com"], "second host")
    m = mx2.wait(1)
    assert m[0].tls and m[0].rcpts == ["x@fabrikam.com"]
    states(d, qid, ["Delivered"])
    assert mx1.messages == []
