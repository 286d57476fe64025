"""SMTP AUTH for internal clients (issue 13; RFC 4954, RFC 8314) against
the real daemon, with real clients: swaks `--auth PLAIN` / `--auth LOGIN`
over STARTTLS and over implicit TLS (`--tlsc`), Python's smtplib
`login()`, and a raw client for the malformed exchanges.

Under these rules 127.0.0.1 is an anonymous client: it may not relay to
outside.test until it authenticates. The hashes are made at test time by
`openssl passwd -6` and by `sluice auth passwd`; the certificate is the
test's self-signed one."""

import base64
import json
import os
import shutil
import signal
import smtplib
import subprocess
import time

import pytest

from helpers.daemon import SLUICE_BIN, relay
from helpers.smtp import ConnectionClosed, check, queued_id, unverified_context
from helpers.tools import needs_tool

RULES = """version = 1
[domains]
accepted = ["contoso.com"]

[[connector]]
name = "internet"
address_spaces = ["*"]

[[rule]]
name = "stamp-scanner"
priority = 1
if = { authenticated_as = ["scanner"] }
then = { add_header = { "X-Scanner" = "yes" } }
"""

MSG = b"From: alice@contoso.com\r\nSubject: auth\r\n\r\nbody\r\n"
swaks = needs_tool(shutil.which("swaks"), "swaks is not installed")


def passwd_line(user, password, scheme):
    """`USER:{SCHEME}hash` from `sluice auth passwd` (password on stdin)."""
    p = subprocess.run([SLUICE_BIN, "auth", "passwd", "--scheme", scheme, "--user", user],
                       input=password.encode() + b"\n", capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    line = p.stdout.decode().strip()
    assert line.startswith("%s:{%s}" % (user, scheme)), line
    return line


def openssl_line(user, password):
    """`USER:{SHA512-CRYPT}hash` from `openssl passwd -6`."""
    h = subprocess.run(["openssl", "passwd", "-6", password], capture_output=True,
                       check=True, timeout=30).stdout.decode().strip()
    assert h.startswith("$6$"), h
    return "%s:{SHA512-CRYPT}%s" % (user, h)


@pytest.fixture(scope="module")
def passwd_text():
    """alice (openssl, SHA512-CRYPT), bob (BLF-CRYPT), scanner (ARGON2ID)."""
    return "\n".join(["# test users", openssl_line("alice", "alice-pw"),
                      passwd_line("bob", "bob-pw", "BLF-CRYPT"),
                      passwd_line("scanner", "scan-pw", "ARGON2ID"), ""])


def auth_daemon(sluice_factory, sinks, tmp_path, passwd_text, auth_extra="", implicit=True):
    """A daemon with AUTH on its STARTTLS listener and (when `implicit`) on
    an implicit-TLS listener; outside.test's MX is a sink."""
    sink = sinks()
    pw = tmp_path / "passwd"
    pw.write_text(passwd_text)
    port465 = None
    extra = '[auth]\npasswd_file = "%s"\n%s' % (pw, auth_extra)
    if implicit:
        from helpers.ports import free_port
        port465 = free_port()
        extra = ('[[listen]]\naddress = "127.0.0.1:%d"\ntls = "implicit"\nauth = true\n\n' % port465) + extra
    d = relay(sluice_factory, {"mx.outside.test": sink.port, "mx": {"outside.test": "mx.outside.test"}},
              rules_text=RULES, tls=True, start=False, extra=extra)
    d.edit_config("starttls = true\n", "starttls = true\nauth = true\n")
    d.start()
    d.port465 = port465
    d.passwd = pw
    return d, sink


def run_swaks(port, *args, user="alice", password="alice-pw", to="carol@outside.test"):
    """swaks against 127.0.0.1:`port`; (exit status, transcript)."""
    cmd = ["swaks", "--server", "127.0.0.1", "--port", str(port), "--helo", "client.test",
           "--from", "alice@contoso.com", "--to", to, "--timeout", "20",
           "--auth-user", user, "--auth-password", password, *args]
    p = subprocess.run(cmd, capture_output=True, timeout=60)
    return p.returncode, p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")


def b64(s):
    return base64.b64encode(s.encode()).decode()


def auth_metrics(d):
    p = d.cli("status", "--json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)["metrics"].get("sluice_auth_total", {})


@swaks
def test_swaks_plain_and_login_over_starttls_and_implicit_tls(sluice_factory, sinks, tmp_path, passwd_text):
    d, sink = auth_daemon(sluice_factory, sinks, tmp_path, passwd_text)
    runs = [("--tls", "--auth", "PLAIN", d.port), ("--tls", "--auth", "LOGIN", d.port),
            ("--tlsc", "--auth", "PLAIN", d.port465), ("--tlsc", "--auth", "LOGIN", d.port465)]
    for tls, _, mech, port in runs:
        rc, out = run_swaks(port, tls, "--auth", mech)
        assert rc == 0, out
        assert "235 2.7.0" in out, out
        assert "250 2.0.0 Ok: queued as" in out, out
    msgs = sink.wait(4)
    assert len(msgs) == 4
    for m in msgs:
        assert m.rcpts == ["carol@outside.test"]
        assert b"with ESMTPSA id" in m.data, m.data[:300]
        assert b"(authenticated as alice)" in m.data, m.data[:300]
        assert b"X-Scanner" not in m.data
    log = d.stderr()
    assert log.count("login=alice") >= 4, log
    assert "alice-pw" not in log
    assert auth_metrics(d).get("success") == 4


def test_smtplib_login_relays_and_without_auth_relay_is_refused(sluice_factory, sinks, tmp_path, passwd_text):
    d, sink = auth_daemon(sluice_factory, sinks, tmp_path, passwd_text)
    # Without AUTH: the outside recipient is refused, and AUTH is not offered
    # (nor accepted) before STARTTLS.
    with smtplib.SMTP("127.0.0.1", d.port, local_hostname="client.test", timeout=20) as s:
        s.ehlo()
        assert not s.has_extn("auth"), s.ehlo_resp
        code, resp = s.docmd("AUTH", "PLAIN " + b64("\0alice\0alice-pw"))
        assert (code, resp[:6]) == (538, b"5.7.11"), (code, resp)
        s.starttls(context=unverified_context())
        s.ehlo()
        assert "PLAIN" in s.esmtp_features["auth"] and "LOGIN" in s.esmtp_features["auth"]
        assert s.mail("alice@contoso.com")[0] == 250
        code, resp = s.rcpt("carol@outside.test")
        assert (code, resp[:5]) == (554, b"5.7.1"), (code, resp)
    # smtplib's login() (it picks PLAIN) over STARTTLS, then over implicit TLS.
    with smtplib.SMTP("127.0.0.1", d.port, local_hostname="client.test", timeout=20) as s:
        s.starttls(context=unverified_context())
        assert s.login("bob", "bob-pw")[0] == 235
        code, resp = s.docmd("AUTH", "PLAIN " + b64("\0bob\0bob-pw"))
        assert (code, resp[:5]) == (503, b"5.5.1"), (code, resp)
        assert s.sendmail("bob@contoso.com", ["dave@outside.test"], MSG) == {}
    with smtplib.SMTP_SSL("127.0.0.1", d.port465, local_hostname="client.test", timeout=20,
                          context=unverified_context()) as s:
        s.ehlo()
        assert "AUTH" in s.ehlo_resp.decode() and "AUTH=PLAIN LOGIN" in s.ehlo_resp.decode()
        s.user, s.password = "scanner", "scan-pw"
        assert s.auth("LOGIN", s.auth_login)[0] == 235
        assert s.sendmail("scanner@contoso.com", ["erin@outside.test"], MSG) == {}
    got = {tuple(m.rcpts): m.data for m in sink.wait(2)}
    assert b"(authenticated as bob)" in got[("dave@outside.test",)]
    # authenticated_as in the rule file: only the scanner's mail is stamped.
    assert b"X-Scanner: yes" in got[("erin@outside.test",)]
    assert b"X-Scanner" not in got[("dave@outside.test",)]
    assert "login=scanner" in d.stderr()


def raw_tls_session(d):
    c = d.connect()
    c.ehlo()
    c.starttls()
    r = c.ehlo()
    return c, r


def test_wrong_passwords_are_delayed_then_the_address_is_locked_out(sluice_factory, sinks, tmp_path,
                                                                    passwd_text):
    d, _ = auth_daemon(sluice_factory, sinks, tmp_path, passwd_text, implicit=False,
                       auth_extra='failure_delay = "400ms"\nmax_failures = 3\nlockout = "1m"\n')
    c, _ = raw_tls_session(d)
    t = time.monotonic()
    check(c.cmd("AUTH PLAIN " + b64("\0alice\0wrong-1")), 535, "5.7.8")
    first = time.monotonic() - t
    t = time.monotonic()
    check(c.cmd("AUTH PLAIN " + b64("\0mallory\0wrong-2")), 535, "5.7.8")
    second = time.monotonic() - t
    # The delay grows per address: 400 ms, then 800 ms (lower bounds only).
    assert first >= 0.35, first
    assert second >= 0.75, second
    check(c.cmd("AUTH PLAIN " + b64("\0alice\0wrong-3")), 421, "4.7.0")
    c.wait_closed(5)
    # Locked out: even the right password gets 421 now.
    c, _ = raw_tls_session(d)
    check(c.cmd("AUTH PLAIN " + b64("\0alice\0alice-pw")), 421, "4.7.0")
    log = d.stderr()
    for secret in ("wrong-1", "wrong-2", "wrong-3", "alice-pw", "mallory"):
        assert secret not in log, secret
    assert "locked out" in log
    m = auth_metrics(d)
    assert m.get("failure") == 3 and m.get("lockout") == 2 and "success" not in m, m


def test_malformed_exchanges_get_clear_replies_and_the_session_goes_on(sluice_factory, sinks, tmp_path,
                                                                      passwd_text):
    d, _ = auth_daemon(sluice_factory, sinks, tmp_path, passwd_text, implicit=False)
    c, r = raw_tls_session(d)
    assert r.keyword_line("AUTH") == "AUTH PLAIN LOGIN", r
    check(c.cmd("AUTH PLAIN !!not-base64!!"), 501, "5.5.2")
    check(c.cmd("AUTH CRAM-MD5"), 504, "5.5.4")
    check(c.cmd("AUTH LOGIN"), 334, contains="VXNlcm5hbWU6")
    check(c.cmd("*"), 501, "5.0.0")
    check(c.cmd("AUTH PLAIN"), 334)
    check(c.cmd("%%%%"), 501, "5.5.2")
    check(c.cmd("AUTH PLAIN " + "QUFB" * 400), 500, "5.5.6")
    check(c.cmd("AUTH PLAIN"), 334)
    check(c.cmd("QUFB" * 2000), 500, "5.5.6")
    # Still a working session: AUTH LOGIN step by step, then mail.
    check(c.cmd("AUTH LOGIN"), 334)
    check(c.cmd(b64("alice")), 334, contains="UGFzc3dvcmQ6")
    check(c.cmd(b64("alice-pw")), 235, "2.7.0")
    c.mail("alice@contoso.com")
    c.rcpt("carol@outside.test")
    check(c.data(MSG), 250)


def test_a_bad_passwd_line_is_named_and_sighup_keeps_the_running_file(sluice_factory, sinks, tmp_path,
                                                                      passwd_text):
    d, _ = auth_daemon(sluice_factory, sinks, tmp_path, passwd_text, implicit=False)
    good = d.passwd.read_text()
    bad = good + "zoe:{PLAIN}zoe-pw\n"
    d.passwd.write_text(bad)
    line = bad.count("\n")
    p = subprocess.run([SLUICE_BIN, "auth", "check", str(d.passwd)], capture_output=True, timeout=30)
    assert p.returncode == 1
    err = p.stderr.decode()
    assert "%s:%d:5: {PLAIN} is refused" % (d.passwd, line) in err, err
    assert "zoe-pw" not in err
    d.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reload refused" not in d.stderr() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = d.stderr()
    assert "SIGHUP: reload refused, running config kept: %s:%d:5" % (d.passwd, line) in log, log
    # The old file still holds: alice logs in.
    c, _ = raw_tls_session(d)
    check(c.cmd("AUTH PLAIN " + b64("\0alice\0alice-pw")), 235)
    c.close()
    # A good file reloads: a new user, added with `sluice auth passwd`.
    d.passwd.write_text(good + passwd_line("zoe", "zoe-pw", "SHA512-CRYPT") + "\n")
    d.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "passwd file reloaded" not in d.stderr() and time.monotonic() < deadline:
        time.sleep(0.05)
    c, _ = raw_tls_session(d)
    check(c.cmd("AUTH PLAIN " + b64("\0zoe\0zoe-pw")), 235)
    # And a daemon does not start on a bad file: the line is named.
    d.stop()
    d.passwd.write_text(bad)
    p = subprocess.run([SLUICE_BIN, "run", "--config", d.config], capture_output=True, timeout=30)
    assert p.returncode != 0
    assert "%s:%d:5" % (d.passwd, line) in p.stderr.decode(), p.stderr


def test_sender_login_binds_a_login_to_its_senders(sluice_factory, sinks, tmp_path, passwd_text):
    d, sink = auth_daemon(sluice_factory, sinks, tmp_path, passwd_text, implicit=False,
                          auth_extra='sender_login = { alice = ["alice@contoso.com", "*@apps.contoso.com"] }\n')
    c, _ = raw_tls_session(d)
    check(c.cmd("AUTH PLAIN " + b64("\0alice\0alice-pw")), 235)
    r = c.mail("ceo@contoso.com", expect=None)
    check(r, 550, "5.7.1")
    c.mail("billing@apps.contoso.com")
    c.rcpt("carol@outside.test")
    check(c.data(MSG), 250)
    c.close()
    # bob has no binding: any sender.
    c, _ = raw_tls_session(d)
    check(c.cmd("AUTH PLAIN " + b64("\0bob\0bob-pw")), 235)
    c.mail("ceo@contoso.com")
    assert "from=<ceo@contoso.com>: sender not bound" in d.stderr()


def test_plaintext_auth_only_when_allowed_for_tests(sluice_factory, sinks, tmp_path, passwd_text):
    d, sink = auth_daemon(sluice_factory, sinks, tmp_path, passwd_text, implicit=False,
                          auth_extra="allow_plaintext = true\n")
    c = d.connect()
    r = c.ehlo()
    assert r.keyword_line("AUTH") == "AUTH PLAIN LOGIN", r
    check(c.cmd("AUTH PLAIN " + b64("\0alice\0alice-pw")), 235)
    c.mail("alice@contoso.com")
    c.rcpt("carol@outside.test")
    r = c.data(MSG)
    check(r, 250)
    data = sink.wait(1)[0].data
    assert b"with ESMTPA id" in data, data[:300]


def test_config_check_names_auth_mistakes(sluice_factory, tmp_path):
    d = sluice_factory(start=False)
    d.edit_config("starttls = false\n", "starttls = false\nauth = true\n")
    p = d.cli("config", "check")
    assert p.returncode == 1
    assert "listen.auth = true needs [auth] passwd_file" in p.stderr.decode(), p.stderr
    d = sluice_factory(start=False, extra='[[listen]]\naddress = "127.0.0.1:1"\ntls = "implicit"\n')
    p = d.cli("config", "check")
    assert p.returncode == 1
    assert 'listen.tls = "implicit" needs [tls] certificate and key' in p.stderr.decode(), p.stderr
    # AUTH without TLS to offer it in: an error, unless plaintext is allowed (tests).
    d = sluice_factory(start=False, extra='[auth]\npasswd_file = "passwd"\n')
    d.edit_config("starttls = false\n", "starttls = false\nauth = true\n")
    p = d.cli("config", "check")
    assert p.returncode == 1
    assert "listen.auth = true needs TLS to offer AUTH" in p.stderr.decode(), p.stderr
    d.edit_config('passwd_file = "passwd"\n', 'passwd_file = "passwd"\nallow_plaintext = true\n')
    p = d.cli("config", "check")
    assert p.returncode == 0, p.stderr


def test_trace_shows_the_auth_decision(sluice_factory, sinks, tmp_path, passwd_text):
    d, _ = auth_daemon(sluice_factory, sinks, tmp_path, passwd_text, implicit=False,
                       auth_extra='sender_login = { alice = ["alice@contoso.com"] }\n')
    eml = tmp_path / "m.eml"
    eml.write_bytes(MSG)
    base = ("trace", str(eml), "--to", "carol@outside.test")
    # Anonymous: relay denied.
    p = d.cli(*base, "--from", "alice@contoso.com")
    assert p.returncode == 1 and "554 5.7.1" in p.stdout.decode(), p.stdout
    # As scanner: originating, relayed, and the authenticated_as rule acts.
    p = d.cli(*base, "--from", "scanner@contoso.com", "--auth", "scanner")
    out = p.stdout.decode()
    assert p.returncode == 0, out
    assert "auth: authenticated as scanner: originating (may relay), sender allowed" in out, out
    assert "add X-Scanner: yes" in out, out
    # As alice with a sender her login is not bound to: refused, in --json too.
    p = d.cli(*base, "--from", "ceo@contoso.com", "--auth", "alice", "--json")
    assert p.returncode == 1
    doc = json.loads(p.stdout)
    assert doc["auth"] == {"login": "alice", "originating": True, "sender_allowed": False}, doc["auth"]


def test_config_check_prints_auth_and_reads_back(sluice_factory, sinks, tmp_path, passwd_text):
    import tomllib
    d, _ = auth_daemon(sluice_factory, sinks, tmp_path, passwd_text,
                       auth_extra='failure_delay = "250ms"\nsender_login = { alice = ["*@contoso.com"] }\n')
    p = d.cli("config", "check")
    assert p.returncode == 0, p.stderr
    eff = tomllib.loads(p.stdout.decode())
    assert eff["auth"]["passwd_file"] == str(d.passwd)
    assert eff["auth"]["failure_delay"] == "250ms" and eff["auth"]["max_failures"] == 5
    assert eff["auth"]["sender_login"] == {"alice": ["*@contoso.com"]}
    assert [(l.get("tls"), l.get("auth")) for l in eff["listen"]] == [(None, True), ("implicit", True)]
    again = tmp_path / "effective.toml"
    again.write_text(p.stdout.decode())
    q = subprocess.run([SLUICE_BIN, "config", "check", str(again)], capture_output=True, timeout=30)
    assert q.returncode == 0 and q.stdout == p.stdout, q.stderr


def test_auth_passwd_reads_from_a_terminal_without_echo(tmp_path):
    import os
    import pty
    import select
    master, slave = pty.openpty()
    p = subprocess.Popen([SLUICE_BIN, "auth", "passwd", "--scheme", "SHA512-CRYPT", "--user", "tty"],
                         stdin=slave, stdout=subprocess.PIPE, stderr=slave, start_new_session=True)
    os.close(slave)
    seen = b""

    def read_until(marker, timeout=30):
        nonlocal seen
        deadline = time.monotonic() + timeout
        while marker not in seen and time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 0.2)
            if r:
                try:
                    seen += os.read(master, 1024)
                except OSError:
                    break
        assert marker in seen, seen

    read_until(b"Password: ")
    os.write(master, b"tty-secret\n")
    read_until(b"Retype password: ")
    os.write(master, b"tty-secret\n")
    out, _ = p.communicate(timeout=30)
    os.close(master)
    assert p.returncode == 0
    assert b"tty-secret" not in seen, seen  # echo was off
    line = out.decode().strip()
    assert line.startswith("tty:{SHA512-CRYPT}$6$"), line
    pw = tmp_path / "passwd"
    pw.write_text(line + "\n")
    q = subprocess.run([SLUICE_BIN, "auth", "check", str(pw)], capture_output=True, timeout=30)
    assert q.returncode == 0 and b"1 users" in q.stdout, q
