"""DKIM signing of originating mail, black box: the daemon relays to a
capturing sink, and dkimpy (an independent implementation) verifies what
arrives, with the public keys of the keys made here at test time.

Sample rules: 127.0.0.1 is exchange-onprem (organization: originating),
127.0.0.3 partner-fabrikam (anonymous); gmail.test goes to the sink by a
static MX."""

import base64
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
