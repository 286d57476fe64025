"""Delivery, end to end: the daemon relays what it accepted to capturing
SMTP sinks (helpers.sink) on loopback, chosen per recipient by the policy; the
static DNS tables of the config point the names at the sinks."""
import subprocess
import time

from helpers.daemon import SLUICE_BIN, relay
from helpers.ports import free_port
from helpers.queue import dsn_of, dsns_of, states
from helpers.rules import sample_text, variant_text
from helpers.sink import Sink
from helpers.smtp import check, queued_id


def test_one_message_leaves_by_three_routes(sluice_factory, tmp_path, sinks):
    trend, onprem, internet = sinks(), sinks(), sinks()
    d = relay(sluice_factory, {
        "hes.trend.example": trend.port, "exch1.contoso.internal": onprem.port,
        "mx.gmail.test": internet.port, "mx": {"gmail.test": "mx.gmail.test"},
    }, rules_text=variant_text("opportunistic"))
    c = d.session()  # 127.0.0.1 is exchange-onprem in the sample: originating
    r = c.send_mail("user@contoso.com", ["a@trend.local", "b@gmail.test", "c@contoso.com"],
             b"From: user@contoso.com\r\nSubject: three ways\r\n\r\nbody\r\n")
    check(r, 250)
    qid = queued_id(r)
    t = trend.wait(1)
    o = onprem.wait(1)
    i = internet.wait(1)
    assert [m[1] for m in t] == [["a@trend.local"]]
    assert [m[1] for m in o] == [["c@contoso.com"]]
    assert [m[1] for m in i] == [["b@gmail.test"]]
    for m in t + o + i:
        assert m[0] == "user@contoso.com"
        assert m[2].startswith(b"Received: from client.test ([127.0.0.1])\r\n\tby edge1.test (sluice)"), m[2][:200]
        assert m[2].endswith(b"\r\n\r\nbody\r\n")
    states(d, qid, ["Delivered", "Delivered", "Delivered"])


def test_a_4xx_is_retried_and_a_5xx_bounces(sluice_factory, tmp_path, sinks):
    flaky = sinks(script=["451 4.3.0 try again"])
    d = relay(sluice_factory, {"mx.flaky.test": flaky.port, "mx": {"flaky.test": "mx.flaky.test"}})
    c = d.session()
    r = c.send_mail("a@contoso.com", ["x@flaky.test"], b"Subject: retry\r\n\r\nbody\r\n")
    qid = queued_id(r)
    entry = states(d, qid, ["Delivered"], timeout=20)
    assert len(flaky.messages) == 1
    assert "DEFER qid=%s" % qid in d.stderr() and "SEND qid=%s" % qid in d.stderr()

    # A 5xx bounces: the sender gets a DSN from <> quoting the reply.
    hard = sinks(script=["554 5.7.1 go away", "550 5.1.1 unknown", "550 5.1.1 no bounce address"])
    home = sinks()
    d2 = relay(sluice_factory, {"mx.hard.test": hard.port, "mx.home.test": home.port,
                                           "mx": {"hard.test": "mx.hard.test", "home.test": "mx.home.test"}})
    c = d2.session()
    r0 = r = c.send_mail("a@home.test", ["x@hard.test"], b"Subject: bounce me\r\n\r\nbody\r\n")
    entry = states(d2, queued_id(r), ["Notified"])
    assert "554 5.7.1 go away" in entry["states"][0]["Notified"]["reason"]
    frm, to, dsn = home.wait(1)[0]
    assert frm in ("", "<>") and to == ["a@home.test"]
    assert b"multipart/report; report-type=delivery-status" in dsn
    assert b"Diagnostic-Code: smtp; 554 5.7.1 go away" in dsn and b"Status: 5.7.1" in dsn
    assert b"Subject: bounce me" in dsn  # the original headers come back

    # A bounce of a bounce never happens: a DSN (from <>) that fails in turn
    # is settled without another DSN.
    c = d2.session()
    r = c.send_mail("a@hard.test", ["y@hard.test"], b"Subject: back to a dead end\r\n\r\nbody\r\n")
    q2 = queued_id(r)
    states(d2, q2, ["Notified"])
    dsn2 = dsn_of(d2, q2)
    entry = states(d2, dsn2, ["Notified"])
    assert entry["from"] == "" and entry["rcpts"] == ["a@hard.test"], entry
    assert "550 5.1.1 no bounce address" in entry["states"][0]["Notified"]["reason"], entry
    time.sleep(1.5)
    assert dsns_of(d2, dsn2) == [], d2.stderr()
    assert [e["id"] for e in d2.queue_list() if e["from"] == ""] == sorted([dsn_of(d2, queued_id(r0)), dsn2]), \
        d2.queue_list()
    assert hard.messages == [] and len(home.messages) == 1



def test_delivery_survives_a_restart(sluice_factory, tmp_path, sinks):
    # The sink is down at first: the message is deferred, the daemon is
    # killed, and after a restart with the sink up it is delivered.
    port = free_port()
    d = relay(sluice_factory, {"mx.later.test": port, "mx": {"later.test": "mx.later.test"}})
    c = d.session()
    r = c.send_mail("a@contoso.com", ["x@later.test"], b"Subject: later\r\n\r\nbody\r\n")
    qid = queued_id(r)
    states(d, qid, ["Deferred"])
    d.kill9()
    s = Sink(port=port).start()
    try:
        d.start()
        s.wait(1, timeout=20)
        states(d, qid, ["Delivered"])
    finally:
        s.ctl.stop()


def test_required_tls_never_sends_in_clear_text(sluice_factory, tmp_path, sinks):
    plain = sinks()
    d = relay(sluice_factory, {"hes.trend.example": plain.port},
              rules_text=sample_text())
    c = d.session()
    r = c.send_mail("user@contoso.com", ["a@trend.local"], b"Subject: secret\r\n\r\nbody\r\n")
    entry = states(d, queued_id(r), ["Deferred"])
    assert "TLS is required" in entry["states"][0]["Deferred"]["reason"], entry
    time.sleep(1.5)
    assert plain.messages == [], "nothing may reach a next hop without STARTTLS"


def test_no_dsn_for_the_null_sender_and_expiry_bounces(sluice_factory, tmp_path, sinks):
    hard = sinks(script=["550 5.1.1 no such user"])
    home = sinks()
    dead = free_port()
    d = relay(sluice_factory, {"mx.hard.test": hard.port, "mx.home.test": home.port, "mx.dead.test": dead,
                                          "mx": {"hard.test": "mx.hard.test", "home.test": "mx.home.test",
                                                 "dead.test": "mx.dead.test"}}, expire="3s")
    c = d.session()
    q1 = queued_id(c.send_mail("", ["x@hard.test"], b"Subject: a bounce itself\r\n\r\nbody\r\n"))
    # Expiry: the next hop never answers; after expire_after the sender is told.
    r = c.send_mail("a@home.test", ["x@dead.test"], b"Subject: too late\r\n\r\nbody\r\n")
    q2 = queued_id(r)
    entry = states(d, q2, ["Notified"], timeout=20)
    assert "4.4.7" in entry["states"][0]["Notified"]["reason"]
    dsns = home.wait(1)
    assert b"too late" in dsns[0][2] and b"Status: 4.4.7" in dsns[0][2]
    entry = states(d, q1, ["Notified"])
    assert "550 5.1.1 no such user" in entry["states"][0]["Notified"]["reason"], entry
    time.sleep(1.5)
    # q2's DSN is logged and spooled; q1 (from <>) got none.
    assert dsns_of(d, q2) and dsns_of(d, q1) == [], d.stderr()
    from_null = [e["id"] for e in d.queue_list() if e["from"] == ""]
    assert set(from_null) <= {q1, dsn_of(d, q2)}, (from_null, q1, d.stderr())
    assert len(home.messages) == 1, "no DSN for a message from <>"


def test_delay_warning_and_the_queue_commands(sluice_factory, tmp_path, sinks):
    home = sinks()
    port = free_port()  # the next hop is down for now
    d = relay(sluice_factory, {"mx.home.test": home.port, "mx.later.test": port,
                                          "mx": {"home.test": "mx.home.test", "later.test": "mx.later.test"}},
              retry='"1h"', warn="1s")
    c = d.session()
    q1 = queued_id(c.send_mail("a@home.test", ["x@later.test"], b"Subject: slow one\r\n\r\nbody\r\n"))
    q2 = queued_id(c.send_mail("a@home.test", ["y@later.test"], b"Subject: doomed\r\n\r\nbody\r\n"))
    states(d, q1, ["Deferred"])
    states(d, q2, ["Deferred"])
    # The sender hears of the delay, once per message.
    warnings = home.wait(2)
    assert all(b"Action: delayed" in m[2] and b"Will-Retry-Until:" in m[2] for m in warnings)
    assert sorted(b"slow one" in m[2] for m in warnings) == [False, True]

    def q(*args):
        return subprocess.run([SLUICE_BIN, "queue", *args, "--config", d.config], capture_output=True, timeout=30)

    # delete: gone without a bounce; flush: the rest is tried now (retry is 1h).
    assert q("delete", q2).returncode == 0
    assert q("delete", "0000000000000001").returncode == 1
    later = Sink(port=port).start()
    try:
        assert q("flush").returncode == 0
        later.wait(1)
        assert [m[1] for m in later.messages] == [["x@later.test"]]
        states(d, q1, ["Delivered"])
        entry = states(d, q2, ["Notified"])
        assert "deleted by the operator" in entry["states"][0]["Notified"]["reason"]
        time.sleep(1.5)
        assert len(home.messages) == 2, "no bounce for a deleted message"
        assert q("retry", q1).returncode == 1  # delivered: no longer queued
    finally:
        later.ctl.stop()


def scenario_daemon(sluice_factory, tmp_path, sinks):
    trend, onprem, internet = sinks(), sinks(), sinks()
    d = relay(sluice_factory, {
        "hes.trend.example": trend.port, "exch1.contoso.internal": onprem.port,
        "mx.gmail.test": internet.port, "mx.secure.test": internet.port,
        "mx": {"gmail.test": "mx.gmail.test", "secure.com": "mx.secure.test"},
    }, rules_text=variant_text("opportunistic"))
    return d, trend, onprem, internet


def test_scenarios_end_to_end(sluice_factory, tmp_path, sinks):
    d, trend, onprem, internet = scenario_daemon(sluice_factory, tmp_path, sinks)
    # Header rule (seed 000) with its exception, from exchange-onprem (127.0.0.1).
    c = d.session()
    check(c.send_mail("someone@contoso.com", ["a@gmail.test", "b@secure.com"],
               b"X-RoutethroughTM: On\r\nSubject: rule\r\n\r\nbody\r\n"), 250)
    assert [m[1] for m in trend.wait(1)] == [["a@gmail.test"]]
    assert [m[1] for m in internet.wait(1)] == [["b@secure.com"]]
    # Source-based routing by group: jaap is in TrendUsers.
    check(c.send_mail("jaap@contoso.com", ["c@gmail.test"], b"Subject: group\r\n\r\nbody\r\n"), 250)
    assert trend.wait(2)[1][1] == ["c@gmail.test"]
    c.close()
    # CMT (seed 002): from exchange-online to an outside recipient: stamped
    # and routed on-premises.
    o = d.connect(source="127.0.0.2")
    o.ehlo()
    check(o.send_mail("user@contoso.com", ["x@gmail.test"], b"Subject: cmt\r\n\r\nbody\r\n"), 250)
    o.close()
    stamped = onprem.wait(1)[0]
    assert stamped[1] == ["x@gmail.test"]
    assert b"\r\nX-MS-Exchange-Organization-CentralizedMailFlowOverrideSet:\r\n" in stamped[2]
    # It comes back from on-premises, stamped: no second override, out to the Internet.
    back = d.session()
    check(back.send_mail("user@contoso.com", ["x@gmail.test"], stamped[2]), 250)
    back.close()
    out = internet.wait(2)[1]
    assert out[1] == ["x@gmail.test"]
    assert out[2].count(b"CentralizedMailFlowOverrideSet") == 1, "stamped once"
    assert len(onprem.messages) == 1
    # Inbound rewrite (seed 001) from an anonymous client, then delivery of
    # the location-specific address.
    anon = d.connect(source="127.0.0.5")
    anon.ehlo()
    check(anon.send_mail("someone@example.org", ["johnny@contoso.com"],
               b"From: someone@example.org\r\nTo: Johnny <johnny@contoso.com>\r\nSubject: flat\r\n\r\nbody\r\n"), 250)
    anon.close()
    got = onprem.wait(2)[1]
    assert got[1] == ["johnny@eu.contoso.com"]
    assert b"To: Johnny <johnny@eu.contoso.com>\r\n" in got[2]


class SlowSink(Sink):
    """Captures, then takes its time to answer: a crash can fall in between."""

    async def handle_DATA(self, server, session, envelope):
        import asyncio
        self.capture(session, envelope)
        await asyncio.sleep(3)
        return "250 2.0.0 captured slowly"


def test_kill_during_delivery_loses_nothing(sluice_factory, tmp_path):
    slow = SlowSink()
    slow.ctl.start()
    try:
        d = relay(sluice_factory, {"mx.slow.test": slow.port, "mx": {"slow.test": "mx.slow.test"}})
        c = d.session()
        qid = queued_id(c.send_mail("a@contoso.com", ["x@slow.test"], b"Subject: crash\r\n\r\nbody\r\n"))
        slow.wait(1)
        d.kill9()  # the next hop has the message but sluice has no 250 yet
        d.start()
        states(d, qid, ["Delivered"], timeout=30)
        # Delivered again after the crash: the one duplicate SMTP allows, never a loss.
        assert len(slow.messages) == 2
    finally:
        slow.ctl.stop()
