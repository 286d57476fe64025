"""OpenDKIM as a signing milter on originating mail, behind sluice's
content_filter agent (`originating = true`): the signature it adds is
verified where the message arrives (dkimpy, with the public key that
opendkim-genkey wrote, served in place of DNS)."""

import re
import shutil
import subprocess

import pytest

from helpers.daemon import relay
from helpers.milter import wait_port
from helpers.ports import free_port
from helpers.smtp import check

OPENDKIM = shutil.which("opendkim") or ("/usr/sbin/opendkim" if shutil.os.path.exists("/usr/sbin/opendkim")
                                         else None)
dkim = pytest.importorskip("dkim")

RULES = """version = 1
[domains]
accepted = ["contoso.com"]

[[inbound]]
name = "org"
kind = "organization"
client_ips = ["127.0.0.2/32"]

[[connector]]
name = "internet"
address_spaces = ["*"]
smart_hosts = ["hop.test"]
"""


@pytest.fixture
def opendkim(tmp_path):
    if OPENDKIM is None or shutil.which("opendkim-genkey") is None:
        pytest.skip("opendkim is not installed (scripts/test installs it)")
    subprocess.run(["opendkim-genkey", "-D", str(tmp_path), "-d", "contoso.com", "-s", "test"], check=True)
    txt = (tmp_path / "test.txt").read_text()
    record = "".join(re.findall(r'"([^"]*)"', txt)).encode()
    port = free_port()
    conf = tmp_path / "opendkim.conf"
    conf.write_text("\n".join([
        "Syslog no", "Background no", "Mode s", "Domain contoso.com", "Selector test",
        "KeyFile %s" % (tmp_path / "test.private"), "Socket inet:%d@127.0.0.1" % port,
        "Canonicalization relaxed/simple", "InternalHosts 127.0.0.0/8",
        "PidFile %s" % (tmp_path / "opendkim.pid"), "RequireSafeKeys false", ""]))
    proc = subprocess.Popen([OPENDKIM, "-f", "-x", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_port(port, proc=proc)
        yield "inet:127.0.0.1:%d" % port, record
    finally:
        proc.kill()
        proc.wait()


def test_opendkim_signs_originating_mail_and_the_signature_verifies(sluice_factory, sinks, opendkim):
    address, record = opendkim
    hop = sinks()
    milter = ('[[milter]]\nname = "dkim"\naddress = "%s"\noriginating = true\non_failure = "tempfail"\n'
              % address)
    d = relay(sluice_factory, {"hop.test": hop.port}, rules_text=RULES, extra=milter)
    c = d.connect(source="127.0.0.2")
    c.ehlo()
    c.mail("alice@contoso.com")
    c.rcpt("bob@fabrikam.example")
    body = b"Signed by OpenDKIM through sluice.\r\n\r\nSecond paragraph.\r\n"
    check(c.data(b"From: Alice <alice@contoso.com>\r\nTo: bob@fabrikam.example\r\n"
                 b"Subject: a signed\r\n message\r\nMessage-ID: <dkim1@contoso.com>\r\n\r\n" + body), 250)
    got = hop.wait(1)[0].data
    assert b"\r\nDKIM-Signature: " in got, got
    dns = {b"test._domainkey.contoso.com.": record}
    assert dkim.verify(got, dnsfunc=lambda name, timeout=5: dns.get(name)), got
    # A changed body no longer verifies: the check can fail.
    assert not dkim.verify(got.replace(b"Second", b"Third"), dnsfunc=lambda name, timeout=5: dns.get(name))
