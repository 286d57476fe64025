"""Installing policies in the running daemon: `rules apply FILE|-` over the
control socket, refusal of a bad file, sessions in flight keeping their
policy, restart on the last installed policy, rollback, status, SIGHUP, and
the SSH forced-command path with a real OpenSSH server on loopback."""
import json
import os
import shutil
import signal
import smtplib
import ssl
import stat
import subprocess
import time

from helpers import certs
from helpers.daemon import HOSTNAME, SLUICE_BIN
from helpers.rules import variant_text
from helpers.smtp import check
from helpers.ssh import sshd_forcing
from helpers.tools import needs_tool


def sample_text():
    # 127.0.0.1 becomes anonymous (exchange-onprem moves to 127.0.0.9).
    return variant_text("onprem_off_loopback")


def cli(d, *args, stdin=None):
    return subprocess.run([SLUICE_BIN, *args, "--config", d.config], input=stdin,
                          capture_output=True, timeout=60)


def status(d):
    p = cli(d, "status", "--json")
    assert p.returncode == 0, p
    return json.loads(p.stdout)


def relay_allowed(d):
    c = d.session()
    c.mail("user@contoso.com")
    c.send(b"RCPT TO:<x@gmail.com>\r\n")
    r = c.reply()
    c.close()
    return r.code == 250


def test_apply_refuse_restart_rollback(sluice_factory, tmp_path):
    d = sluice_factory()
    first = status(d)
    assert first["running"] is True and first["policy"]["via"] == "embedded default"
    assert relay_allowed(d), "the embedded default lets loopback relay"
    sock = os.path.join(os.path.dirname(d.config), "state", "control.sock")
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600

    # A session that began before the install keeps its policy to the end.
    old = d.session()
    rules = tmp_path / "rules.toml"
    rules.write_text(sample_text(), encoding="utf-8")
    p = cli(d, "rules", "apply", str(rules))
    assert p.returncode == 0, p
    assert b"installed policy version" in p.stdout
    s = status(d)
    assert s["policy"]["version"] != first["policy"]["version"]
    assert s["previous"]["version"] == first["policy"]["version"]
    assert not relay_allowed(d), "the new policy: 127.0.0.1 is anonymous"
    old.mail("user@contoso.com")
    old.rcpt("x@gmail.com")  # still the old policy
    old.close()

    # A bad file changes nothing and says why, with line and column.
    p = cli(d, "rules", "apply", "-", stdin=b"version = 1\n[[connector]]\nname = \"x\"\nadress_spaces = [\"*\"]\n")
    assert p.returncode == 1, p
    assert b"-:4:1: error:" in p.stderr, p.stderr
    assert status(d)["policy"]["version"] == s["policy"]["version"]
    assert not relay_allowed(d)

    # A restart comes up on the last installed policy.
    d.restart()
    assert status(d)["policy"]["version"] == s["policy"]["version"]
    assert not relay_allowed(d)

    # Rollback: the previous policy is active again.
    p = cli(d, "rules", "rollback")
    assert p.returncode == 0, p
    s2 = status(d)
    assert s2["policy"]["version"] == first["policy"]["version"]
    assert s2["policy"]["via"].startswith("rollback")
    assert relay_allowed(d)

    # With the daemon stopped, status reads the state directory; apply says so.
    d.stop()
    s3 = json.loads(cli(d, "status", "--json").stdout)
    assert s3["running"] is False and s3["policy"]["version"] == first["policy"]["version"]
    assert cli(d, "rules", "apply", str(rules)).returncode == 2


def test_sighup_reloads_the_config_atomically(sluice_factory):
    d = sluice_factory(limits={"max_recipients": 2})
    c = d.session()
    c.mail("a@contoso.com")
    c.rcpt("b@contoso.com")
    c.rcpt("c@contoso.com")
    c.rcpt("d@contoso.com", expect=(452, "4.5.3"))
    c.close()
    cfg = open(d.config, encoding="utf-8").read()
    with open(d.config, "w", encoding="utf-8") as f:
        f.write(cfg.replace("max_recipients = 2", "max_recipients = 3"))
    d.signal(signal.SIGHUP)
    deadline = time.time() + 5
    while "reloaded" not in d.stderr() and time.time() < deadline:
        time.sleep(0.05)
    c = d.session()
    c.mail("a@contoso.com")
    for r in ("b", "c", "d"):
        c.rcpt(r + "@contoso.com")
    c.close()
    # A broken config is refused; the daemon keeps serving with the old one.
    with open(d.config, "a", encoding="utf-8") as f:
        f.write("\nhostname = \n")
    d.signal(signal.SIGHUP)
    deadline = time.time() + 5
    while "reload refused" not in d.stderr() and time.time() < deadline:
        time.sleep(0.05)
    assert "reload refused" in d.stderr()
    c = d.session()
    check(c.cmd("NOOP"), 250)
    c.close()


def served_certificate(d):
    """The DER certificate the daemon presents after STARTTLS."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s = smtplib.SMTP(d.host, d.port, local_hostname="client.test", timeout=10)
    try:
        s.ehlo()
        code, resp = s.starttls(context=ctx)
        assert code == 220, (code, resp)
        return s.sock.getpeercert(binary_form=True)
    finally:
        s.close()


def pem_to_der(path):
    with open(path, encoding="ascii") as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


def wait_stderr(d, text, count=1, timeout=5):
    deadline = time.time() + timeout
    while d.stderr().count(text) < count and time.time() < deadline:
        time.sleep(0.05)
    assert d.stderr().count(text) >= count, d.stderr()


def test_sighup_serves_the_new_certificate_and_names_what_needs_a_restart(sluice_factory, tmp_path):
    d = sluice_factory(tls=True)
    old = pem_to_der(d.cert)
    assert served_certificate(d) == old
    # A new key and certificate, put in place of the old files.
    cert, key = str(tmp_path / "new.crt"), str(tmp_path / "new.key")
    certs.self_signed(cert, key, HOSTNAME)
    key_path = os.path.join(os.path.dirname(d.cert), "key.pem")
    shutil.copy(key, key_path + ".new")
    shutil.copy(cert, d.cert + ".new")
    os.rename(key_path + ".new", key_path)
    os.rename(d.cert + ".new", d.cert)
    new = pem_to_der(d.cert)
    assert new != old
    # Until the SIGHUP, the old one.
    assert served_certificate(d) == old
    # And a section that is not reloaded changes too: the daemon says so.
    cfg = open(d.config, encoding="utf-8").read()
    assert 'retry = ["1h"]' in cfg, cfg
    with open(d.config, "w", encoding="utf-8") as f:
        f.write(cfg.replace('retry = ["1h"]', 'retry = ["2h"]'))
    d.signal(signal.SIGHUP)
    wait_stderr(d, "reloaded")
    assert served_certificate(d) == new
    assert "[queue] changed; takes effect after a restart" in d.stderr(), d.stderr()
    assert "[dns] changed" not in d.stderr() and "[[listen]] changed" not in d.stderr(), d.stderr()


@needs_tool(os.path.exists("/usr/sbin/sshd"), "OpenSSH server (Debian openssh-server) not installed")
def test_rules_apply_over_ssh_with_a_forced_command(sluice_factory, tmp_path):
    d = sluice_factory()
    # The README's line.
    forced = "%s rules apply --config %s -" % (SLUICE_BIN, d.config)
    with sshd_forcing(forced, tmp_path) as ssh:
        before = status(d)["policy"]["version"]
        # The operator's command; the forced command replaces whatever is asked.
        p = subprocess.run(ssh + ["sluice", "rules", "apply", "-"], input=sample_text().encode(),
                           capture_output=True, timeout=60)
        assert p.returncode == 0, p
        after = status(d)
        assert after["policy"]["version"] != before
        assert after["policy"]["via"] == "ssh from 127.0.0.1"
        # The key can do nothing else: asking for a shell still runs the install.
        p = subprocess.run(ssh + ["cat", "/etc/passwd"], input=b"version = 9\n", capture_output=True, timeout=60)
        assert p.returncode == 1 and b"root:" not in p.stdout, p
        assert b"error:" in p.stderr
        assert status(d)["policy"]["version"] == after["policy"]["version"]
