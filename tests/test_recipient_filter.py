"""The recipient filter (OnRcptCommand) against the real daemon: valid and
blocked recipients at RCPT time, the tarpit and the harvest limit measured
here, call-ahead at a real next hop (aiosmtpd, helpers.sink), its cache,
a next hop that is down or never answers, `[[agent]] enabled = false`, and
`sluice trace` showing each decision.

127.0.0.1 is an anonymous client under these rules (the filter applies);
127.0.0.2 is the organisation (never filtered)."""

import json
import socket
import subprocess
import time

from helpers.daemon import SLUICE_BIN, relay
from helpers.smtp import check, queued_id

BASE = """version = 1
[domains]
accepted = ["contoso.com", "eu.contoso.com", "fabrikam.com"]

[[inbound]]
name = "org"
kind = "organization"
client_ips = ["127.0.0.2/32"]

[[connector]]
name = "internet"
address_spaces = ["*"]
"""

STATIC = BASE + """
[recipient_filter]
valid = ["jaap@contoso.com", "*.contoso.com", "fabrikam.com"]
blocked = ["ceo@contoso.com"]
"""

MSG = b"From: someone@example.test\r\nSubject: filter\r\n\r\nbody\r\n"


def session(d, source=None):
    c = d.connect(source=source)
    c.ehlo()
    return c


def test_unknown_recipient_gets_550_5_1_1_at_rcpt_and_is_not_spooled(sluice_factory):
    d = sluice_factory(rules_text=STATIC)
    c = session(d)
    c.mail("someone@example.test")
    c.rcpt("jaap@contoso.com")                    # exact address
    c.rcpt("anyone@eu.contoso.com")               # *.contoso.com
    c.rcpt("anyone@fabrikam.com")                 # the whole domain
    check(c.rcpt("nobody@contoso.com", expect=None), 550, "5.1.1")
    check(c.rcpt("Postmaster@contoso.com", expect=None), 250, "2.1.5")
    r = c.data(MSG)
    check(r, 250)
    entry = [m for m in d.queue_list() if m["id"] == queued_id(r)][0]
    assert sorted(entry["rcpts"]) == sorted(["jaap@contoso.com", "anyone@eu.contoso.com",
                                             "anyone@fabrikam.com", "Postmaster@contoso.com"]), entry
    assert "nobody@contoso.com" not in json.dumps(d.queue_list())
    log = d.stderr()
    assert "REJECT" in log and "recipient_filter:" in log and "to=<nobody@contoso.com>" in log, log[-3000:]
    status = d.cli("status").stdout
    status = status.decode() if isinstance(status, bytes) else status
    line = [ln for ln in status.splitlines() if "agent:" in ln and "recipient_filter:" in ln]
    assert line and "rejected 1" in line[0] and "passed 4" in line[0], status


def test_blocked_recipient_is_refused_550_5_7_1(sluice_factory):
    d = sluice_factory(rules_text=STATIC)
    c = session(d)
    c.mail("someone@example.test")
    r = c.rcpt("CEO@contoso.com", expect=None)
    check(r, 550, "5.7.1")
    # outside the accepted domains: relay denied as before
    check(c.rcpt("x@gmail.test", expect=None), 554, "5.7.1")


def test_originating_sessions_are_not_filtered(sluice_factory):
    d = sluice_factory(rules_text=STATIC)
    c = session(d, source="127.0.0.2")
    c.mail("user@contoso.com")
    c.rcpt("nobody@contoso.com")
    c.rcpt("ceo@contoso.com")
    check(c.data(MSG), 250)


def test_disabled_agent_takes_unknown_recipients_but_never_relays(sluice_factory):
    d = sluice_factory(rules_text=STATIC + '\n[[agent]]\nname = "recipient_filter"\nenabled = false\n')
    c = session(d)
    c.mail("someone@example.test")
    c.rcpt("nobody@contoso.com")
    c.rcpt("ceo@contoso.com")
    check(c.rcpt("x@gmail.test", expect=None), 554, "5.7.1")
    out = d.cli("pipeline").stdout
    out = out.decode() if isinstance(out, bytes) else out
    assert any("recipient_filter" in ln and "[disabled]" in ln for ln in out.splitlines()), out


def test_tarpit_delays_each_rcpt_reply_after_an_unknown_recipient(sluice_factory):
    d = sluice_factory(rules_text=STATIC + 'tarpit = "1s"\n')
    c = session(d)
    c.mail("someone@example.test")
    c.rcpt("jaap@contoso.com")
    t0 = time.monotonic()
    check(c.rcpt("nobody@contoso.com", expect=None), 550, "5.1.1")
    first = time.monotonic() - t0
    t0 = time.monotonic()
    c.rcpt("jaap@contoso.com")  # a valid one is slowed too, from now on
    second = time.monotonic() - t0
    assert first >= 1.0 and second >= 1.0, (first, second)


def test_harvest_limit_closes_with_421_4_7_0(sluice_factory):
    d = sluice_factory(rules_text=STATIC + "max_unknown = 3\n")
    c = session(d)
    c.mail("someone@example.test")
    for i in range(3):
        check(c.rcpt("guess%d@contoso.com" % i, expect=None), 550, "5.1.1")
    r = c.rcpt("guess3@contoso.com", expect=None)
    check(r, 421, "4.7.0")
    assert c.wait_closed(5), "the session stays open after 421"
    # a new session starts afresh
    c2 = session(d)
    c2.mail("someone@example.test")
    c2.rcpt("jaap@contoso.com")


def call_ahead_rules(hop="hop.test", timeout=None, extra=""):
    return BASE + """
[[connector]]
name = "exchange"
address_spaces = ["--"]
smart_hosts = ["%s"]

[recipient_filter]
valid = ["fixed@contoso.com"]
call_ahead = "exchange"
%s%s""" % (hop, 'call_ahead_timeout = "%s"\n' % timeout if timeout else "", extra)


def test_call_ahead_asks_the_next_hop_and_caches_both_answers(sluice_factory, sinks):
    hop = sinks(rcpt_replies={"gone@contoso.com": ["550 5.1.1 <gone@contoso.com>: no such user"]})
    d = relay(sluice_factory, {"hop.test": hop.port}, rules_text=call_ahead_rules())
    c = session(d)
    c.mail("someone@example.test")
    c.rcpt("jaap@contoso.com")
    check(c.rcpt("gone@contoso.com", expect=None), 550, "5.1.1")
    c.rcpt("fixed@contoso.com")  # decided by a valid pattern: no probe
    # the same addresses again, also in a new session: answered from the cache
    c.rcpt("Jaap@contoso.com")
    check(c.rcpt("gone@contoso.com", expect=None), 550, "5.1.1")
    c2 = session(d)
    c2.mail("other@example.test")
    c2.rcpt("jaap@contoso.com")
    seen = [a.lower() for a in hop.rcpts_seen]
    assert seen.count("jaap@contoso.com") == 1, hop.rcpt_log
    assert seen.count("gone@contoso.com") == 1, hop.rcpt_log
    assert "fixed@contoso.com" not in seen, hop.rcpt_log
    # the probe is EHLO, MAIL FROM:<>, RCPT, QUIT: nothing was delivered
    assert hop.messages == []
    assert "call-ahead" in d.stderr()


def test_call_ahead_next_hop_down_gives_450_4_1_1_and_is_not_cached(sluice_factory, dead_port, sinks):
    d = relay(sluice_factory, {"hop.test": dead_port}, rules_text=call_ahead_rules())
    c = session(d)
    c.mail("someone@example.test")
    check(c.rcpt("jaap@contoso.com", expect=None), 450, "4.1.1")
    check(c.rcpt("jaap@contoso.com", expect=None), 450, "4.1.1")


def test_call_ahead_4xx_gives_450_4_1_1(sluice_factory, sinks):
    hop = sinks(rcpt_reply="451 4.3.0 try later")
    d = relay(sluice_factory, {"hop.test": hop.port}, rules_text=call_ahead_rules())
    c = session(d)
    c.mail("someone@example.test")
    check(c.rcpt("jaap@contoso.com", expect=None), 450, "4.1.1")
    check(c.rcpt("jaap@contoso.com", expect=None), 450, "4.1.1")
    assert len(hop.rcpts_seen) == 2, "a 4xx must not be cached: %r" % hop.rcpt_log


def test_call_ahead_next_hop_that_never_answers_gives_450_within_the_timeout(sluice_factory):
    # A listener that completes TCP handshakes (backlog) but never greets.
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        d = relay(sluice_factory, {"hop.test": silent.getsockname()[1]},
                  rules_text=call_ahead_rules(timeout="2s"))
        c = session(d)
        c.mail("someone@example.test")
        t0 = time.monotonic()
        r = c.rcpt("jaap@contoso.com", expect=None)
        check(r, 450, "4.1.1")
        assert time.monotonic() - t0 >= 1.5  # it waited for the next hop first
        # the session is still usable
        check(c.cmd("NOOP"), 250)
    finally:
        silent.close()


def trace(rules_path, to, peer="192.0.2.1", json_out=True):
    msg = rules_path.parent / "m.eml"
    msg.write_bytes(MSG)
    args = [SLUICE_BIN, "trace", str(msg), "--from", "someone@example.test", "--peer", peer,
            "--rules", str(rules_path)]
    for t in to:
        args += ["--to", t]
    if json_out:
        args.append("--json")
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def test_trace_shows_the_recipient_filter_per_recipient(tmp_path):
    p = tmp_path / "rules.toml"
    p.write_text(STATIC)
    r = trace(p, ["jaap@contoso.com", "nobody@contoso.com", "ceo@contoso.com"])
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    rf = [x["recipient_filter"] for x in doc["recipients"]]
    assert rf[0]["decision"].startswith("valid") and rf[0]["reply"] is None, rf
    assert rf[1]["reply"].startswith("550 5.1.1"), rf
    assert rf[2]["reply"].startswith("550 5.7.1"), rf
    assert doc["recipients"][1]["rejected"].startswith("550 5.1.1"), doc["recipients"][1]
    assert any("recipient_filter" in line and "nobody@contoso.com" in line for line in doc["log"]), doc["log"]
    # all refused: the trace says Rejected
    r = trace(p, ["nobody@contoso.com"])
    assert r.returncode == 1 and json.loads(r.stdout)["result"] == "Rejected", r.stdout
    r = trace(p, ["nobody@contoso.com"], json_out=False)
    assert "recipient filter <nobody@contoso.com>: unknown recipient" in r.stdout, r.stdout


def test_trace_asks_the_next_hop(tmp_path, sinks):
    hop = sinks(rcpt_replies={"gone@contoso.com": ["550 5.1.1 no such user"]})
    p = tmp_path / "rules.toml"
    p.write_text(call_ahead_rules(hop="127.0.0.1:%d" % hop.port))
    r = trace(p, ["jaap@contoso.com", "gone@contoso.com"])
    doc = json.loads(r.stdout)
    ca = [x["recipient_filter"]["call_ahead"] for x in doc["recipients"]]
    assert ca[0]["answer"] == "valid" and ca[1]["answer"] == "unknown", ca
    assert "550" in ca[1]["detail"], ca
    assert doc["recipients"][1]["rejected"].startswith("550 5.1.1"), doc
