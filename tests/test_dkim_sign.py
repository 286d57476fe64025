"""DKIM signing of originating mail, black box: the daemon relays to a
capturing sink, and dkimpy (an independent implementation) verifies what
arrives, with the public keys of the keys made here at test time.

Sample rules: 127.0.0.1 is exchange-onprem (organization: originating),
127.0.0.3 partner-fabrikam (anonymous); gmail.test goes to the sink by a
static MX."""

import base64
import os
import re
import signal
import subprocess
import time

import pytest

from helpers.daemon import relay
from helpers.rules import sample_text
from helpers.smtp import RawSMTP, check, queued_id

dkim = pytest.importorskip("dkim")
pytest.importorskip("nacl")  # dkimpy's Ed25519


def openssl(*args):
    return subprocess.run(["openssl", *args], check=True, capture_output=True).stdout


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """(rsa pem path, ed25519 pem path, {selector: key record})."""
    d = tmp_path_factory.mktemp("dkim")
    rsa, ed = d / "rsa.pem", d / "ed.pem"
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(rsa))
    openssl("genpkey", "-algorithm", "ed25519", "-out", str(ed))
    rsa_pub = base64.b64encode(openssl("pkey", "-in", str(rsa), "-pubout", "-outform", "DER")).decode()
    # Ed25519's record holds the 32 raw octets: the end of the SPKI DER.
    ed_pub = base64.b64encode(openssl("pkey", "-in", str(ed), "-pubout", "-outform", "DER")[-32:]).decode()
    records = {
        "rsa2026._domainkey.contoso.com": "v=DKIM1; k=rsa; p=" + rsa_pub,
        "ed2026._domainkey.contoso.com": "v=DKIM1; k=ed25519; p=" + ed_pub,
    }
    return str(rsa), str(ed), records


def dkim_config(rsa, ed):
    return ('[[dkim]]\ndomain = "contoso.com"\nselector = "rsa2026"\nkey = "%s"\n\n'
            '[[dkim]]\ndomain = "contoso.com"\nselector = "ed2026"\nkey = "%s"\n' % (rsa, ed))


def verify_all(raw, records):
    """dkimpy's verdict on every DKIM-Signature of `raw`."""
    def dnsfunc(name, timeout=5):
        return records.get(name.decode().rstrip("."), "").encode()

    head = raw.split(b"\r\n\r\n", 1)[0]
    n = sum(1 for l in head.split(b"\r\n") if l.lower().startswith(b"dkim-signature:"))
    return [dkim.DKIM(raw).verify(idx=i, dnsfunc=dnsfunc) for i in range(n)]


MSG = (b"From: Sales <sales@contoso.com>\r\nTo: <b@gmail.test>\r\nSubject: quarterly figures\r\n"
       b"Date: Sat, 05 Dec 2026 10:00:00 +0000\r\nMessage-ID: <q4@contoso.com>\r\n\r\n"
       b"Figures attached.  \r\n\r\n")


@pytest.fixture
def signing_relay(sluice_factory, sinks, keys):
    internet, onprem = sinks(), sinks()
    d = relay(sluice_factory, {"mx.gmail.test": internet.port, "exch1.contoso.internal": onprem.port,
                               "mx": {"gmail.test": "mx.gmail.test"}},
              rules_text=sample_text(), extra=dkim_config(keys[0], keys[1]))
    d.onprem = onprem
    return d, internet


def test_originating_mail_is_signed_and_verifies_at_the_sink(signing_relay, keys):
    d, internet = signing_relay
    with d.session() as c:
        check(c.send_mail("sales@contoso.com", ["b@gmail.test"], MSG), 250)
    (got,) = internet.wait(1)
    raw = got[2]
    assert raw.count(b"DKIM-Signature:") == 2, raw[:600]
    assert verify_all(raw, keys[2]) == [True, True], raw[:1200]
    assert b"a=rsa-sha256" in raw and b"a=ed25519-sha256" in raw


def test_mail_from_outside_is_not_signed(signing_relay):
    """A partner (anonymous) claiming contoso.com to a contoso.com mailbox:
    relayed inside, never signed (signing would vouch for a forgery)."""
    d, _ = signing_relay
    c = RawSMTP(d.host, d.port, source="127.0.0.3")
    with c:
        c.greeting()
        c.ehlo()
        c.mail("sales@contoso.com")
        check(c.cmd("RCPT TO:<c@contoso.com>"), 250)
        check(c.data(MSG), 250)
    (got,) = d.onprem.wait(1)
    assert b"DKIM-Signature:" not in got[2]


def test_other_from_domains_are_not_signed(signing_relay):
    d, internet = signing_relay
    other = MSG.replace(b"sales@contoso.com", b"someone@fabrikam.com")
    with d.session() as c:
        check(c.send_mail("someone@fabrikam.com", ["b@gmail.test"], other), 250)
    (got,) = internet.wait(1)
    assert b"DKIM-Signature:" not in got[2]


def test_a_bad_key_stops_the_start_and_sighup_keeps_the_running_keys(sluice_factory, sinks, keys, tmp_path):
    internet = sinks()
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    d = relay(sluice_factory, {"mx.gmail.test": internet.port, "mx": {"gmail.test": "mx.gmail.test"}},
              rules_text=sample_text(), start=False, extra=dkim_config(str(bad), keys[1]))
    p = d.cli("run", timeout=20)
    assert p.returncode != 0 and b"bad.pem" in p.stderr, p
    # Good keys: starts; then the key file goes bad and SIGHUP keeps the old.
    good = tmp_path / "good.pem"
    good.write_bytes(open(keys[0], "rb").read())
    d.edit_config(str(bad), str(good))
    d.start()
    good.write_text("garbage")
    d.signal(signal.SIGHUP)
    deadline = time.time() + 10
    while "reload refused" not in d.stderr() and time.time() < deadline:
        time.sleep(0.1)
    assert "reload refused" in d.stderr() and "good.pem" in d.stderr(), d.stderr()
    with d.session() as c:
        check(c.send_mail("sales@contoso.com", ["b@gmail.test"], MSG), 250)
    (got,) = internet.wait(1)
    assert verify_all(got[2], keys[2]) == [True, True]


# ---- sluice dkim keygen ----------------------------------------------------

def keygen(d, *args):
    return d.cli("dkim", "keygen", *args)


def record_of(out):
    """(name, value) of the zone-file line keygen printed: the quoted
    strings joined, as a resolver hands them to a verifier."""
    line = out.decode().strip()
    m = re.match(r'^(\S+)\. IN TXT ((?:"[^"]*" ?)+)$', line)
    assert m, line
    strings = re.findall(r'"([^"]*)"', m.group(2))
    assert all(len(s) <= 255 for s in strings), strings
    return m.group(1), "".join(strings)


@pytest.mark.parametrize("kind", ["ed25519", "rsa"])
def test_keygen_signs_mail_that_verifies_at_the_sink(sluice_factory, sinks, tmp_path, kind):
    internet = sinks()
    key = tmp_path / "k.pem"
    d = relay(sluice_factory, {"mx.gmail.test": internet.port, "mx": {"gmail.test": "mx.gmail.test"}},
              rules_text=sample_text(), start=False,
              extra='[[dkim]]\ndomain = "contoso.com"\nselector = "k2026"\nkey = "%s"\n' % key)
    p = keygen(d, "--domain", "contoso.com", "--selector", "k2026", "--type", kind, "--out", str(key))
    assert p.returncode == 0, p
    assert os.stat(key).st_mode & 0o777 == 0o600
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----\n"), key.read_text()
    name, value = record_of(p.stdout)
    assert name == "k2026._domainkey.contoso.com", name
    assert value.startswith("v=DKIM1; k=%s; p=" % kind), value
    if kind == "rsa":
        # openssl reads the key: 2048 bits.
        assert b"2048 bit" in openssl("pkey", "-in", str(key), "-noout", "-text")
    # Never over an existing key.
    before = key.read_bytes()
    p = keygen(d, "--domain", "contoso.com", "--selector", "k2026", "--out", str(key))
    assert p.returncode == 1 and b"exists" in p.stderr, p
    assert key.read_bytes() == before
    d.start()
    assert "readable by group or others" not in d.stderr()
    with d.session() as c:
        check(c.send_mail("sales@contoso.com", ["b@gmail.test"], MSG), 250)
    (got,) = internet.wait(1)
    assert b"a=%s-sha256" % kind.encode() in got[2] and b"s=k2026" in got[2], got[2][:800]
    assert verify_all(got[2], {name: value}) == [True], got[2][:1200]


def test_keygen_bad_input(sluice_factory, tmp_path):
    d = sluice_factory(start=False)
    assert keygen(d, "--domain", "contoso.com").returncode == 2
    assert keygen(d, "--domain", "bad domain", "--selector", "s").returncode == 2
    assert keygen(d, "--domain", "contoso.com", "--selector", "s", "--type", "dsa").returncode == 2
    p = keygen(d, "--domain", "contoso.com", "--selector", "s", "--type", "rsa", "--bits", "512",
               "--out", str(tmp_path / "r.pem"))
    assert p.returncode == 2, p
    assert not (tmp_path / "r.pem").exists()


def test_a_readable_key_file_is_a_warning_at_start_and_on_sighup(sluice_factory, sinks, keys, tmp_path):
    internet = sinks()
    key = tmp_path / "loose.pem"
    key.write_bytes(open(keys[1], "rb").read())
    os.chmod(key, 0o644)
    d = relay(sluice_factory, {"mx.gmail.test": internet.port, "mx": {"gmail.test": "mx.gmail.test"}},
              rules_text=sample_text(),
              extra='[[dkim]]\ndomain = "contoso.com"\nselector = "ed2026"\nkey = "%s"\n' % key)
    warning = "DKIM key %s: mode 0644: readable by group or others" % key
    deadline = time.time() + 10
    while warning not in d.stderr() and time.time() < deadline:
        time.sleep(0.1)
    assert warning in d.stderr(), d.stderr()
    os.chmod(key, 0o640)
    d.signal(signal.SIGHUP)
    warning = "DKIM key %s: mode 0640: readable by group or others" % key
    deadline = time.time() + 10
    while warning not in d.stderr() and time.time() < deadline:
        time.sleep(0.1)
    assert warning in d.stderr(), d.stderr()
    # Only a warning: the key signs.
    with d.session() as c:
        check(c.send_mail("sales@contoso.com", ["b@gmail.test"], MSG), 250)
    (got,) = internet.wait(1)
    assert verify_all(got[2], keys[2]) == [True], got[2][:1200]
