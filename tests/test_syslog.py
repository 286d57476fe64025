"""Syslog: the daemon's events in a real rsyslog (Debian package `rsyslog`).

Each test starts its own rsyslogd in the foreground (`rsyslogd -n -f CONF -i
PIDFILE`) with imudp and imtcp on free loopback ports and imuxsock on a
socket in a temp dir, writing everything it gets to a file in
RSYSLOG_SyslogProtocol23Format; no system service is touched. Then a sluice
whose `[syslog] target` points there receives one message, and the file must
hold its RECEIVE and ROUTE lines with the same queue id (and the Message-ID)
in structured data, app name sluice, facility mail. A whole life goes
further: RULE, SEND to a capturing sink (aiosmtpd, static DNS), BOUNCE for a
recipient the sink refuses, REJECT of a message a rule refuses (after its
RULE lines), and POLICY for an install and a refused one.

The targets' formats (src/shell/log.rs): udp and tcp (RFC 6587 octet
counting) carry RFC 5424 with MSGID and structured data as fields; the unix
socket gets the local syslog(3) format `<PRI>sluice[PID]: MSGID [SD] text`,
which rsyslog's imuxsock parses (it would mangle RFC 5424), so MSGID and SD are
in the text there.

A second group points the target at something dead or stuck (a refused port,
a missing socket path, a unix socket nobody reads): mail must flow as fast as
ever.
"""

import os
import re
import shutil
import signal
import smtplib
import socket
import tempfile
import time

import pytest

from helpers.daemon import relay
from helpers.ports import free_udp_port
from helpers.rsyslog import RSYSLOGD, TS, Line, Rsyslog, parse_sd
from helpers.sink import Sink
from helpers.smtp import make_message
from helpers.tools import needs_tool

pytestmark = needs_tool(RSYSLOGD is not None, "rsyslogd not found (install the Debian package rsyslog)")

FACILITY_MAIL = 2
SEV_INFO, SEV_WARNING = 6, 4


@pytest.fixture
def rsyslog():
    r = Rsyslog().start()
    yield r
    r.stop()


def with_target(d, target, facility=None):
    """Point a not yet started daemon's [syslog] at target."""
    with open(d.config, encoding="utf-8") as f:
        cfg = f.read()
    new = 'target = "%s"' % target
    if facility:
        new += '\nfacility = "%s"' % facility
    assert 'target = "stderr"' in cfg, cfg
    with open(d.config, "w", encoding="utf-8") as f:
        f.write(cfg.replace('target = "stderr"', new, 1))
    return d


def send_one(d, msgid, rcpts=("bob@example.test",), subject="syslog life"):
    """One message over smtplib; returns its queue id (from `queued as`)."""
    msg = make_message(subject, msgid=msgid, to=rcpts[0])
    s = smtplib.SMTP(d.host, d.port, local_hostname="client.test", timeout=10)
    try:
        s.ehlo()
        code, _ = s.mail("alice@example.test")
        assert code == 250
        for r in rcpts:
            code, resp = s.rcpt(r)
            assert code == 250, (r, code, resp)
        code, resp = s.data(msg)
        assert code == 250, (code, resp)
        s.quit()
    finally:
        s.close()
    m = re.search(rb"queued as <?([^\s>]+)", resp)
    assert m, resp
    return m.group(1).decode()


def events_of(lines, qid, kind):
    """[(msgid, sd_params, text)] for the events of queue id qid, whatever the transport."""
    out = []
    for ln in lines:
        if ln.msgid != "-":
            params = ln.sd.get("sluice@32473", {})
            mid, text = ln.msgid, ln.msg
        else:
            # unix socket: `MSGID [SD] text` in the message part
            parts = ln.msg.split(" ", 1)
            if len(parts) < 2 or not parts[0].isupper():
                continue
            mid = parts[0]
            sd, text = parse_sd(parts[1]) if parts[1].startswith("[") else ({}, parts[1])
            params = sd.get("sluice@32473", {})
        if params.get("qid") == qid and mid == kind:
            out.append((mid, params, text))
    return out


@pytest.mark.parametrize("transport", ["udp", "tcp", "unix"])
def test_message_life_in_rsyslog(rsyslog, sluice_factory, transport):
    d = with_target(sluice_factory(start=False), rsyslog.target(transport))
    d.start()
    message_id = "<life-%s.%d@client.test>" % (transport, os.getpid())
    rcpts = ("bob@example.test", "carol@example.test")
    qid = send_one(d, message_id, rcpts)

    lines = rsyslog.wait_for(lambda ls: events_of(ls, qid, "RECEIVE")
                             and len(events_of(ls, qid, "ROUTE")) >= len(rcpts))
    for ln in lines:
        assert ln.app == "sluice", ln
        assert ln.facility == FACILITY_MAIL, ln
        assert ln.severity in (SEV_INFO, SEV_WARNING), ln
        assert ln.procid == str(d.proc.pid), (ln, d.proc.pid)
        assert TS.match(ln.timestamp), ln
        if transport != "unix":
            assert ln.host == "edge1.test", ln
    receive = events_of(lines, qid, "RECEIVE")
    routes = events_of(lines, qid, "ROUTE")
    assert len(receive) == 1, lines
    # The Message-ID rides along in structured data, brackets or not.
    for _, params, _ in receive + routes:
        assert message_id.strip("<>") in params.get("msgid", ""), (params, lines)
    for r in rcpts:
        assert any(r in text for _, _, text in routes), (r, routes)

    # One grep on the queue id finds the whole story, and nothing else.
    grepped = [ln for ln in rsyslog.text().splitlines() if qid in ln]
    kinds = [k for k in ("RECEIVE", "ROUTE") if any(k in g for g in grepped)]
    assert kinds == ["RECEIVE", "ROUTE"], grepped
    assert all("sluice" in g for g in grepped), grepped
    assert d.running()


LIFE_RULES = """
version = 1
[[inbound]]
name = "loopback"
kind = "organization"
client_ips = ["127.0.0.0/8", "::1/128"]

[[connector]]
name = "internet"
address_spaces = ["*"]

[[rule]]
name = "Refuse marked"
if = { header = "X-Refuse-Me" }
then = { reject = "550 5.7.1 Marked for refusal" }
"""


def life_daemon(sluice_factory, tmp_path, target, sink_port):
    """A daemon on LIFE_RULES whose static DNS sends sink.test to the sink,
    retrying after 1 s, logging to target."""
    return relay(sluice_factory, {"mx.sink.test": sink_port, "mx": {"sink.test": "mx.sink.test"}},
                 rules_text=LIFE_RULES, syslog_target=target)


def grep_kinds(text, needle):
    """The MSGIDs, in order, of the lines containing needle."""
    out = []
    for raw in text.splitlines():
        if needle in raw and raw.strip():
            ln = Line(raw)
            assert ln.app == "sluice", raw
            out.append(ln.msgid)
    return out


def test_whole_life_of_a_message_in_rsyslog(rsyslog, sluice_factory, tmp_path):
    """Accepted, its rules, routed, sent to one recipient, bounced for the
    other (the next hop refuses it with a 5xx); a second message refused by a
    rule; a policy installed and one refused. One grep by queue id follows
    each message."""
    sink = Sink(rcpt_replies={"nobody@sink.test": ["550 5.1.1 No such user here"]},
                rcpt_default="250 2.1.5 Ok").start()
    try:
        d = life_daemon(sluice_factory, tmp_path, rsyslog.target("udp"), sink.port)
        # 1. Accepted: one recipient delivered, one refused by the next hop.
        mid = "<whole-life.%d@client.test>" % os.getpid()
        msg = make_message("whole life", msgid=mid, sender="alice@sink.test", to="bob@sink.test")
        s = smtplib.SMTP(d.host, d.port, local_hostname="client.test", timeout=10)
        try:
            s.ehlo()
            assert s.mail("alice@sink.test")[0] == 250
            assert s.rcpt("bob@sink.test")[0] == 250
            assert s.rcpt("nobody@sink.test")[0] == 250
            code, resp = s.data(msg)
            assert code == 250, (code, resp)
            # 2. Refused by a rule: RULE lines, then REJECT.
            rmid = "<refused.%d@client.test>" % os.getpid()
            s.rset()
            assert s.mail("alice@sink.test")[0] == 250
            assert s.rcpt("bob@sink.test")[0] == 250
            code, rresp = s.data(make_message("refuse me", msgid=rmid, to="bob@sink.test",
                                              extra_headers=b"X-Refuse-Me: yes\r\n"))
            assert code == 550, (code, rresp)
            s.quit()
        finally:
            s.close()
        qid = re.search(rb"queued as <?([^\s>]+)", resp).group(1).decode()

        lines = rsyslog.wait_for(lambda ls: events_of(ls, qid, "SEND") and events_of(ls, qid, "BOUNCE")
                                 and any(ln.msgid == "REJECT" for ln in ls), timeout=20)
        assert [m[1] for m in sink.messages if m[1] == ["bob@sink.test"]], sink.messages

        # One grep by the queue id: the whole story, in order.
        kinds = grep_kinds(rsyslog.text(), 'qid="%s"' % qid)
        for k in ("RECEIVE", "ROUTE", "RULE", "SEND", "BOUNCE"):
            assert k in kinds, (k, kinds, rsyslog.text())
        assert kinds[0] == "RECEIVE", kinds
        assert kinds.index("SEND") > kinds.index("ROUTE"), kinds
        assert "REJECT" not in kinds, kinds
        send = events_of(lines, qid, "SEND")
        assert any("bob@sink.test" in t for _, _, t in send), send
        bounce = events_of(lines, qid, "BOUNCE")
        assert any("nobody@sink.test" in t for _, _, t in bounce), bounce
        assert any("550 5.1.1" in t for _, _, t in bounce), bounce
        for _, params, _ in send + bounce:
            assert params.get("msgid", "").strip("<>") == mid.strip("<>"), params

        # The refused message: its lines carry a queue id too, and a grep by
        # it gives the rule log, then the refusal.
        refused = [ln for ln in lines if rmid.strip("<>") in ln.sd.get("sluice@32473", {}).get("msgid", "")]
        assert refused, rsyslog.text()
        rqid = refused[0].sd["sluice@32473"]["qid"]
        rkinds = grep_kinds(rsyslog.text(), 'qid="%s"' % rqid)
        assert "RULE" in rkinds and rkinds[-1] == "REJECT", rkinds
        assert "RECEIVE" not in rkinds and "SEND" not in rkinds, rkinds
        assert any("Refuse marked" in t for _, _, t in events_of(lines, rqid, "RULE")), lines

        # 3. A policy installed, then one refused: POLICY info and warning.
        good = tmp_path / "good.toml"
        good.write_text(LIFE_RULES + "\n# v2\n", encoding="utf-8")
        p = d.cli("rules", "apply", str(good))
        assert p.returncode == 0, p
        bad = tmp_path / "bad.toml"
        bad.write_text(LIFE_RULES + "\n[[rule]]\nthen = { nonsense = 1 }\n", encoding="utf-8")
        p = d.cli("rules", "apply", str(bad))
        assert p.returncode == 1, p
        # The start's "active" line, "installed", then the refusal.
        lines = rsyslog.wait_for(lambda ls: any(ln.msgid == "POLICY" and "refused" in ln.msg for ln in ls))
        policy = [ln for ln in lines if ln.msgid == "POLICY"]
        assert any(ln.severity == SEV_INFO and "installed" in ln.msg for ln in policy), policy
        assert any(ln.severity == SEV_WARNING and "refused" in ln.msg and "error" in ln.msg
                   for ln in policy), policy
        assert d.running()
    finally:
        sink.stop()


def test_facility_from_config(rsyslog, sluice_factory):
    d = with_target(sluice_factory(start=False), rsyslog.target("udp"), facility="local3")
    d.start()
    qid = send_one(d, "<facility@client.test>")
    lines = rsyslog.wait_for(lambda ls: events_of(ls, qid, "RECEIVE"))
    assert {ln.facility for ln in lines} == {19}, lines


def test_rsyslog_restart_tcp_reconnects(rsyslog, sluice_factory):
    """The server goes away and comes back: later events arrive on a new connection."""
    d = with_target(sluice_factory(start=False), rsyslog.target("tcp"))
    d.start()
    q1 = send_one(d, "<before@client.test>", subject="before")
    rsyslog.wait_for(lambda ls: events_of(ls, q1, "RECEIVE"))
    rsyslog.proc.send_signal(signal.SIGTERM)
    rsyslog.proc.wait(10)
    # While it is down, mail flows.
    t0 = time.monotonic()
    send_one(d, "<during@client.test>", subject="during")
    assert time.monotonic() - t0 < 3, "a dead syslog server slowed the session down"
    rsyslog.start()
    # The writer backs off (at most 10 s) and reconnects; keep sending until
    # a message gets through.
    deadline = time.monotonic() + 30
    while True:
        q = send_one(d, "<after@client.test>", subject="after")
        time.sleep(0.5)
        if events_of(rsyslog.lines(), q, "RECEIVE"):
            break
        assert time.monotonic() < deadline, "no line after rsyslog came back:\n" + rsyslog.text()
    assert "log messages dropped" in rsyslog.text(), rsyslog.text()


# -- dead or stuck targets: mail is never held up ----------------------------

def assert_mail_flows(d, n=20, per_message=2.0):
    qids = []
    for i in range(n):
        t0 = time.monotonic()
        qids.append(send_one(d, "<flow-%d@client.test>" % i, subject="flow %d" % i))
        took = time.monotonic() - t0
        assert took < per_message, "message %d took %.2fs with a dead syslog target" % (i, took)
    assert d.running()
    assert len({e["id"] for e in d.queue_list()} & set(qids)) == n


@pytest.mark.parametrize("kind", ["udp", "tcp", "unix-missing", "unix-stuck"])
def test_dead_target_never_blocks_mail(sluice_factory, dead_port, kind):
    stuck = None
    sockdir = tempfile.mkdtemp(prefix="rsl", dir="/tmp")
    try:
        if kind == "udp":
            target = "udp:127.0.0.1:%d" % free_udp_port()
        elif kind == "tcp":
            target = "tcp:127.0.0.1:%d" % dead_port
        elif kind == "unix-missing":
            target = "unix:" + os.path.join(sockdir, "nothing-here")
        else:
            # A syslog daemon that has stopped reading: its queue fills (after
            # net.unix.max_dgram_qlen datagrams) and sends block.
            path = os.path.join(sockdir, "stuck")
            stuck = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            stuck.bind(path)
            target = "unix:" + path
        d = with_target(sluice_factory(start=False), target)
        d.start()
        assert_mail_flows(d)
    finally:
        if stuck is not None:
            stuck.close()
        shutil.rmtree(sockdir, ignore_errors=True)
