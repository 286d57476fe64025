"""Sender authentication, black box: `sluice auth verify MESSAGE.eml --ip IP
--helo NAME --from ADDR [--json]` against a real DNS server on loopback
(dnsmasq, zone made by the test), with messages signed by dkimpy (an
independent DKIM implementation) using keys made at test time.

Zone (all under .test):
  spf.test        SPF: ip4:192.0.2.0/24 include:_spf.partner.test -all; DMARC p=reject
  _spf.partner.test  ip4:198.51.100.7 -all
  soft.test       SPF ~all, DMARC p=quarantine pct=100 sp=none
  broken.test     a malformed SPF record (permerror)
  slow.test       the DNS black hole: every lookup times out (temperror)
"""

import base64
import json
import subprocess
import time

import pytest

from helpers.dnslist import BlackHole, Dnsmasq
from helpers.smtp import RawSMTP, check, make_message

dkim = pytest.importorskip("dkim")


def txt(name, value):
    """A --txt-record option; long values as several strings of at most 250
    octets (dnsmasq keeps quotes given on its command line, and splits at
    commas: the values here hold none)."""
    assert "," not in value
    parts = [value[i:i + 250] for i in range(0, len(value), 250)]
    return "--txt-record=%s,%s" % (name, ",".join(parts))


@pytest.fixture(scope="module")
def rsa_key(tmp_path_factory):
    d = tmp_path_factory.mktemp("dkimkey")
    key = d / "rsa.key"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    der = subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    return key.read_bytes(), base64.b64encode(der).decode()


@pytest.fixture(scope="module")
def dns(tmp_path_factory, rsa_key):
    _, pub = rsa_key
    extra = [
        txt("spf.test", "v=spf1 ip4:192.0.2.0/24 include:_spf.partner.test -all"),
        txt("_spf.partner.test", "v=spf1 ip4:198.51.100.7 -all"),
        txt("_dmarc.spf.test", "v=DMARC1; p=reject"),
        txt("sel._domainkey.spf.test", "v=DKIM1; k=rsa; p=" + pub),
        txt("arc._domainkey.list.test", "v=DKIM1; k=rsa; p=" + pub),
        txt("soft.test", "v=spf1 ~all"),
        txt("_dmarc.soft.test", "v=DMARC1; p=quarantine; sp=none"),
        txt("broken.test", "v=spf1 ip4:192.0.2.300 -all"),
        txt("mail.spf.test", "v=spf1 a -all"),
        "--host-record=mail.spf.test,203.0.113.9",
    ]
    server = Dnsmasq(str(tmp_path_factory.mktemp("dnsmasq")), ["test"], {}, extra)
    yield server
    server.stop()


@pytest.fixture
def checker(sluice_factory, dns):
    return sluice_factory(start=False, dns_servers=["127.0.0.1:%d" % dns.port],
                          dns_extra="timeout = 2\nattempts = 1\n")


def message(tmp_path, rsa_key=None, sender="alice@spf.test", body=b"Hello.\r\n"):
    raw = make_message("auth", body, sender=sender)
    if rsa_key:
        sig = dkim.sign(raw, b"sel", b"spf.test", rsa_key[0],
                        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
        raw = sig + raw
    path = tmp_path / "msg.eml"
    path.write_bytes(raw)
    return str(path)


def auth_check(d, path, ip, mail_from, helo="client.example", json_out=True):
    args = ["auth", "verify", path, "--ip", ip, "--helo", helo, "--from", mail_from]
    p = d.cli(*(args + (["--json"] if json_out else [])))
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    out = p.stdout.decode()
    return json.loads(out) if json_out else out


def test_spf_pass_and_aligned_dkim_pass_dmarc(checker, rsa_key, tmp_path):
    r = auth_check(checker, message(tmp_path, rsa_key), "192.0.2.10", "alice@spf.test")
    assert r["spf"]["result"] == "pass" and r["spf"]["domain"] == "spf.test", r
    assert [d["result"] for d in r["dkim"]] == ["pass"], r
    assert r["dkim"][0]["domain"] == "spf.test" and r["dkim"][0]["algorithm"] == "rsa-sha256", r
    assert r["dmarc"] == {"result": "pass", "domain": "spf.test", "policy": "reject",
                          "disposition": "none"}, r


def test_include_passes_and_forgeries_fail_dmarc_reject(checker, tmp_path):
    ok = auth_check(checker, message(tmp_path), "198.51.100.7", "bob@spf.test")
    assert ok["spf"]["result"] == "pass", ok
    forged = auth_check(checker, message(tmp_path), "203.0.113.50", "alice@spf.test")
    assert forged["spf"]["result"] == "fail", forged
    assert forged["dkim"] == [], forged
    assert forged["dmarc"]["result"] == "fail" and forged["dmarc"]["disposition"] == "reject", forged


def test_tampered_body_fails_dkim_but_spf_alignment_passes_dmarc(checker, rsa_key, tmp_path):
    path = message(tmp_path, rsa_key)
    raw = open(path, "rb").read().replace(b"Hello.", b"Hullo.")
    open(path, "wb").write(raw)
    r = auth_check(checker, path, "192.0.2.10", "alice@spf.test")
    assert r["dkim"][0]["result"] == "fail" and "body hash" in r["dkim"][0]["reason"], r
    assert r["dmarc"]["result"] == "pass", r


def test_softfail_quarantine_null_sender_and_permerror(checker, tmp_path):
    r = auth_check(checker, message(tmp_path, sender="x@soft.test"), "192.0.2.1", "x@soft.test")
    assert r["spf"]["result"] == "softfail", r
    assert (r["dmarc"]["result"], r["dmarc"]["disposition"]) == ("fail", "quarantine"), r
    # <>: the HELO identity is checked.
    r = auth_check(checker, message(tmp_path), "203.0.113.9", "", helo="mail.spf.test")
    assert (r["spf"]["result"], r["spf"]["identity"], r["spf"]["domain"]) == ("pass", "helo", "mail.spf.test"), r
    r = auth_check(checker, message(tmp_path), "192.0.2.1", "x@broken.test")
    assert r["spf"]["result"] == "permerror", r
    r = auth_check(checker, message(tmp_path), "192.0.2.1", "x@nothing.test")
    assert r["spf"]["result"] == "none", r


def test_the_results_field(checker, rsa_key, tmp_path):
    field = auth_check(checker, message(tmp_path, rsa_key), "192.0.2.10", "alice@spf.test", json_out=False)
    assert field.startswith("Authentication-Results: edge1.test;"), field
    flat = " ".join(field.split())
    assert "spf=pass smtp.mailfrom=spf.test" in flat, field
    assert "dkim=pass header.d=spf.test header.s=sel header.a=rsa-sha256" in flat, field
    assert "dmarc=pass (p=reject dis=none) header.from=spf.test" in flat, field


def test_a_dns_server_that_never_answers_is_temperror(sluice_factory, tmp_path):
    hole = BlackHole()
    try:
        d = sluice_factory(start=False, dns_servers=["127.0.0.1:%d" % hole.port],
                           dns_extra="timeout = 1\nattempts = 1\n")
        r = auth_check(d, message(tmp_path), "192.0.2.10", "alice@spf.test")
        assert r["spf"]["result"] == "temperror", r
        assert r["dmarc"]["result"] == "temperror", r
    finally:
        hole.stop()


def test_bad_input_is_exit_2(checker, tmp_path):
    p = checker.cli("auth", "verify", str(tmp_path / "missing.eml"), "--ip", "192.0.2.1", "--helo", "h",
                    "--from", "a@spf.test")
    assert p.returncode == 2, p
    p = checker.cli("auth", "verify", message(tmp_path), "--ip", "not-an-ip", "--helo", "h", "--from", "a@b.test")
    assert p.returncode == 2, p


def test_an_arc_chain_from_a_mailing_list(checker, rsa_key, tmp_path):
    """dkimpy seals the message as list.test would; the chain passes and
    names its sealer; a changed body breaks it."""
    pytest.importorskip("authres")
    raw = open(message(tmp_path, rsa_key), "rb").read()
    raw = b"Authentication-Results: list.test; dkim=pass header.d=spf.test\r\n" + raw
    seal = dkim.arc_sign(raw, b"arc", b"list.test", rsa_key[0], b"list.test",
                         include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    path = tmp_path / "arc.eml"
    path.write_bytes(b"".join(seal) + raw)
    r = auth_check(checker, str(path), "192.0.2.10", "alice@spf.test")
    assert r["arc"] == {"result": "pass", "reason": "", "instances": 1, "sealers": ["list.test"]}, r
    path.write_bytes((b"".join(seal) + raw).replace(b"Hello.", b"Hullo."))
    r = auth_check(checker, str(path), "192.0.2.10", "alice@spf.test")
    assert r["arc"]["result"] == "fail", r


# ---- the sender_authentication agent in the daemon ------------------------

AGENT_RULES = """
[domains]
accepted = ["inside.test"]

[[connector]]
name = "inside"
address_spaces = ["inside.test"]
smart_hosts = ["mailhub.test"]

[authentication]
trusted_arc_sealers = ["list.test"]

[[rule]]
name = "mark verified mail"
if = { dkim = "pass", dmarc = "pass" }
then = { add_header = { "X-DKIM-Verified" = "yes" } }
"""

ANON = "127.0.0.3"  # no inbound connector: anonymous


@pytest.fixture
def edge(sluice_factory, dns, sinks):
    hub = sinks()
    d = sluice_factory(rules_text=AGENT_RULES, dns_servers=["127.0.0.1:%d" % dns.port],
                       dns_extra="timeout = 2\nattempts = 1\n",
                       static={"mailhub.test": ["127.0.0.1:%d" % hub.port]}, retry='"1s"')
    d.hub = hub
    return d


def send_from(d, raw, mail_from, source=ANON):
    c = RawSMTP(d.host, d.port, source=source)
    with c:
        c.greeting()
        c.ehlo()
        c.mail(mail_from)
        check(c.cmd("RCPT TO:<bob@inside.test>"), 250)
        return c.data(raw)


def test_a_dmarc_reject_over_smtp(edge):
    raw = make_message("forged", b"pay now\r\n", sender="ceo@spf.test", to="bob@inside.test")
    r = send_from(edge, raw, "ceo@spf.test")
    check(r, 550, "5.7.1")
    assert "DMARC policy of spf.test" in " ".join(r.lines), r
    log = edge.wait_log("REJECT sender_authentication")
    assert "REJECT sender_authentication" in log, log[-2000:]
    assert edge.queue_list() == []


def test_signed_mail_passes_gets_results_and_rules_see_them(edge, rsa_key):
    raw = make_message("signed", b"Hello.\r\n", sender="alice@spf.test", to="bob@inside.test")
    raw = dkim.sign(raw, b"sel", b"spf.test", rsa_key[0],
                    include_headers=[b"from", b"to", b"subject", b"date", b"message-id"]) + raw
    # A results field claiming our name, put in by the sender: removed.
    raw = b"Authentication-Results: edge1.test; dkim=pass; dmarc=pass\r\n" + raw
    check(send_from(edge, raw, "bounces@elsewhere.test"), 250)
    (got,) = edge.hub.wait(1)
    head = got[2].split(b"\r\n\r\n", 1)[0].decode()
    results = [l for l in head.replace("\r\n\t", " ").split("\r\n") if l.startswith("Authentication-Results:")]
    assert len(results) == 1, head
    assert "dkim=pass header.d=spf.test" in results[0] and "dmarc=pass" in results[0], results
    assert "X-DKIM-Verified: yes" in head, head


def test_lookups_are_cached_by_ttl(edge, rsa_key, dns):
    """The second message from the same domain, signed with the same key,
    is checked from the resolver's cache: dnsmasq sees no new query (its
    records have a 300 s TTL), and the cache hits are counted."""
    def signed(n):
        raw = make_message("cached %d" % n, b"Hello.\r\n", sender="alice@spf.test", to="bob@inside.test")
        return dkim.sign(raw, b"sel", b"spf.test", rsa_key[0],
                         include_headers=[b"from", b"to", b"subject", b"date", b"message-id"]) + raw
    line = "sender_authentication: spf=none dkim=pass dmarc=pass"
    start = edge.stderr().count(line)
    check(send_from(edge, signed(1), "bounces@elsewhere.test"), 250)
    before = dns.queries()
    check(send_from(edge, signed(2), "bounces@elsewhere.test"), 250)
    assert dns.queries() == before, "the second message asked DNS again"
    deadline = time.monotonic() + 5
    while edge.stderr().count(line) < start + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert edge.stderr().count(line) == start + 2, edge.stderr()[-3000:]
    status = json.loads(edge.cli("status", "--json").stdout)
    assert status["metrics"]["sluice_dns_cache_hits_total"] >= 3, status["metrics"]


def arc_forwarded(rsa_key, tmp_path):
    """alice@spf.test's signed mail, changed by list.test (a footer breaks
    the DKIM signature) and sealed by it."""
    pytest.importorskip("authres")
    raw = make_message("list", b"Hello.\r\n", sender="alice@spf.test", to="list@list.test")
    raw = dkim.sign(raw, b"sel", b"spf.test", rsa_key[0],
                    include_headers=[b"from", b"to", b"subject", b"date", b"message-id"]) + raw
    raw = raw + b"-- \r\nlist footer\r\n"
    raw = b"Authentication-Results: list.test; dkim=pass header.d=spf.test; spf=pass smtp.mailfrom=spf.test\r\n" + raw
    seal = dkim.arc_sign(raw, b"arc", b"list.test", rsa_key[0], b"list.test",
                         include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return b"".join(seal) + raw


def test_a_forwarded_message_with_a_trusted_arc_chain_is_not_rejected(edge, rsa_key, tmp_path):
    raw = arc_forwarded(rsa_key, tmp_path)
    check(send_from(edge, raw, "list-bounces@list.test"), 250)
    (got,) = edge.hub.wait(1)
    assert b"arc=pass" in got[2] and b"dmarc=fail" in got[2], got[2][:1500]
    assert "excused: trusted ARC sealer" in edge.wait_log("excused")


def test_the_same_chain_from_an_untrusted_sealer_is_rejected(sluice_factory, dns, sinks, rsa_key, tmp_path):
    hub = sinks()
    d = sluice_factory(rules_text=AGENT_RULES.replace('trusted_arc_sealers = ["list.test"]', ""),
                       dns_servers=["127.0.0.1:%d" % dns.port], dns_extra="timeout = 2\nattempts = 1\n",
                       static={"mailhub.test": ["127.0.0.1:%d" % hub.port]})
    check(send_from(d, arc_forwarded(rsa_key, tmp_path), "list-bounces@list.test"), 550, "5.7.1")


def test_inside_mail_is_not_checked(sluice_factory, dns, sinks):
    """Originating mail (an organization connector) is never verified: the
    same forgery that is rejected from outside passes, with no results."""
    hub = sinks()
    rules = AGENT_RULES + '\n[[inbound]]\nname = "inside"\nkind = "organization"\nclient_ips = ["127.0.0.5/32"]\n'
    d = sluice_factory(rules_text=rules, dns_servers=["127.0.0.1:%d" % dns.port],
                       dns_extra="timeout = 2\nattempts = 1\n",
                       static={"mailhub.test": ["127.0.0.1:%d" % hub.port]})
    raw = make_message("inside", b"hi\r\n", sender="ceo@spf.test", to="bob@inside.test")
    check(send_from(d, raw, "ceo@spf.test", source="127.0.0.5"), 250)
    (got,) = hub.wait(1)
    assert b"Authentication-Results" not in got[2]


# ---- sluice trace runs the same checks ------------------------------------

@pytest.fixture
def tracer(sluice_factory, dns):
    return sluice_factory(start=False, rules_text=AGENT_RULES, dns_servers=["127.0.0.1:%d" % dns.port],
                          dns_extra="timeout = 2\nattempts = 1\n")


def trace(d, path, mail_from, *extra):
    return d.cli("trace", path, "--from", mail_from, "--to", "bob@inside.test", "--peer", ANON, *extra)


def test_trace_runs_the_checks_and_the_rules_on_them(tracer, rsa_key, tmp_path):
    path = message(tmp_path, rsa_key)
    p = trace(tracer, path, "alice@spf.test", "--helo", "client.example", "--json")
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    doc = json.loads(p.stdout)
    a = doc["authentication"]
    assert a["checked"] and a["dkim"][0]["result"] == "pass" and a["dkim"][0]["domain"] == "spf.test", a
    assert a["verdicts"]["dkim"] == "pass" and a["verdicts"]["dmarc"] == "pass", a
    assert a["dmarc_action"] == "none" and a["field"].startswith("Authentication-Results: edge1.test;"), a
    # The rule on dkim = "pass" fired; the results field goes on top.
    added = doc["headers_added"]
    assert {"name": "X-DKIM-Verified", "value": "yes"} in added, added
    assert any(h.get("field", "").startswith("Authentication-Results: edge1.test;") for h in added), added
    # The plain report: the field on one line, and the rule's header.
    p = trace(tracer, path, "alice@spf.test", "--helo", "client.example")
    out = p.stdout.decode()
    assert p.returncode == 0, out
    # SPF fails (127.0.0.3 is not spf.test's), DMARC passes by DKIM.
    assert "authentication: Authentication-Results: edge1.test; spf=fail smtp.mailfrom=spf.test;" in out, out
    assert "dkim=pass header.d=spf.test header.s=sel" in out, out
    assert "authentication: DMARC action: none" in out, out
    assert "add X-DKIM-Verified: yes" in out, out


def test_trace_shows_a_dmarc_reject_forgery_as_rejected(tracer, tmp_path):
    path = message(tmp_path, sender="ceo@spf.test")
    p = trace(tracer, path, "ceo@spf.test", "--helo", "client.example")
    out = p.stdout.decode()
    assert p.returncode == 1, (p.returncode, out, p.stderr)
    assert "result:  Rejected (550 5.7.1 Message rejected per DMARC policy of spf.test)" in out, out
    assert "authentication: DMARC action: reject" in out and "dmarc=fail" in out, out
    assert "X-DKIM-Verified" not in out, out
    p = trace(tracer, path, "ceo@spf.test", "--helo", "client.example", "--json")
    assert p.returncode == 1
    doc = json.loads(p.stdout)
    assert doc["result"] == "Rejected" and doc["reply"].startswith("550 5.7.1"), doc
    assert doc["authentication"]["dmarc_action"] == "reject", doc["authentication"]


def test_trace_without_helo_says_how_and_given_results_reach_the_rules(tracer, tmp_path):
    path = message(tmp_path, sender="ceo@spf.test")
    p = trace(tracer, path, "ceo@spf.test")
    assert p.returncode == 0 and "authentication: not checked: give --helo NAME" in p.stdout.decode(), p
    p = trace(tracer, path, "ceo@spf.test", "--auth-results", "dkim=pass dmarc=pass", "--json")
    assert p.returncode == 0, p
    doc = json.loads(p.stdout)
    assert doc["authentication"]["verdicts"]["dkim"] == "pass", doc["authentication"]
    assert {"name": "X-DKIM-Verified", "value": "yes"} in doc["headers_added"], doc
    p = trace(tracer, path, "ceo@spf.test", "--auth-results", "dkim=maybe")
    assert p.returncode == 2, p
    # Originating sessions are never checked, as in the daemon.
    p = tracer.cli("trace", path, "--from", "ceo@spf.test", "--to", "bob@inside.test", "--auth", "bob",
                   "--helo", "client.example", "--json")
    assert json.loads(p.stdout)["authentication"]["checked"] is False, p.stdout
