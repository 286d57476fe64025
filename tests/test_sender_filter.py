"""The sender filter (OnMailCommand, OnEndOfHeaders) against the real
daemon: blocked senders refused at MAIL, a blocked `From:` refused at the
end of data, the stamp a transport rule acts on (and an incoming fake of
it that is removed and never seen by the rules), blank senders, originating
sessions untouched, `[[agent]] enabled = false`, and `sluice trace`.

127.0.0.1 is an anonymous client under these rules; 127.0.0.2 is the
organisation. Mail for contoso.com leaves through a smart host that is a
capturing sink (helpers.sink), so the delivered headers are checked."""

import json
import subprocess

from helpers.daemon import SLUICE_BIN, relay
from helpers.smtp import check, queued_id

BASE = """version = 1
[domains]
accepted = ["contoso.com"]

[[inbound]]
name = "org"
kind = "organization"
client_ips = ["127.0.0.2/32"]

[[connector]]
name = "inside"
address_spaces = ["--"]
smart_hosts = ["hop.test"]

[[connector]]
name = "internet"
address_spaces = ["*"]
"""

BLOCKED = 'blocked = ["spam.example", "*.bulk.example", "bad@ok.example"]\n'
REJECT = BASE + "\n[sender_filter]\n" + BLOCKED
STAMP = BASE + "\n[sender_filter]\n" + BLOCKED + 'action = "stamp"\n' + """
[[rule]]
name = "Flag stamped senders"
if = { header = "X-Sluice-Sender-Filter" }
then = { set_header = { "X-Spam-Flag" = "YES" } }
"""


def msg(frm="good@ok.example", extra=b""):
    return (b"From: Someone <" + frm.encode() + b">\r\n" + extra
            + b"Subject: sender filter\r\n\r\nbody\r\n")


def session(d, source=None):
    c = d.connect(source=source)
    c.ehlo()
    return c


def test_blocked_senders_are_refused_at_mail(sluice_factory):
    d = sluice_factory(rules_text=REJECT)
    c = session(d)
    for s in ["x@spam.example", "x@a.bulk.example", "BAD@ok.example"]:
        check(c.mail(s, expect=None), 550, "5.7.1")
    c.mail("good@ok.example")
    c.rcpt("user@contoso.com")
    check(c.data(msg()), 250)
    c2 = session(d)
    c2.mail("x@bulk.example")  # *.bulk.example: subdomains only
    log = d.stderr()
    assert "REJECT sender_filter:" in log and "from=<x@spam.example>" in log, log[-3000:]


def test_a_blocked_from_header_refuses_the_message_at_end_of_data(sluice_factory):
    d = sluice_factory(rules_text=REJECT)
    c = session(d)
    c.mail("good@ok.example")
    c.rcpt("user@contoso.com")
    r = c.data(msg(frm="someone@spam.example"))
    check(r, 550, "5.7.1")
    assert d.queue_list() == [], d.queue_list()
    assert "(From: header)" in d.stderr()


def test_stamp_is_added_and_a_transport_rule_acts_on_it(sluice_factory, sinks):
    hop = sinks()
    d = relay(sluice_factory, {"hop.test": hop.port}, rules_text=STAMP)
    c = session(d)
    c.mail("x@spam.example")  # stamped, not refused
    c.rcpt("user@contoso.com")
    check(c.data(msg()), 250)
    m = hop.wait(1)[0]
    assert b"\r\nX-Sluice-Sender-Filter: blocked\r\n" in m.data, m.data
    assert b"\r\nX-Spam-Flag: YES\r\n" in m.data, m.data
    status = d.cli("status").stdout
    status = status.decode() if isinstance(status, bytes) else status
    assert any("sender_filter:" in ln and "stamped 1" in ln for ln in status.splitlines()), status


def test_a_blocked_from_header_is_stamped_too(sluice_factory, sinks):
    hop = sinks()
    d = relay(sluice_factory, {"hop.test": hop.port}, rules_text=STAMP)
    c = session(d)
    c.mail("good@ok.example")
    c.rcpt("user@contoso.com")
    check(c.data(msg(frm="x@a.bulk.example")), 250)
    m = hop.wait(1)[0]
    assert b"X-Sluice-Sender-Filter: blocked" in m.data and b"X-Spam-Flag: YES" in m.data, m.data


def test_an_incoming_stamp_from_outside_is_removed_and_never_seen_by_rules(sluice_factory, sinks):
    hop = sinks()
    d = relay(sluice_factory, {"hop.test": hop.port}, rules_text=STAMP)
    c = session(d)
    c.mail("good@ok.example")
    c.rcpt("user@contoso.com")
    check(c.data(msg(extra=b"X-Sluice-Sender-Filter: blocked\r\n")), 250)
    m = hop.wait(1)[0]
    assert b"X-Sluice-Sender-Filter" not in m.data, m.data
    assert b"X-Spam-Flag" not in m.data, m.data


def test_blank_sender_accepted_by_default_and_refused_on_request(sluice_factory):
    d = sluice_factory(rules_text=REJECT)
    c = session(d)
    c.mail("")
    d2 = sluice_factory(rules_text=REJECT + 'blank_sender = "reject"\n')
    c = session(d2)
    check(c.mail("", expect=None), 550, "5.7.1")
    c.mail("good@ok.example")


def test_originating_sessions_are_never_sender_filtered(sluice_factory):
    d = sluice_factory(rules_text=REJECT + 'blank_sender = "reject"\n')
    c = session(d, source="127.0.0.2")
    c.mail("x@spam.example")
    c.rcpt("user@contoso.com")
    check(c.data(msg(frm="x@spam.example")), 250)
    c.mail("")


def test_disabled_sender_filter_lets_blocked_senders_through(sluice_factory):
    d = sluice_factory(rules_text=REJECT + '\n[[agent]]\nname = "sender_filter"\nenabled = false\n')
    c = session(d)
    c.mail("x@spam.example")
    c.rcpt("user@contoso.com")
    r = c.data(msg(frm="x@spam.example"))
    check(r, 250)
    assert queued_id(r)


def test_trace_shows_the_sender_filter(tmp_path):
    p = tmp_path / "rules.toml"
    p.write_text(REJECT)
    m = tmp_path / "m.eml"
    m.write_bytes(msg(frm="x@spam.example"))
    base = [SLUICE_BIN, "trace", str(m), "--to", "user@contoso.com", "--rules", str(p)]
    r = subprocess.run(base + ["--from", "good@ok.example", "--peer", "192.0.2.1", "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["reply"].startswith("550 5.7.1"), doc
    assert doc["sender_filter"] == "passed", doc
    assert any("sender_filter" in ln and "x@spam.example" in ln for ln in doc["log"]), doc["log"]
    r = subprocess.run(base + ["--from", "x@spam.example", "--peer", "192.0.2.1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "sender filter: blocked sender refused" in r.stdout, r.stdout
    # from inside: untouched
    r = subprocess.run(base + ["--from", "x@spam.example", "--peer", "127.0.0.2", "--json"],
                       capture_output=True, text=True, timeout=60)
    assert json.loads(r.stdout)["sender_filter"].startswith("originating"), r.stdout
