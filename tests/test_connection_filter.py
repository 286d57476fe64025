"""The connection filter's DNS block and allow lists and per-client rate
limits, against a real DNS server (dnsmasq) on loopback.

Clients are told apart by their source address: Linux routes all of
127.0.0.0/8 to lo, so a test binds its client socket to 127.0.0.2,
127.0.0.3, ... Under the rules below:
  127.0.0.2  listed in bl.test with 127.0.0.2           -> refused at RCPT
  127.0.0.3  listed in bl.test with 127.0.0.3 (not a code) -> accepted
  127.0.0.4  not listed (NXDOMAIN)                       -> accepted
  127.0.0.5  listed, but originating (inbound connector)  -> accepted
  127.0.0.6  listed, but in allowed_networks               -> accepted
  127.0.0.7  listed, but on the allow list wl.test         -> accepted
  ::1        listed in nibble format                       -> refused
"""

import json
import socket
import time

import pytest

from helpers.dnslist import BlackHole, Dnsmasq, nibbles
from helpers.ports import ipv6_available
from helpers.smtp import RawSMTP, check

RULES = """
[domains]
accepted = ["example.test"]

[[inbound]]
name = "inside"
kind = "organization"
client_ips = ["127.0.0.5/32"]

[[connector]]
name = "internet"
address_spaces = ["*"]

[connection_filter]
allowed_networks = ["127.0.0.6/32"]
block_lists = [{ zone = "bl.test", codes = ["127.0.0.2"], reply = "Client {client} is listed at {zone}" }]
allow_lists = [{ zone = "wl.test" }]
"""

ANSWERS = {
    "2.0.0.127.bl.test": "127.0.0.2",
    "3.0.0.127.bl.test": "127.0.0.3",
    "5.0.0.127.bl.test": "127.0.0.2",
    "6.0.0.127.bl.test": "127.0.0.2",
    "7.0.0.127.bl.test": "127.0.0.2",
    "7.0.0.127.wl.test": "127.0.0.2",
    nibbles("::1") + ".bl.test": "127.0.0.2",
}


@pytest.fixture(scope="module")
def dns(tmp_path_factory):
    server = Dnsmasq(str(tmp_path_factory.mktemp("dnsmasq")), ["bl.test", "wl.test", "nx.test"], ANSWERS)
    yield server
    server.stop()


def daemon(sluice_factory, port, rules=RULES, timeout=2, **kw):
    return sluice_factory(rules_text=rules, dns_servers=["127.0.0.1:%d" % port],
                          dns_extra="timeout = %d\nattempts = 1\n" % timeout, **kw)


def rcpt_from(d, source, to="bob@example.test", host=None, port=None):
    """EHLO, MAIL, RCPT from `source`; the RCPT reply."""
    c = RawSMTP(host or d.host, port or d.port, timeout=10, source=source)
    try:
        c.greeting()
        c.ehlo()
        c.mail("alice@client.test")
        return c.cmd("RCPT TO:<%s>" % to)
    finally:
        c.close()


def counts(d, agent="connection_filter"):
    p = d.cli("status", "--json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)["agents"][agent]


def test_listed_client_is_refused_at_rcpt_with_the_list_text(sluice_factory, dns):
    d = daemon(sluice_factory, dns.port)
    r = rcpt_from(d, "127.0.0.2")
    check(r, 550, "5.7.1", "Client 127.0.0.2 is listed at bl.test")
    # The log line may follow the reply by a moment.
    d.wait_log("REJECT connection_filter:")
    log = d.stderr()
    # The REJECT line names the agent and has the envelope.
    assert any("connection_filter:" in l and "to=<bob@example.test>" in l and "from=<alice@client.test>" in l
               for l in log.splitlines()), log
    assert counts(d)["rejected"] == 1


def test_unlisted_and_other_codes_are_accepted(sluice_factory, dns):
    d = daemon(sluice_factory, dns.port)
    check(rcpt_from(d, "127.0.0.4"), 250, "2.1.5")
    # Listed with 127.0.0.3, which is not among the list's codes.
    check(rcpt_from(d, "127.0.0.3"), 250, "2.1.5")
    c = counts(d)
    assert c["rejected"] == 0 and c["passed"] == 2 and c["failed_open"] == 0, c


def test_allow_lists_allowed_networks_and_originating_sessions_pass(sluice_factory, dns):
    d = daemon(sluice_factory, dns.port)
    # Counted by name: the factory's own readiness probe (from 127.0.0.1)
    # may be looked up at any moment of this test.
    names = ["%d.0.0.127.%s" % (n, z) for n in (5, 6, 7) for z in ("bl.test", "wl.test")]
    before = dns.queried(names)
    check(rcpt_from(d, "127.0.0.7"), 250, "2.1.5")   # on the allow list
    check(rcpt_from(d, "127.0.0.6"), 250, "2.1.5")   # allowed_networks
    check(rcpt_from(d, "127.0.0.5"), 250, "2.1.5")   # originating
    # Only the allow-listed client was looked up (both lists, at once).
    grew = {n: after - b for n, after, b in zip(names, dns.queried(names), before)}
    want = {n: int(n.startswith("7.")) for n in names}
    assert grew == want, open(dns.log).read()[-2000:]


def test_listed_ipv6_client_is_refused_nibble_format(sluice_factory, dns):
    if not ipv6_available():
        pytest.skip("no IPv6 on loopback")
    d = daemon(sluice_factory, dns.port, ipv6=True)
    r = rcpt_from(d, "::1", host="::1", port=d.port6)
    check(r, 550, "5.7.1", "Client ::1 is listed at bl.test")


def test_answers_are_cached_by_ttl(sluice_factory, dns):
    d = daemon(sluice_factory, dns.port)
    check(rcpt_from(d, "127.0.0.2"), 550, "5.7.1")
    # By name: the factory's readiness probe may be looked up meanwhile.
    names = ["2.0.0.127.bl.test", "2.0.0.127.wl.test"]
    before = dns.queried(names)
    m0 = json.loads(d.cli("status", "--json").stdout)["metrics"]
    check(rcpt_from(d, "127.0.0.2"), 550, "5.7.1")
    assert dns.queried(names) == before
    assert before[0] >= 1, open(dns.log).read()[-2000:]
    # The metrics say the same: cache hits, no more queries.
    m = json.loads(d.cli("status", "--json").stdout)["metrics"]
    assert m["sluice_dns_cache_hits_total"] >= m0["sluice_dns_cache_hits_total"] + 1, (m0, m)
    assert m["sluice_dns_queries_total"] == m0["sluice_dns_queries_total"], (m0, m)


def test_a_zone_that_does_not_resolve_lets_mail_through(sluice_factory, dns):
    rules = RULES.replace('zone = "bl.test"', 'zone = "nx.test"')
    d = daemon(sluice_factory, dns.port, rules=rules)
    check(rcpt_from(d, "127.0.0.2"), 250, "2.1.5")
    c = counts(d)
    assert c["passed"] == 1 and c["failed_open"] == 0, c


def test_a_dns_server_that_never_answers_fails_open(sluice_factory):
    hole = BlackHole()
    try:
        d = daemon(sluice_factory, hole.port, timeout=1)
        t0 = time.monotonic()
        r = rcpt_from(d, "127.0.0.2")
        waited = time.monotonic() - t0
        check(r, 250, "2.1.5")
        assert hole.received >= 1
        # The RCPT waited for the resolver's timeout (1 s), no less.
        assert waited >= 0.8, waited
        c = counts(d)
        assert c["failed_open"] == 2 and c["rejected"] == 0, c   # both lists
        log = d.wait_log("DNS list bl.test lookup 2.0.0.127.bl.test failed")
        assert "connection_filter: 127.0.0.2: DNS list bl.test lookup 2.0.0.127.bl.test failed" in log, log
    finally:
        hole.stop()


def test_connection_rate_limit(sluice_factory, dns):
    rules = RULES + "rate_limits = { connections_per_minute = 3 }\n"
    d = daemon(sluice_factory, dns.port, rules=rules)
    for _ in range(3):
        with RawSMTP(d.host, d.port, source="127.0.0.4") as c:
            c.greeting()
            check(c.cmd("QUIT"), 221)
    with RawSMTP(d.host, d.port, source="127.0.0.4") as c:
        check(c.reply(), 421, "4.7.0", "per minute")
        c.wait_closed(5)
    # Another address, an originating one and an allowed network are not limited.
    for src in ["127.0.0.8", "127.0.0.5", "127.0.0.5", "127.0.0.5", "127.0.0.5",
                "127.0.0.6", "127.0.0.6", "127.0.0.6", "127.0.0.6"]:
        with RawSMTP(d.host, d.port, source=src) as c:
            c.greeting()
    assert counts(d)["deferred"] == 1
    assert "connection_filter: 127.0.0.4:" in d.wait_log("connection_filter: 127.0.0.4:")


def test_message_rate_limit(sluice_factory, dns):
    rules = RULES + "rate_limits = { messages_per_minute = 2 }\n"
    d = daemon(sluice_factory, dns.port, rules=rules)
    with RawSMTP(d.host, d.port, source="127.0.0.4") as c:
        c.greeting()
        c.ehlo()
        for _ in range(2):
            c.mail("alice@client.test")
            check(c.cmd("RSET"), 250)
        check(c.cmd("MAIL FROM:<alice@client.test>"), 450, "4.7.1")
    with RawSMTP(d.host, d.port, source="127.0.0.5") as c:
        c.greeting()
        c.ehlo()
        for _ in range(4):
            c.mail("alice@example.test")
            check(c.cmd("RSET"), 250)
    assert counts(d)["deferred"] == 1


def test_disabled_agent_checks_nothing(sluice_factory, dns):
    rules = RULES + "rate_limits = { connections_per_minute = 1 }\n" + \
        '[[agent]]\nname = "connection_filter"\nenabled = false\n'
    d = daemon(sluice_factory, dns.port, rules=rules)
    # By name: an earlier test's sessions may still reach dnsmasq late.
    names = ["2.0.0.127.bl.test", "2.0.0.127.wl.test"]
    before = dns.queried(names)
    check(rcpt_from(d, "127.0.0.2"), 250, "2.1.5")
    check(rcpt_from(d, "127.0.0.2"), 250, "2.1.5")
    assert dns.queried(names) == before


def test_trace_shows_the_dns_list_answers(sluice_factory, dns, tmp_path):
    d = daemon(sluice_factory, dns.port)
    msg = tmp_path / "m.eml"
    msg.write_bytes(b"From: a@client.test\r\nSubject: x\r\n\r\nHi.\r\n")
    rules = d.workdir + "/rules.toml"
    p = d.cli("trace", str(msg), "--from", "a@client.test", "--to", "bob@example.test",
              "--peer", "127.0.0.2", "--rules", rules, "--json")
    assert p.returncode == 1, p.stderr
    doc = json.loads(p.stdout)
    cf = doc["connection_filter"]
    assert doc["result"] == "Rejected" and "Client 127.0.0.2 is listed at bl.test" in doc["reply"]
    bl = [l for l in cf["lists"] if l["zone"] == "bl.test"][0]
    assert bl == {"zone": "bl.test", "allow": False, "query": "2.0.0.127.bl.test",
                  "answer": "127.0.0.2", "outcome": "listed"}, cf
    p = d.cli("trace", str(msg), "--from", "a@client.test", "--to", "bob@example.test",
              "--peer", "127.0.0.7", "--rules", rules)
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    assert "allow list wl.test asked 7.0.0.127.wl.test: listed (127.0.0.2)" in out, out
    assert "connection_filter: allow-listed by wl.test" in out, out
