"""The content_filter agent: sluice as a milter client, against a real
milter (Debian's python3-milter, libmilter underneath) and, for the
protocol's bad input, a raw fake milter (helpers.milter).

127.0.0.1 is an anonymous client under these rules; 127.0.0.2 is the
organisation. Mail for contoso.com leaves through a smart host that is a
capturing sink, so what was stored (with every modification) is checked
where it arrives. Mail with `X-Spam: Yes` (added by the milter) is routed
by a rule to the quarantine connector, a second sink."""

import os
import time

import pytest

from helpers.daemon import relay
from helpers.milter import FakeMilter, PyMilter
from helpers.smtp import check, queued_id

RULES = """version = 1
[domains]
accepted = ["contoso.com"]

[[inbound]]
name = "org"
kind = "organization"
client_ips = ["127.0.0.2/32"]
%(inbound)s

[[connector]]
name = "inside"
address_spaces = ["--"]
smart_hosts = ["hop.test"]

[[connector]]
name = "quarantine"
address_spaces = ["quarantine.invalid"]
smart_hosts = ["quarantine.test"]

[[connector]]
name = "internet"
address_spaces = ["*"]

[[rule]]
name = "Spam to quarantine"
if = { header = "X-Spam", header_value_matches = '(?i)^yes$' }
then = { use_connector = "quarantine" }

[[rule]]
name = "Milter quarantine"
if = { header = "X-Sluice-Quarantine" }
then = { use_connector = "quarantine" }
%(extra)s
"""


def rules(inbound="", extra=""):
    return RULES % {"inbound": inbound, "extra": extra}


def milter_section(address, name="test", **kw):
    lines = ["[[milter]]", 'name = "%s"' % name, 'address = "%s"' % address]
    kw.setdefault("eom_timeout", "3s")
    kw.setdefault("command_timeout", "3s")
    for k, v in kw.items():
        if isinstance(v, bool):
            lines.append("%s = %s" % (k, "true" if v else "false"))
        elif isinstance(v, int):
            lines.append("%s = %d" % (k, v))
        else:
            lines.append('%s = "%s"' % (k, v))
    return "\n".join(lines) + "\n"


def msg(do="", extra=b"", body=b"Hello from the test.\r\n"):
    head = b"From: Someone <good@ok.example>\r\nTo: user@contoso.com\r\nSubject: milter test\r\n"
    if do:
        head += b"X-Milter-Do: " + do.encode() + b"\r\n"
    return head + extra + b"\r\n" + body


@pytest.fixture
def milter(tmp_path):
    made = []

    def make(**kw):
        m = PyMilter(tmp_path, **kw)
        made.append(m)
        return m
    yield make
    for m in made:
        m.stop()


@pytest.fixture
def fake():
    made = []

    def make(at, what):
        m = FakeMilter(at, what)
        made.append(m)
        return m
    yield make
    for m in made:
        m.stop()


def daemon(sluice_factory, sinks, milters, rules_text=None):
    hop, quarantine = sinks(), sinks()
    d = relay(sluice_factory, {"hop.test": hop.port, "quarantine.test": quarantine.port},
              rules_text=rules_text or rules(), extra="".join(milters))
    return d, hop, quarantine


def send(d, data, rcpts=("user@contoso.com",), frm="good@ok.example", source=None, expect=250):
    c = d.connect(source=source)
    c.ehlo()
    c.mail(frm)
    for r in rcpts:
        c.rcpt(r)
    r = c.data(data)
    if expect is not None:
        assert r.code == expect, r
    return r


def status_line(d, agent):
    out = d.cli("status").stdout
    out = out.decode() if isinstance(out, bytes) else out
    return next((ln for ln in out.splitlines() if ln.strip().startswith(agent + ":")), out)


def test_every_modification_is_in_what_is_stored_and_delivered(sluice_factory, sinks, milter):
    m = milter()
    d, hop, _ = daemon(sluice_factory, sinks, [milter_section(m.address)])
    do = ("addheader,insheader,chgheader,delheader,replbody,addrcpt:added@contoso.com,"
          "delrcpt:other@contoso.com,chgfrom:changed@ok.example")
    r = send(d, msg(do, extra=b"X-Delete-Me: please\r\n"), rcpts=("user@contoso.com", "other@contoso.com"))
    qid = queued_id(r)
    got = hop.wait(1)[0]
    data = got.data
    assert got.mail_from == "changed@ok.example", got.mail_from
    assert sorted(got.rcpts) == ["added@contoso.com", "user@contoso.com"], got.rcpts
    assert b"\r\nX-Test-Milter: added\r\n" in data, data
    assert data.index(b"X-First: inserted") < data.index(b"From: Someone"), data
    assert b"Subject: [milter] changed\r\n" in data and b"Subject: milter test" not in data, data
    assert b"X-Delete-Me" not in data, data
    assert data.endswith(b"\r\n\r\nThe milter replaced this body.\r\n"), data
    assert b"Hello from the test" not in data
    # Our Received: field is first, the policy's edits apply on top.
    assert data.startswith(b"Received: from client.test"), data[:200]
    seen = m.seen()[-1]
    assert seen["macros"]["j"] == "edge1.test", seen
    assert seen["macros"]["{daemon_name}"] == "edge1.test", seen
    assert seen["macros"]["{client_addr}"] == "127.0.0.1", seen
    assert seen["macros"]["i"] == qid, seen
    assert seen["macros"]["{mail_addr}"] == "good@ok.example", seen
    assert seen["macros"]["{rcpt_addr}"] == "user@contoso.com", seen
    assert seen["from"] == "<good@ok.example>", seen
    assert seen["rcpts"] == ["<user@contoso.com>", "<other@contoso.com>"], seen
    assert ["Subject", "milter test"] in seen["headers"], seen
    assert seen["body"] == "Hello from the test.\r\n", seen
    assert "passed 1" in status_line(d, "content_filter")


def test_a_large_message_is_filtered_whole_and_spooled_in_chunks(sluice_factory, sinks, milter):
    m = milter()
    d, hop, _ = daemon(sluice_factory, sinks, [milter_section(m.address)])
    line = b"x" * 998 + b"\r\n"
    body = line * 1200  # ~1.2 MB: several spool chunks
    send(d, msg("addheader", body=body))
    got = hop.wait(1)[0]
    assert b"\r\nX-Test-Milter: added\r\n" in got.data
    assert got.data.endswith(body)
    assert len(m.seen()[-1]["body"]) == len(body)


@pytest.mark.parametrize("do,code,enhanced,text", [
    ("reject", 550, "5.7.1", "Message content rejected"),
    ("tempfail", 451, "4.7.1", "try again later"),
    ("replycode", 554, "5.7.0", "Milter says no"),
])
def test_a_refusal_is_the_reply_to_data_and_nothing_is_queued(sluice_factory, sinks, milter, do, code,
                                                              enhanced, text):
    m = milter()
    d, _, _ = daemon(sluice_factory, sinks, [milter_section(m.address)])
    r = send(d, msg(do), expect=None)
    check(r, code, enhanced, contains=text)
    assert d.queue_list() == []
    log = d.wait_log("milter test refused")
    assert "REJECT content_filter:" in log and "milter test refused" in log, log[-2000:]


def test_discard_answers_250_and_stores_nothing(sluice_factory, sinks, milter):
    m = milter()
    d, hop, _ = daemon(sluice_factory, sinks, [milter_section(m.address)])
    send(d, msg("discard"))
    assert d.queue_list() == []
    assert "discarded: milter test discarded it" in d.wait_log("discarded: milter test")
    send(d, msg(""))  # the next message on a pooled connection passes
    assert len(hop.wait(1)) == 1


def test_rules_act_on_what_a_milter_added_and_on_quarantine(sluice_factory, sinks, milter):
    m = milter()
    d, hop, quarantine = daemon(sluice_factory, sinks, [milter_section(m.address)])
    send(d, msg("spam"))
    got = quarantine.wait(1)[0]
    assert b"\r\nX-Spam: Yes\r\n" in got.data
    send(d, msg("quarantine"))
    got = quarantine.wait(2)[1]
    assert b"\r\nX-Sluice-Quarantine: test quarantine\r\n" in got.data, got.data
    send(d, msg(""))  # a clean one takes the normal route
    assert len(hop.wait(1)) == 1 and b"X-Spam" not in hop.messages[0].data
    assert len(quarantine.messages) == 2
    assert "stamped 1" in status_line(d, "content_filter")


@pytest.mark.parametrize("do,on_failure", [("die-body", "tempfail"), ("die-eom", "reject"),
                                           ("hang", "tempfail")])
def test_a_milter_that_dies_or_hangs_follows_on_failure(sluice_factory, sinks, milter, do, on_failure):
    m = milter()
    d, _, _ = daemon(sluice_factory, sinks, [milter_section(m.address, on_failure=on_failure,
                                                             eom_timeout="2s")])
    start = time.time()
    r = send(d, msg(do), expect=None)
    if on_failure == "tempfail":
        check(r, 451, "4.7.1")
    else:
        check(r, 550, "5.7.1")
    if do == "hang":
        assert time.time() - start >= 1.5, "answered before the eom timeout"
    assert d.queue_list() == []
    log = d.wait_log("on_failure = " + on_failure)
    assert "content_filter: milter test failed:" in log and "on_failure = " + on_failure in log, log[-2000:]
    assert "milter test failed" in log


def test_a_failed_milter_with_accept_lets_the_message_through_unchanged(sluice_factory, sinks, milter):
    m = milter()
    d, hop, _ = daemon(sluice_factory, sinks, [milter_section(m.address, on_failure="accept")])
    send(d, msg("addheader,die-eom"))
    got = hop.wait(1)[0]
    assert b"X-Test-Milter" not in got.data
    assert "failed_open 1" in status_line(d, "content_filter")


def test_a_milter_that_is_down_follows_on_failure_at_mail(sluice_factory, sinks):
    from helpers.ports import free_port
    d, hop, _ = daemon(sluice_factory, sinks, [
        milter_section("inet:127.0.0.1:%d" % free_port(), name="down", on_failure="tempfail")])
    c = d.connect()
    c.ehlo()
    check(c.mail("good@ok.example", expect=None), 451, "4.7.1")
    log = d.wait_log("REJECT content_filter:")
    assert "milter down failed: cannot connect" in d.wait_log("milter down failed"), log
    assert "REJECT content_filter:" in log, log


def test_refusals_at_mail_rcpt_and_helo_answer_that_command(sluice_factory, sinks, milter):
    m = milter()
    d, hop, _ = daemon(sluice_factory, sinks, [milter_section(m.address)])
    c = d.connect()
    c.ehlo()
    check(c.mail("reject-mail@ok.example", expect=None), 550, "5.7.1", contains="Sender refused by milter")
    c.mail("good@ok.example")
    check(c.rcpt("reject-rcpt@contoso.com", expect=None), 550, "5.1.1", contains="Recipient refused by milter")
    check(c.rcpt("tempfail-rcpt@contoso.com", expect=None), 451, "4.7.1")
    c.rcpt("user@contoso.com")
    check(c.data(msg("")), 250)
    got = hop.wait(1)[0]
    assert got.rcpts == ["user@contoso.com"], got.rcpts
    assert m.seen()[-1]["rcpts"] == ["<user@contoso.com>"]
    log = d.wait_log("to=<reject-rcpt@contoso.com>")
    assert "REJECT content_filter:" in log and "to=<reject-rcpt@contoso.com>: milter test refused" in log, log
    # A refused HELO refuses every MAIL of the session.
    c2 = d.connect()
    c2.ehlo("reject-helo.test")
    check(c2.mail("good@ok.example", expect=None), 550, "5.7.1", contains="HELO refused by milter")
    check(c2.mail("other@ok.example", expect=None), 550, "5.7.1")


@pytest.mark.parametrize("at,what", [
    (b"C", "garbage"), (b"H", "close"), (b"M", "close"), (b"R", "malformed"), (b"T", "close"),
    (b"L", "overlong"), (b"N", "garbage"), (b"B", "close"), (b"E", "overlong"), (b"E", "malformed"),
    (b"E", "close"), (b"E", "garbage")])
def test_bad_milter_input_gets_on_failure_and_nothing_accepted_is_lost(sluice_factory, sinks, fake, at, what):
    f = fake(at, what)
    d, hop, _ = daemon(sluice_factory, sinks, [milter_section(f.address, name="bad", on_failure="tempfail")])
    c = d.connect()
    c.ehlo()
    # The failure answers the command whose event failed: MAIL (connect,
    # HELO, MAIL), RCPT, or the end of DATA.
    r = c.mail("good@ok.example", expect=None)
    if at in (b"C", b"H", b"M"):
        check(r, 451, "4.7.1")
    else:
        check(r, 250)
        r = c.rcpt("user@contoso.com", expect=None)
        if at == b"R":
            check(r, 451, "4.7.1")
        else:
            check(r, 250)
            check(c.data(msg("")), 451, "4.7.1")
    assert d.queue_list() == []
    d2, hop2, _ = daemon(sluice_factory, sinks, [milter_section(f.address, name="bad", on_failure="accept")])
    send(d2, msg(""))
    assert len(hop2.wait(1)) == 1, "accepted and delivered"


def test_several_milters_run_in_order_over_tcp_and_unix(sluice_factory, sinks, milter):
    a, b = milter(), milter(unix=True)
    d, hop, _ = daemon(sluice_factory, sinks, [milter_section(a.address, name="first"),
                                               milter_section(b.address, name="second")])
    send(d, msg("addheader"))
    got = hop.wait(1)[0]
    # Each added its header; the second saw the first's.
    assert got.data.count(b"X-Test-Milter: added") == 2, got.data
    assert ["X-Test-Milter", "added"] in b.seen()[-1]["headers"]
    for i in range(3):
        send(d, msg(""))  # pooled connections carry the next messages
    assert len(hop.wait(4)) == 4 and len(a.seen()) == 4 and len(b.seen()) == 4


def test_originating_mail_is_filtered_only_by_originating_milters(sluice_factory, sinks, milter):
    a, b = milter(), milter()
    d, hop, _ = daemon(sluice_factory, sinks, [milter_section(a.address, name="inbound"),
                                               milter_section(b.address, name="signer", originating=True)])
    send(d, msg("addheader"), source="127.0.0.2")
    hop.wait(1)
    assert len(a.seen()) == 0 and len(b.seen()) == 1


def test_the_inbound_connector_chooses_its_milters_and_the_agent_can_be_off(sluice_factory, sinks, milter):
    a, b = milter(), milter()
    sections = [milter_section(a.address, name="a"), milter_section(b.address, name="b", originating=True)]
    d, hop, _ = daemon(sluice_factory, sinks, sections, rules_text=rules(inbound='milters = ["a"]'))
    send(d, msg(""), source="127.0.0.2")  # org connector: only "a", although originating
    hop.wait(1)
    assert len(a.seen()) == 1 and len(b.seen()) == 0
    off = rules(extra='\n[[agent]]\nname = "content_filter"\nenabled = false\n')
    d2, hop2, _ = daemon(sluice_factory, sinks, sections, rules_text=off)
    send(d2, msg("reject"))
    assert len(hop2.wait(1)) == 1 and len(a.seen()) == 1


def test_pipeline_lists_the_agent_and_trace_shows_each_milters_part(sluice_factory, sinks, milter, tmp_path):
    import json
    m = milter()
    d, _, _ = daemon(sluice_factory, sinks, [milter_section(m.address)])
    out = d.cli("pipeline").stdout
    out = out.decode() if isinstance(out, bytes) else out
    assert "content_filter" in out, out
    eml = tmp_path / "m.eml"
    eml.write_bytes(msg("spam,chgheader"))
    r = d.cli("trace", str(eml), "--from", "good@ok.example", "--to", "user@contoso.com", "--milters")
    text = r.stdout.decode() if isinstance(r.stdout, bytes) else r.stdout
    assert "content filter: milter test: add header X-Spam: Yes" in text, text
    assert "content filter: milter test: change header Subject #1: [milter] changed" in text, text
    assert "quarantine" in text  # the rule on X-Spam routed it
    eml.write_bytes(msg("replycode"))
    r = d.cli("trace", str(eml), "--from", "good@ok.example", "--to", "user@contoso.com", "--milters", "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 1 and doc["result"] == "Rejected", doc
    assert doc["content_filter"]["milters"][0]["milter"] == "test", doc
    assert "554 5.7.0 Milter says no (milter test)" == doc["reply"], doc


def test_macros_are_configurable_per_stage(sluice_factory, sinks, milter):
    m = milter()
    section = milter_section(m.address) + 'macros = { connect = ["j"], mail = ["{mail_addr}"] }\n'
    d, hop, _ = daemon(sluice_factory, sinks, [section])
    send(d, msg(""))
    hop.wait(1)
    macros = m.seen()[-1]["macros"]
    assert macros.get("j") == "edge1.test", macros
    assert "{client_addr}" not in macros and "{daemon_name}" not in macros, macros
    assert macros.get("{mail_addr}") == "good@ok.example", macros
    # Stages left as they were keep Postfix's defaults.
    assert macros.get("{rcpt_addr}") == "user@contoso.com", macros
