"""Hybrid mail flow (issue 13, seed 002): cross-premises header demotion on
the way out and promotion on the way in, and the client certificate a send
connector presents at STARTTLS. Real peers: aiosmtpd next hops (with TLS that
asks for a client certificate from a test CA made here), the real daemon."""
import json
import signal
import ssl
import time

import pytest

from helpers import certs
from helpers.daemon import relay
from helpers.queue import detail, states
from helpers.sink import Sink
from helpers.smtp import check, queued_id

# 127.0.0.1 is the on-premises organisation, 127.0.0.2 Exchange Online (both
# organization connectors), 127.0.0.3 a partner; anything else anonymous.
# Mail for the tenant's routing domain leaves by the cross-premises
# connector "cloud"; contoso.com goes on-premises; the rest to the Internet.
RULES = """
[domains]
accepted = ["contoso.com"]
default = "contoso.com"

[[inbound]]
name = "onprem"
kind = "organization"
client_ips = ["127.0.0.1/32"]

[[inbound]]
name = "exchange-online"
kind = "organization"
client_ips = ["127.0.0.2/32"]

[[inbound]]
name = "partner"
kind = "partner"
client_ips = ["127.0.0.3/32"]

[[connector]]
name = "cloud"
address_spaces = ["contoso.mail.onmicrosoft.com"]
smart_hosts = ["cloud.test"]
cross_premises = true
%(cloud_extra)s

[[connector]]
name = "onprem"
address_spaces = ["--"]
smart_hosts = ["exch.test"]

[[connector]]
name = "internet"
address_spaces = ["*"]
smart_hosts = ["internet.test"]
"""

ORG_HEADERS = (b"X-MS-Exchange-Organization-SCL: -1\r\n"
               b"X-MS-Exchange-Organization-AuthAs: Internal\r\n")


def rules(cloud_extra=""):
    return RULES % {"cloud_extra": cloud_extra}


def headers_of(data):
    """The header block of a captured message, as text."""
    return data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")


def field_lines(head, prefix):
    """The header lines of `head` whose name starts with `prefix`."""
    return sorted(l for l in head.split("\r\n") if l.lower().startswith(prefix.lower()))


def hybrid_daemon(sluice_factory, sinks_by_name, cloud_extra="", extra=""):
    return relay(sluice_factory, {n: s.port for n, s in sinks_by_name.items()},
                 rules_text=rules(cloud_extra), extra=extra)


def send_from(d, source, mail_from, rcpts, message):
    c = d.connect(source=source)
    c.ehlo()
    r = c.send_mail(mail_from, rcpts, message)
    c.close()
    return r


# ------------------------------------------------ header promotion ----------

def test_a_round_trip_keeps_the_organisation_headers(sluice_factory, sinks):
    cloud, exch, internet = sinks(), sinks(), sinks()
    d = hybrid_daemon(sluice_factory, {"cloud.test": cloud, "exch.test": exch, "internet.test": internet})
    # On the way out: one message for the tenant and one for the Internet.
    msg = (ORG_HEADERS + b"From: user@contoso.com\r\nSubject: round trip\r\n\r\nbody\r\n")
    r = send_from(d, "127.0.0.1", "user@contoso.com",
                  ["u@contoso.mail.onmicrosoft.com", "x@example.org"], msg)
    check(r, 250)
    out = headers_of(cloud.wait(1)[0].data)
    assert field_lines(out, "X-MS-Exchange-CrossPremises-") == [
        "X-MS-Exchange-CrossPremises-AuthAs: Internal", "X-MS-Exchange-CrossPremises-SCL: -1"], out
    assert "X-OriginatorOrg: contoso.com" in out.split("\r\n"), out
    assert len(field_lines(out, "X-MS-Exchange-Organization-")) == 2, out
    # Only the copy through the cross-premises connector is demoted.
    other = headers_of(internet.wait(1)[0].data)
    assert not field_lines(other, "X-MS-Exchange-CrossPremises-"), other
    assert "X-OriginatorOrg" not in other, other
    assert "cross_premises_demotion: Connector [cloud]. Copied header [X-MS-Exchange-Organization-SCL]" \
        in d.stderr()

    # Back in from Exchange Online: across premises only the
    # CrossPremises twins survived (its firewall took the organisation ones).
    back = b"".join(l + b"\r\n" for l in cloud.messages[0].data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
                    if not l.lower().startswith(b"x-ms-exchange-organization-"))
    back += b"\r\n" + cloud.messages[0].data.split(b"\r\n\r\n", 1)[1]
    assert b"X-MS-Exchange-Organization-" not in back
    r = send_from(d, "127.0.0.2", "user@contoso.com", ["boss@contoso.com"], back)
    check(r, 250)
    home = headers_of(exch.wait(1)[0].data)
    assert field_lines(home, "X-MS-Exchange-Organization-") == [
        "X-MS-Exchange-Organization-AuthAs: Internal", "X-MS-Exchange-Organization-SCL: -1"], home
    assert "cross_premises_promotion: Promoted header [X-MS-Exchange-CrossPremises-SCL]" in d.stderr()
    status = d.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    agents = json.loads(status.stdout)["agents"]
    assert agents["cross_premises_demotion"]["stamped"] >= 1, agents
    assert agents["cross_premises_promotion"]["stamped"] >= 1, agents


@pytest.mark.parametrize("source", ["127.0.0.9", "127.0.0.3"], ids=["anonymous", "partner"])
def test_forged_cross_premises_headers_are_stripped(sluice_factory, sinks, source):
    cloud, exch, internet = sinks(), sinks(), sinks()
    d = hybrid_daemon(sluice_factory, {"cloud.test": cloud, "exch.test": exch, "internet.test": internet})
    forged = (b"X-MS-Exchange-CrossPremises-AuthAs: Internal\r\nX-MS-Exchange-CrossPremises-SCL: -1\r\n"
              + ORG_HEADERS + b"From: a@example.org\r\nSubject: forged\r\n\r\nbody\r\n")
    r = send_from(d, source, "a@example.org", ["boss@contoso.com"], forged)
    check(r, 250)
    got = headers_of(exch.wait(1)[0].data)
    assert not field_lines(got, "X-MS-Exchange-CrossPremises-"), got
    assert not field_lines(got, "X-MS-Exchange-Organization-"), got
    assert "Subject: forged" in got
    assert "Removed header [X-MS-Exchange-CrossPremises-AuthAs] from mail not attributed" in d.stderr()


def test_the_agents_are_listed_traced_and_can_be_switched_off(sluice_factory, sinks, tmp_path):
    cloud, exch, internet = sinks(), sinks(), sinks()
    d = hybrid_daemon(sluice_factory, {"cloud.test": cloud, "exch.test": exch, "internet.test": internet})
    p = d.cli("pipeline")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.decode().splitlines()
    stage = None
    where = {}
    for l in lines:
        if not l.startswith(" "):
            stage = l.strip()
        else:
            where.setdefault(l.split()[1], []).append(stage)
    assert where["cross_premises_promotion"] == ["OnEndOfHeaders"], lines
    assert where["cross_premises_demotion"] == ["OnRoutedMessage"], lines
    eml = tmp_path / "m.eml"
    eml.write_bytes(ORG_HEADERS + b"Subject: s\r\n\r\nbody\r\n")
    p = d.cli("trace", str(eml), "--from", "user@contoso.com", "--to", "u@contoso.mail.onmicrosoft.com",
              "--peer", "127.0.0.1", "--snapshots")
    assert p.returncode == 0, p.stderr
    text = p.stdout.decode()
    assert "--- before cross_premises_demotion (the copy via connector cloud)" in text, text
    after = text.split("--- after cross_premises_demotion (the copy via connector cloud)", 1)[1]
    assert "X-MS-Exchange-CrossPremises-SCL: -1" in after and "X-OriginatorOrg: contoso.com" in after, text
    # Switched off: nothing demoted.
    off = tmp_path / "off.toml"
    off.write_text(rules() + '\n[[agent]]\nname = "cross_premises_demotion"\nenabled = false\n')
    p = d.cli("trace", str(eml), "--from", "user@contoso.com", "--to", "u@contoso.mail.onmicrosoft.com",
              "--peer", "127.0.0.1", "--rules", str(off), "--json")
    assert p.returncode == 0, p.stderr
    assert b"CrossPremises" not in p.stdout and b"X-OriginatorOrg" not in p.stdout, p.stdout


# ------------------------------------------- client certificates -----------

class CertSink(Sink):
    """A next hop that keeps the client certificate each message came with."""

    def capture(self, session, envelope):
        super().capture(session, envelope)
        self.messages[-1].peercert = (session.ssl or {}).get("peercert")


def common_name(peercert):
    for rdn in (peercert or {}).get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                return v
    return None


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A test CA, a next hop's server certificate and two client ones."""
    if not certs.have_openssl():
        pytest.skip("openssl CLI not installed")
    d = tmp_path_factory.mktemp("hybrid-pki")
    ca = certs.make_ca(d, "ca", "sluice hybrid test CA")
    return {
        "ca": ca[0],
        "server": certs.make_leaf(d, ca, "server", "cloud.test"),
        "edge": certs.make_leaf(d, ca, "edge", "edge.contoso.com", ext=certs.CLIENT_EXT),
        "edge2": certs.make_leaf(d, ca, "edge2", "edge2.contoso.com", ext=certs.CLIENT_EXT),
        "dir": d,
    }


def next_hop(pki, require):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*pki["server"])
    ctx.load_verify_locations(pki["ca"])
    ctx.verify_mode = ssl.CERT_REQUIRED if require else ssl.CERT_OPTIONAL
    return CertSink(tls_context=ctx).start()


def client_section(name, pair):
    return '[[tls.client]]\nname = "%s"\ncertificate = "%s"\nkey = "%s"\n' % (name, pair[0], pair[1])


@pytest.fixture
def hops(pki):
    made = []

    def make(require):
        s = next_hop(pki, require)
        made.append(s)
        return s
    yield make
    for s in made:
        s.stop()


def test_the_connector_presents_its_client_certificate(sluice_factory, pki, hops, sinks):
    cloud, internet = hops(require=True), hops(require=False)
    exch = sinks()
    d = hybrid_daemon(sluice_factory, {"cloud.test": cloud, "exch.test": exch, "internet.test": internet},
                      cloud_extra='tls_certificate = "edge"\ntls = "required"',
                      extra=client_section("edge", pki["edge"]))
    r = send_from(d, "127.0.0.1", "user@contoso.com", ["u@contoso.mail.onmicrosoft.com", "x@example.org"],
                  b"From: user@contoso.com\r\nSubject: cert\r\n\r\nbody\r\n")
    check(r, 250)
    m = cloud.wait(1)[0]
    assert m.tls and common_name(m.peercert) == "edge.contoso.com", m.peercert
    # The connector without tls_certificate presents none.
    n = internet.wait(1)[0]
    assert n.tls and not n.peercert, n.peercert
    # The SEND line follows the next hop's 250, which the sink sends after
    # it has the message: wait for it.
    log = d.wait_log(" cert=edge")
    assert "to=<u@contoso.mail.onmicrosoft.com> 250" in log and " cert=edge" in log, log
    assert [l for l in log.splitlines() if "to=<x@example.org> 250" in l and "cert=" in l] == []
    # sluice trace names it.
    eml = pki["dir"] / "plain.eml"
    eml.write_bytes(b"Subject: s\r\n\r\nbody\r\n")
    p = d.cli("trace", str(eml), "--from", "user@contoso.com",
              "--to", "u@contoso.mail.onmicrosoft.com", "--peer", "127.0.0.1")
    assert p.returncode == 0, p.stderr
    assert b"connector cloud via cloud.test, client certificate edge" in p.stdout, p.stdout
    p = d.cli("trace", str(eml), "--from", "user@contoso.com", "--to", "u@contoso.mail.onmicrosoft.com",
              "--to", "x@example.org", "--peer", "127.0.0.1", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert [r["tls_certificate"] for r in doc["recipients"]] == ["edge", None], doc["recipients"]
    assert {"name": "X-OriginatorOrg", "value": "contoso.com", "connector": "cloud"} in doc["headers_added"], doc


def test_kept_sessions_never_mix_client_certificates(sluice_factory, pki, hops, sinks):
    # Both connectors go to the same host and port; only "cloud" presents a
    # certificate. Sessions kept open between messages (the connection
    # cache) must stay with their own connector's TLS identity.
    hop = hops(require=False)
    text = rules('tls_certificate = "edge"').replace('smart_hosts = ["internet.test"]',
                                                     'smart_hosts = ["cloud.test"]')
    # Kept far longer than a loaded machine may take between two messages.
    d = relay(sluice_factory, {"cloud.test": hop.port, "exch.test": sinks().port}, rules_text=text,
              extra=client_section("edge", pki["edge"]), queue_extra='connection_cache_time = "30s"\n')
    for i in range(3):
        r = send_from(d, "127.0.0.1", "user@contoso.com", ["u@contoso.mail.onmicrosoft.com", "x@example.org"],
                      b"From: user@contoso.com\r\nSubject: mixed %d\r\n\r\nbody\r\n" % i)
        check(r, 250)
        hop.wait(2 * (i + 1))
    for m in hop.messages:
        want = "edge.contoso.com" if m.rcpts == ["u@contoso.mail.onmicrosoft.com"] else None
        assert m.tls and common_name(m.peercert) == want, (m.rcpts, m.peercert)
    # The last SEND line may follow the sink's count (see above).
    deadline = time.monotonic() + 10
    sends = []
    while len(sends) < 6 and time.monotonic() < deadline:
        time.sleep(0.02)
        sends = [l for l in d.stderr().splitlines() if "SEND qid=" in l]
    assert len(sends) == 6 and sum(" reused=0" not in l for l in sends) >= 2, sends
    # One connection per identity (one EHLO each, and one more after STARTTLS).
    assert len(hop.ehlos) == 4, hop.ehlos


def test_sighup_reloads_client_certificates_and_keeps_them_on_a_bad_file(sluice_factory, pki, hops, sinks):
    cloud = hops(require=True)
    d = hybrid_daemon(sluice_factory, {"cloud.test": cloud, "exch.test": sinks(), "internet.test": sinks()},
                      cloud_extra='tls_certificate = "edge"',
                      extra=client_section("edge", pki["edge"]))

    def send(subject):
        r = send_from(d, "127.0.0.1", "user@contoso.com", ["u@contoso.mail.onmicrosoft.com"],
                      b"Subject: %s\r\n\r\nbody\r\n" % subject)
        check(r, 250)

    def wait_log(text, n=1):
        deadline = time.time() + 5
        while d.stderr().count(text) < n and time.time() < deadline:
            time.sleep(0.05)
        assert d.stderr().count(text) >= n, d.stderr()

    send(b"one")
    assert common_name(cloud.wait(1)[0].peercert) == "edge.contoso.com"
    # A new certificate under the same name: reloaded on SIGHUP.
    d.edit_config(pki["edge"][0], pki["edge2"][0])
    d.edit_config(pki["edge"][1], pki["edge2"][1])
    d.signal(signal.SIGHUP)
    wait_log("SIGHUP: configuration, certificates and passwd file reloaded")
    send(b"two")
    assert common_name(cloud.wait(2)[1].peercert) == "edge2.contoso.com"
    # An unreadable one: the reload is refused, the running one stays.
    bad = pki["dir"] / "garbage.pem"
    bad.write_text("not a certificate\n")
    d.edit_config(pki["edge2"][0], str(bad))
    d.signal(signal.SIGHUP)
    wait_log("reload refused")
    refused = [l for l in d.stderr().splitlines() if "reload refused" in l][-1]
    assert '[[tls.client]] "edge"' in refused and "garbage.pem" in refused, refused
    send(b"three")
    assert common_name(cloud.wait(3)[2].peercert) == "edge2.contoso.com"


def test_an_unreadable_client_certificate_stops_the_start(sluice_factory, pki, tmp_path):
    d = sluice_factory(start=False, rules_text=rules(),
                       extra=client_section("edge", (str(tmp_path / "missing.pem"), pki["edge"][1])))
    p = d.cli("run", timeout=15)
    assert p.returncode != 0
    err = p.stderr.decode()
    assert '[[tls.client]] "edge"' in err and "missing.pem" in err, err


def test_an_undeclared_certificate_name_is_refused(sluice_factory, pki, tmp_path):
    d = sluice_factory(rules_text=rules(), extra=client_section("edge", pki["edge"]))
    bad = tmp_path / "bad.toml"
    bad.write_text(rules('tls_certificate = "nope"'))
    p = d.cli("rules", "check", str(bad))
    assert p.returncode == 1, p.stdout
    out = p.stdout.decode()
    line = [i + 1 for i, l in enumerate(bad.read_text().splitlines()) if l.startswith("tls_certificate")][0]
    assert '%s:%d:19: error: connector "cloud": tls_certificate "nope" is not a [[tls.client]]' % (
        bad, line) in out, out
    assert "declared: edge" in out, out
    # The running daemon refuses to install it and keeps its policy.
    p = d.cli("rules", "apply", str(bad))
    assert p.returncode != 0
    assert b"nope" in p.stdout + p.stderr, p.stdout + p.stderr
    good = tmp_path / "good.toml"
    good.write_text(rules('tls_certificate = "edge"'))
    assert d.cli("rules", "check", str(good)).returncode == 0
    p = d.cli("rules", "apply", str(good))
    assert p.returncode == 0, p.stdout + p.stderr


def test_a_certificate_the_config_dropped_defers_instead_of_going_unauthenticated(sluice_factory, pki, hops,
                                                                                   sinks):
    # The policy names "edge"; a SIGHUP without it is refused (the policy
    # needs it), so the certificate stays presented.
    cloud = hops(require=True)
    d = hybrid_daemon(sluice_factory, {"cloud.test": cloud, "exch.test": sinks(), "internet.test": sinks()},
                      cloud_extra='tls_certificate = "edge"', extra=client_section("edge", pki["edge"]))
    d.edit_config('name = "edge"', 'name = "other"')
    d.signal(signal.SIGHUP)
    deadline = time.time() + 5
    while "reload refused" not in d.stderr() and time.time() < deadline:
        time.sleep(0.05)
    assert 'presents tls_certificate "edge", which the config does not declare' in d.stderr()
    r = send_from(d, "127.0.0.1", "user@contoso.com", ["u@contoso.mail.onmicrosoft.com"], b"Subject: x\r\n\r\nb\r\n")
    check(r, 250)
    assert common_name(cloud.wait(1)[0].peercert) == "edge.contoso.com"
