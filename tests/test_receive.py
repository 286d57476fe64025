"""Receiving mail: the happy paths of INTERFACES.md, checked down to the spooled bytes."""

import re
import smtplib

import pytest

from helpers.daemon import HOSTNAME
from helpers.ports import ipv6_available
from helpers.smtp import (RawSMTP, check, dot_stuff, make_message, queued_id, send_slowly,
                        verifying_context)

DOTTED_BODY = (b"First line.\r\n"
               b".\r\n"
               b"..\r\n"
               b".leading dot\r\n"
               b"..two leading dots\r\n"
               b"...three\r\n"
               b" .not at start\r\n"
               b"\r\n"
               b"Last line.\r\n")


def smtp_client(d, timeout=10):
    s = smtplib.SMTP(d.host, d.port, local_hostname="client.test", timeout=timeout)
    return s


def test_greeting_helo_and_ehlo_keywords(sluice):
    with sluice.connect(greet=False) as c:
        g = check(c.reply(), 220)
        assert g.lines[0].startswith(HOSTNAME + " ESMTP sluice"), g
        h = check(c.cmd("HELO client.test"), 250)
        assert h.lines[0].split()[0] == HOSTNAME, h
        e = check(c.cmd("EHLO client.test"), 250)
        assert e.lines[0].split()[0] == HOSTNAME, e
        kw = e.keywords
        for k in ("PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8", "CHUNKING", "ENHANCEDSTATUSCODES"):
            assert k in kw, "EHLO lacks %s: %r" % (k, e)
        assert re.fullmatch(r"SIZE \d+", e.keyword_line("SIZE")), e
        assert "STARTTLS" not in kw, "STARTTLS offered without [tls]: %r" % e
        check(c.cmd("QUIT"), 221, "2.0.0")
        assert c.wait_closed(5)


def test_smtplib_message_is_spooled_byte_exact_and_dot_unstuffed(sluice):
    msg = make_message("dots", DOTTED_BODY)
    s = smtp_client(sluice)
    try:
        code, _ = s.ehlo()
        assert code == 250
        code, resp = s.mail("alice@example.test")
        assert (code, resp[:5]) == (250, b"2.1.0"), (code, resp)
        for r in ("bob@example.test", "carol@example.test"):
            code, resp = s.rcpt(r)
            assert (code, resp[:5]) == (250, b"2.1.5"), (code, resp)
        code, resp = s.data(msg)
        assert code == 250, (code, resp)
        m = re.match(rb"2\.0\.0 Ok: queued as (\S+)$", resp)
        assert m, resp
        qid = m.group(1).decode()
        # and sendmail(), the usual way, for a second message
        msg2 = make_message("second", b"..\r\nbody\r\n.\r\n")
        assert s.sendmail("alice@example.test", ["dave@example.test"], msg2) == {}
        s.quit()
    finally:
        s.close()

    e = sluice.queue_entry(qid)
    assert e["from"] == "alice@example.test"
    assert sorted(e["rcpts"]) == ["bob@example.test", "carol@example.test"]
    assert e["size"] == len(msg)
    assert sluice.queue_raw(qid) == msg

    entries = sluice.queue_list()
    assert len(entries) == 2, entries
    other = [x for x in entries if x["id"] != qid]
    assert len(other) == 1 and other[0]["rcpts"] == ["dave@example.test"], entries
    assert sluice.queue_raw(other[0]["id"]) == msg2


def test_pipelined_mail_rcpt_rcpt_data(sluice):
    msg = make_message("pipelined")
    with sluice.session() as c:
        c.send(b"MAIL FROM:<alice@example.test>\r\n"
               b"RCPT TO:<bob@example.test>\r\n"
               b"RCPT TO:<carol@example.test>\r\n"
               b"DATA\r\n")
        check(c.reply(), 250, "2.1.0")
        check(c.reply(), 250, "2.1.5")
        check(c.reply(), 250, "2.1.5")
        check(c.reply(), 354)
        c.send(msg + b".\r\n")
        qid = queued_id(c.reply())
        check(c.cmd("QUIT"), 221, "2.0.0")
    e = sluice.queue_entry(qid)
    assert e["from"] == "alice@example.test"
    assert sorted(e["rcpts"]) == ["bob@example.test", "carol@example.test"]
    assert sluice.queue_raw(qid) == msg


def test_pipelined_group_with_a_rejected_recipient(sluice):
    msg = make_message("pipelined-partial")
    with sluice.session() as c:
        c.send(b"RSET\r\n"
               b"MAIL FROM:<alice@example.test>\r\n"
               b"RCPT TO:<bob@example.test>\r\n"
               b"RCPT TO:<broken@>\r\n"
               b"RCPT TO:<carol@example.test>\r\n"
               b"DATA\r\n")
        check(c.reply(), 250, "2.0.0")
        check(c.reply(), 250, "2.1.0")
        check(c.reply(), 250, "2.1.5")
        check(c.reply(), 501, "5.1.3")
        check(c.reply(), 250, "2.1.5")
        check(c.reply(), 354)
        c.send(msg + b".\r\n")
        qid = queued_id(c.reply())
    assert sorted(sluice.queue_entry(qid)["rcpts"]) == ["bob@example.test", "carol@example.test"]
    assert sluice.queue_raw(qid) == msg


def test_bdat_chunks_are_stored_verbatim(sluice):
    chunk1 = make_message("bdat", b"before\r\n.\r\nafter the lone dot\r\n..dotdot\r\n")
    chunk2 = b".starts with a dot, no unstuffing in BDAT\r\nend\r\n"
    with sluice.session() as c:
        c.mail("alice@example.test")
        c.rcpt("bob@example.test")
        c.send(b"BDAT %d\r\n" % len(chunk1) + chunk1)
        check(c.reply(), 250, "2.0.0", contains="%d octets received" % len(chunk1))
        c.send(b"BDAT %d LAST\r\n" % len(chunk2) + chunk2)
        qid = queued_id(c.reply())
        # the session goes on: a DATA transaction right after
        msg = make_message("after-bdat")
        qid2 = queued_id(c.send_mail("alice@example.test", ["carol@example.test"], msg))
        check(c.cmd("QUIT"), 221, "2.0.0")
    assert sluice.queue_raw(qid) == chunk1 + chunk2
    assert sluice.queue_entry(qid)["size"] == len(chunk1 + chunk2)
    assert sluice.queue_raw(qid2) == msg


def test_bdat_pipelined_and_bdat_0_last(sluice):
    chunk = make_message("bdat0", b"one chunk then BDAT 0 LAST\r\n")
    a, b = chunk[:37], chunk[37:]
    with sluice.session() as c:
        # everything in one write: MAIL, RCPT, two chunks, then an empty last chunk
        c.send(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\n"
               + b"BDAT %d\r\n" % len(a) + a + b"BDAT %d\r\n" % len(b) + b + b"BDAT 0 LAST\r\n")
        check(c.reply(), 250, "2.1.0")
        check(c.reply(), 250, "2.1.5")
        check(c.reply(), 250, "2.0.0", contains="%d octets received" % len(a))
        r = check(c.reply(), 250, "2.0.0")
        # "<n> octets received": this chunk's size or the running total (INTERFACES.md says <n>)
        assert ("%d octets received" % len(b) in r.text
                or "%d octets received" % (len(a) + len(b)) in r.text), r
        qid = queued_id(c.reply())
    assert sluice.queue_raw(qid) == chunk


def test_smtputf8_addresses(sluice):
    sender, rcpt = "jösé@exämple.test", "ünïcode@exämple.test"
    msg = ("From: <%s>\r\nTo: <%s>\r\nSubject: grüße\r\nMessage-ID: <utf8@client.test>\r\n\r\n"
           "Grüße aus Köln.\r\n" % (sender, rcpt)).encode("utf-8")
    s = smtp_client(sluice)
    try:
        assert s.sendmail(sender, [rcpt], msg, mail_options=["SMTPUTF8"]) == {}
        s.quit()
    finally:
        s.close()
    entries = [e for e in sluice.queue_list() if e["from"] == sender]
    assert len(entries) == 1, sluice.queue_list()
    e = entries[0]
    assert e["rcpts"] == [rcpt]
    assert sluice.queue_raw(e["id"]) == msg
    j = sluice.queue_json(e["id"])
    assert j["smtputf8"] is True, j

    # without SMTPUTF8 the same addresses are refused
    with sluice.session() as c:
        check(c.cmd("MAIL FROM:<%s>" % sender), 553, "5.6.7")
        c.mail("alice@example.test")
        check(c.cmd("RCPT TO:<%s>" % rcpt), 553, "5.6.7")
        check(c.cmd("RSET"), 250, "2.0.0")
    # (exämple.test has no address here: the message bounces and its DSN to
    # the UTF-8 sender is queued too; only the refused ones must be absent.)
    assert len([e for e in sluice.queue_list() if e["from"]]) == 1, sluice.queue_list()


def test_8bitmime_body_is_stored_verbatim(sluice):
    msg = make_message("8bit", "Ünïcödé body, Latin-1 byte next: ".encode("utf-8") + b"\xe9\xff\r\n",
                       extra_headers=b"Content-Type: text/plain; charset=utf-8\r\n"
                                     b"Content-Transfer-Encoding: 8bit\r\n")
    with sluice.session() as c:
        c.mail("alice@example.test", "BODY=8BITMIME")
        c.rcpt("bob@example.test")
        qid = queued_id(c.data(msg))
    assert sluice.queue_raw(qid) == msg


def test_starttls_then_mail(sluice_tls):
    d = sluice_tls
    msg = make_message("over-tls", DOTTED_BODY)
    s = smtp_client(d)
    try:
        code, _ = s.ehlo()
        assert code == 250
        assert s.has_extn("starttls"), s.esmtp_features
        code, resp = s.starttls(context=verifying_context(d.cert))
        assert code == 220 and resp.startswith(b"2.0.0"), (code, resp)
        code, _ = s.ehlo()
        assert code == 250
        assert not s.has_extn("starttls"), "STARTTLS still offered inside TLS: %r" % s.esmtp_features
        assert s.has_extn("pipelining") and s.has_extn("chunking")
        s.mail("alice@example.test")
        s.rcpt("bob@example.test")
        code, resp = s.data(msg)
        assert code == 250, (code, resp)
        qid = re.search(rb"queued as (\S+)", resp).group(1).decode()
        s.quit()
    finally:
        s.close()
    assert d.queue_raw(qid) == msg
    assert d.queue_entry(qid)["rcpts"] == ["bob@example.test"]


def test_several_messages_in_one_session_with_rset(sluice):
    msgs = [make_message("multi-%d" % i, b"message %d\r\n" % i) for i in range(3)]
    ids = []
    with sluice.session() as c:
        ids.append(queued_id(c.send_mail("alice@example.test", ["bob@example.test"], msgs[0])))
        check(c.cmd("RSET"), 250, "2.0.0")
        # an abandoned transaction is not spooled
        c.mail("abandoned@example.test")
        c.rcpt("bob@example.test")
        check(c.cmd("RSET"), 250, "2.0.0")
        ids.append(queued_id(c.send_mail("alice@example.test", ["carol@example.test"], msgs[1])))
        # no RSET: a new MAIL right after a finished transaction
        ids.append(queued_id(c.send_mail("alice@example.test", ["dave@example.test"], msgs[2])))
        check(c.cmd("QUIT"), 221, "2.0.0")
    assert len(set(ids)) == 3, ids
    entries = sluice.queue_list()
    assert sorted(e["id"] for e in entries) == sorted(ids)
    assert all(e["from"] == "alice@example.test" for e in entries), entries
    for qid, m in zip(ids, msgs):
        assert sluice.queue_raw(qid) == m


def test_many_recipients(sluice_factory):
    d = sluice_factory(limits={"max_recipients": 200})
    rcpts = ["user%03d@example.test" % i for i in range(150)]
    msg = make_message("many-rcpts")
    with d.session() as c:
        c.mail("alice@example.test")
        # pipelined in one write
        c.send(b"".join(b"RCPT TO:<%s>\r\n" % r.encode() for r in rcpts))
        for _ in rcpts:
            check(c.reply(), 250, "2.1.5")
        qid = queued_id(c.data(msg))
    e = d.queue_entry(qid)
    assert sorted(e["rcpts"]) == rcpts
    assert d.queue_raw(qid) == msg


def test_size_is_advertised_and_enforced_at_mail(sluice_factory):
    d = sluice_factory(limits={"max_message_size": "1 MiB"})
    with d.connect() as c:
        e = c.ehlo()
        assert e.keyword_line("SIZE") == "SIZE 1048576", e
        check(c.cmd("MAIL FROM:<alice@example.test> SIZE=1048577"), 552, "5.3.4")
        # the session goes on
        check(c.cmd("MAIL FROM:<alice@example.test> SIZE=1000"), 250, "2.1.0")
        c.rcpt("bob@example.test")
        qid = queued_id(c.data(make_message("sized")))
    assert d.queue_entry(qid)["from"] == "alice@example.test"


def test_null_sender_is_accepted(sluice):
    msg = make_message("bounce", sender="mailer-daemon@example.test")
    with sluice.session() as c:
        check(c.cmd("MAIL FROM:<>"), 250, "2.1.0")
        c.rcpt("bob@example.test")
        qid = queued_id(c.data(msg))
    assert sluice.queue_entry(qid)["from"] == ""
    assert sluice.queue_raw(qid) == msg


def test_large_message_roundtrip(sluice):
    line = b"0123456789abcdefghijklmnopqrstuvwxyz" * 2 + b"\r\n"
    body = b"".join(b"%06d " % i + line for i in range(40000))  # about 3 MiB
    msg = make_message("large", body)
    with sluice.session(timeout=60) as c:
        qid = queued_id(c.send_mail("alice@example.test", ["bob@example.test"], msg))
    assert sluice.queue_entry(qid)["size"] == len(msg)
    assert sluice.queue_raw(qid) == msg


@pytest.mark.skipif(not ipv6_available(), reason="no ::1 on this machine")
def test_ipv6_listener(sluice_factory):
    d = sluice_factory(ipv6=True)
    msg = make_message("ipv6")
    with RawSMTP("::1", d.port6) as c:
        c.greeting()
        c.ehlo()
        qid = queued_id(c.send_mail("alice@example.test", ["bob@example.test"], msg))
    assert d.queue_raw(qid) == msg
    assert d.stderr().count("listening on") == 2, d.stderr()


def test_dot_unstuffing_on_the_first_line(sluice):
    msg = b".first line of the message starts with a dot\r\n\r\n.\r\n..\r\nend\r\n"
    with sluice.session() as c:
        c.mail("alice@example.test")
        c.rcpt("bob@example.test")
        check(c.cmd("DATA"), 354)
        c.send(b"..first line of the message starts with a dot\r\n\r\n..\r\n...\r\nend\r\n.\r\n")
        qid = queued_id(c.reply())
    assert sluice.queue_raw(qid) == msg


def test_commands_are_case_insensitive(sluice):
    msg = make_message("lower-case")
    with sluice.connect() as c:
        check(c.cmd("ehlo client.test"), 250)
        check(c.cmd("mail from:<alice@example.test>"), 250, "2.1.0")
        check(c.cmd("Rcpt To:<bob@example.test>"), 250, "2.1.5")
        check(c.cmd("data"), 354)
        c.send(msg + b".\r\n")
        qid = queued_id(c.reply())
        check(c.cmd("quit"), 221, "2.0.0")
    assert sluice.queue_raw(qid) == msg


def test_helo_session_sends_mail(sluice):
    msg = make_message("helo-only")
    with sluice.connect() as c:
        check(c.cmd("HELO client.test"), 250)
        qid = queued_id(c.send_mail("alice@example.test", ["bob@example.test"], msg))
    assert sluice.queue_raw(qid) == msg
    assert sluice.queue_json(qid)["helo"] == "client.test"


def test_ehlo_resets_the_transaction(sluice):
    with sluice.session() as c:
        c.mail("alice@example.test")
        c.rcpt("bob@example.test")
        c.ehlo()
        # RFC 5321 4.1.4: EHLO clears the transaction like RSET
        check(c.cmd("DATA"), 503, "5.5.1")
        check(c.cmd("RCPT TO:<bob@example.test>"), 503, "5.5.1")
        qid = queued_id(c.send_mail("carol@example.test", ["dave@example.test"], make_message("after-ehlo")))
    e = sluice.queue_entry(qid)
    assert (e["from"], e["rcpts"]) == ("carol@example.test", ["dave@example.test"])
    assert len(sluice.queue_list()) == 1


def test_a_long_pipelined_burst_is_answered_in_order(sluice):
    n = 500
    with sluice.session() as c:
        burst = b"".join((b"NOOP\r\n" if i % 2 else b"RSET\r\n") for i in range(n))
        c.send(burst + b"VRFY last\r\n")
        for _ in range(n):
            check(c.reply(), 250, "2.0.0")
        check(c.reply(), 252, "2.5.0")
        assert c.pending(0.3) == b""
        still = queued_id(c.send_mail("alice@example.test", ["bob@example.test"], make_message("burst")))
    assert sluice.queue_entry(still)


def test_commands_and_data_in_tiny_writes(sluice):
    """Every boundary (inside a command, inside CRLF, inside the end of data) split across reads."""
    msg = make_message("tiny-writes", b"line\r\n.\r\n..\r\n.x\r\n\r\nend\r\n")
    with sluice.connect() as c:
        send_slowly(c, b"EHLO client.test\r\n")
        check(c.reply(), 250)
        send_slowly(c, b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        check(c.reply(), 250, "2.1.0")
        check(c.reply(), 250, "2.1.5")
        check(c.reply(), 354)
        send_slowly(c, dot_stuff(msg))
        qid = queued_id(c.reply())
        chunk = b"BDAT part\r\n.\r\n"
        send_slowly(c, b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<carol@example.test>\r\n"
                    b"BDAT %d LAST\r\n" % len(chunk) + chunk)
        check(c.reply(), 250, "2.1.0")
        check(c.reply(), 250, "2.1.5")
        qid2 = queued_id(c.reply())
        send_slowly(c, b"QUIT\r\n")
        check(c.reply(), 221, "2.0.0")
    assert sluice.queue_raw(qid) == msg
    assert sluice.queue_raw(qid2) == chunk


def test_size_limit_counts_unstuffed_octets(sluice_factory):
    """RFC 1870: the size is the message's octets, not the quoting dots nor the final dot."""
    d = sluice_factory(limits={"max_message_size": "1 KiB"})
    head = make_message("exact", b"")
    filler = b"." * 20 + b"\r\n"  # each line is sent with one more dot
    body = filler * ((1024 - len(head)) // len(filler))
    exact = head + body + b"x" * (1024 - len(head) - len(body) - 2) + b"\r\n"
    assert len(exact) == 1024
    over = exact[:-2] + b"y\r\n"
    with d.session() as c:
        check(c.cmd("MAIL FROM:<alice@example.test> SIZE=1024"), 250, "2.1.0")
        c.rcpt("bob@example.test")
        qid = queued_id(c.data(exact))
        c.mail("alice@example.test")
        c.rcpt("bob@example.test")
        check(c.data(over), 552, "5.3.4")
        check(c.cmd("NOOP"), 250, "2.0.0")
    assert [e["id"] for e in d.queue_list()] == [qid]
    assert d.queue_raw(qid) == exact


def test_tls_large_message_pipelined_and_bdat(sluice_tls):
    d = sluice_tls
    body = b"".join(b"%06d .%s\r\n" % (i, b"t" * 70) for i in range(15000))  # about 1.2 MiB
    msg = make_message("tls-large", body)
    with d.session(timeout=60) as c:
        c.starttls()
        c.ehlo()
        c.send(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        check(c.reply(), 250, "2.1.0")
        check(c.reply(), 250, "2.1.5")
        check(c.reply(), 354)
        c.send(dot_stuff(msg))
        qid = queued_id(c.reply())
        half = len(msg) // 2
        c.send(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<carol@example.test>\r\n"
               + b"BDAT %d\r\n" % half + msg[:half]
               + b"BDAT %d LAST\r\n" % (len(msg) - half) + msg[half:])
        check(c.reply(), 250, "2.1.0")
        check(c.reply(), 250, "2.1.5")
        check(c.reply(), 250, "2.0.0")
        qid2 = queued_id(c.reply())
        check(c.cmd("QUIT"), 221, "2.0.0")
    assert d.queue_raw(qid) == msg
    assert d.queue_raw(qid2) == msg
    assert d.queue_json(qid)["rcpts"] == ["bob@example.test"]
