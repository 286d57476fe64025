"""SMTP smuggling and STARTTLS command injection.

Only <CR><LF>.<CR><LF> ends DATA. A would-be end of data made of bare CR or LF
must neither end the message nor let the bytes after it run as commands.
"""

import pytest

from helpers.smtp import check, make_message, queued_id, send_slowly, unverified_context

FAKE_ENDS = [b"\n.\r\n", b"\r.\r\n", b"\n.\n", b"\r\n.\n", b"\n.\r"]
SMUGGLED = b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\nsmuggled\r\n"


def smuggling_payload(fake_end):
    head = make_message("smuggle", b"legit body")
    return head + fake_end + SMUGGLED + b"\r\n.\r\n"


def send_smuggling(d, fake_end):
    """One transaction carrying the smuggling payload; returns (the one reply, the client)."""
    c = d.session()
    c.mail("alice@example.test")
    c.rcpt("bob@example.test")
    check(c.cmd("DATA"), 354)
    c.send(smuggling_payload(fake_end))
    r = c.reply()
    return r, c


def assert_no_more_replies(c):
    """Nothing else was answered: the next reply is the QUIT's."""
    assert c.pending(0.5) == b"", "extra replies after the end of data"
    check(c.cmd("QUIT"), 221, "2.0.0")


@pytest.mark.parametrize("fake_end", FAKE_ENDS, ids=repr)
def test_smuggling_refused(sluice, fake_end):
    r, c = send_smuggling(sluice, fake_end)
    with c:
        check(r, 550, "5.6.11")
        assert_no_more_replies(c)
    assert sluice.queue_list() == []


@pytest.mark.parametrize("fake_end", FAKE_ENDS, ids=repr)
def test_smuggling_normalized(sluice_factory, fake_end):
    d = sluice_factory(limits={"bare_line_endings": "normalize"})
    r, c = send_smuggling(d, fake_end)
    with c:
        qid = queued_id(r)
        assert_no_more_replies(c)
    entries = d.queue_list()
    assert [e["id"] for e in entries] == [qid], entries
    e = entries[0]
    assert e["from"] == "alice@example.test" and e["rcpts"] == ["bob@example.test"], e
    raw = d.queue_raw(qid)
    # the would-be commands are body text of the one message
    assert b"MAIL FROM:<evil@x>" in raw and b"RCPT TO:<victim@y>" in raw and b"smuggled" in raw, raw
    assert raw.startswith(make_message("smuggle", b"legit body")), raw
    # normalized: every line ends with CRLF, no bare CR or LF is left
    assert raw.endswith(b"\r\n"), raw
    assert b"\r" not in raw.replace(b"\r\n", b"") and b"\n" not in raw.replace(b"\r\n", b""), raw


@pytest.mark.parametrize("fake_end", FAKE_ENDS, ids=repr)
def test_smuggling_via_bdat_is_just_data(sluice, fake_end):
    """In BDAT nothing is an end marker: the chunk is stored as it came."""
    chunk = smuggling_payload(fake_end)
    with sluice.session() as c:
        c.mail("alice@example.test")
        c.rcpt("bob@example.test")
        c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
        r = c.reply()
        # refuse mode may reject bare line endings in BDAT too; what matters is one reply
        assert (r.code, r.enhanced) in ((250, "2.0.0"), (550, "5.6.11")), r
        assert_no_more_replies(c)
    entries = sluice.queue_list()
    assert all(e["from"] == "alice@example.test" for e in entries), entries
    assert len(entries) == (1 if r.code == 250 else 0), entries
    if entries:
        assert sluice.queue_raw(entries[0]["id"]) == chunk


def test_bare_lf_in_header_refused(sluice):
    msg = (b"From: <alice@example.test>\r\nSubject: bare\nX-Injected: yes\r\n"
           b"Message-ID: <bare-lf@client.test>\r\n\r\nbody\r\n")
    with sluice.session() as c:
        c.mail("alice@example.test")
        c.rcpt("bob@example.test")
        check(c.cmd("DATA"), 354)
        c.send(msg + b".\r\n")
        check(c.reply(), 550, "5.6.11")
        assert c.pending(0.3) == b""
        # the session goes on
        qid = queued_id(c.send_mail("alice@example.test", ["bob@example.test"], make_message("clean")))
    assert [e["id"] for e in sluice.queue_list()] == [qid]


def test_bare_cr_in_body_refused(sluice):
    msg = make_message("bare-cr", b"a line\rwith a bare CR\r\n")
    with sluice.session() as c:
        c.mail("alice@example.test")
        c.rcpt("bob@example.test")
        check(c.cmd("DATA"), 354)
        c.send(msg + b".\r\n")
        check(c.reply(), 550, "5.6.11")
        check(c.cmd("NOOP"), 250, "2.0.0")
    assert sluice.queue_list() == []


def test_pipelined_commands_after_data_end_run_once(sluice):
    """The real end of data followed by pipelined commands: each runs exactly once."""
    msg = make_message("pipelined-after-end")
    with sluice.session() as c:
        c.mail("alice@example.test")
        c.rcpt("bob@example.test")
        check(c.cmd("DATA"), 354)
        c.send(msg + b".\r\nNOOP\r\nRSET\r\n")
        qid = queued_id(c.reply())
        check(c.reply(), 250, "2.0.0")
        check(c.reply(), 250, "2.0.0")
        assert_no_more_replies(c)
    assert [e["id"] for e in sluice.queue_list()] == [qid]


def test_starttls_injection_is_discarded(sluice_tls):
    d = sluice_tls
    with d.session() as c:
        c.send(b"STARTTLS\r\nMAIL FROM:<inject@x>\r\n")
        check(c.reply(), 220, "2.0.0")
        assert c.buf == b"", "cleartext bytes after the 220: %r" % c.buf
        c.sock = unverified_context().wrap_socket(c.sock, server_hostname="edge1.test")
        c.send(b"EHLO client.test\r\n")
        e = c.reply()
        # the first reply inside TLS is the EHLO's, not one to the injected MAIL
        check(e, 250)
        assert e.lines[0].split()[0] == "edge1.test", e
        assert "STARTTLS" not in e.keywords, e
        assert c.pending(0.3) == b""
        # no transaction was started by the injected MAIL
        check(c.cmd("RCPT TO:<bob@example.test>"), 503, "5.5.1")
        qid = queued_id(c.send_mail("alice@example.test", ["bob@example.test"], make_message("tls")))
    entries = d.queue_list()
    assert [e["id"] for e in entries] == [qid], entries
    assert entries[0]["from"] == "alice@example.test"


def test_starttls_requires_ehlo_again(sluice_tls):
    """After TLS the session is reset: MAIL before a new EHLO is a bad sequence."""
    with sluice_tls.session() as c:
        c.starttls()
        check(c.cmd("MAIL FROM:<alice@example.test>"), 503, "5.5.1")
        c.ehlo()
        check(c.cmd("RCPT TO:<bob@example.test>"), 503, "5.5.1")
        queued_id(c.send_mail("alice@example.test", ["bob@example.test"], make_message("tls2")))


@pytest.mark.parametrize("fake_end", FAKE_ENDS, ids=repr)
def test_smuggling_refused_in_tiny_writes(sluice, fake_end):
    """The same, with every byte in its own read: the end of data split every way."""
    with sluice.session() as c:
        c.mail("alice@example.test")
        c.rcpt("bob@example.test")
        check(c.cmd("DATA"), 354)
        send_slowly(c, smuggling_payload(fake_end))
        check(c.reply(), 550, "5.6.11")
        assert_no_more_replies(c)
    assert sluice.queue_list() == []


NUL_ENDS = [b"\r\n\x00.\r\n", b"\r\n.\x00\r\n"]
ANON = "127.0.0.3"     # no inbound connector: anonymous
INSIDE = "127.0.0.5"   # the organization connector: originating
EDGE_RULES = """
[domains]
accepted = ["example.test"]

[[inbound]]
name = "inside"
kind = "organization"
client_ips = ["127.0.0.5/32"]

[[connector]]
name = "internet"
address_spaces = ["*"]
"""


@pytest.fixture
def edge(sluice_factory):
    """A daemon where 127.0.0.3 is an anonymous Internet client."""
    return sluice_factory(rules_text=EDGE_RULES)


def open_from(d, source):
    c = d.connect(source=source)
    c.ehlo()
    return c


@pytest.mark.parametrize("fake_end", NUL_ENDS, ids=repr)
def test_nul_endings_refused(edge, fake_end):
    """smtpsmug's NUL variants: the message is read to its real end and refused."""
    with open_from(edge, ANON) as c:
        c.mail("alice@client.test")
        check(c.cmd("RCPT TO:<bob@example.test>"), 250)
        check(c.cmd("DATA"), 354)
        c.send(smuggling_payload(fake_end))
        check(c.reply(), 550, "5.6.0")
        assert_no_more_replies(c)
    assert edge.queue_list() == []


@pytest.mark.parametrize("fake_end", NUL_ENDS, ids=repr)
def test_nul_stripped_when_normalizing(sluice_factory, fake_end):
    d = sluice_factory(limits={"bare_line_endings": "normalize"})
    r, c = send_smuggling(d, fake_end)
    with c:
        qid = queued_id(r)
        assert_no_more_replies(c)
    raw = d.queue_raw(qid)
    assert b"\x00" not in raw and b"smuggled" in raw, raw
    assert [e["id"] for e in d.queue_list()] == [qid]


def two_messages_blind():
    """smtpsmug's pipelining check: the next message's commands *and its
    content* follow DATA before the 354 came."""
    one = (b"MAIL FROM:<alice@client.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
           + make_message("first", b"one\r\n") + b".\r\n")
    two = (b"MAIL FROM:<evil@client.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
           + make_message("second", b"two\r\n") + b".\r\n")
    return one + two


def test_content_before_354_refused_from_anonymous(edge):
    with open_from(edge, ANON) as c:
        c.send(two_messages_blind())
        check(c.reply(), 250, "2.1.0")
        check(c.reply(), 250, "2.1.5")
        check(c.reply(), 554, "5.5.0")
        assert c.pending(2.0) == b"", "the session ends after 554"
    assert edge.queue_list() == []


def test_content_before_354_taken_from_originating(edge):
    """An organization connector's client is trusted to pipeline."""
    with open_from(edge, INSIDE) as c:
        c.send(two_messages_blind())
        replies = [c.reply() for _ in range(8)]
        assert [r.code for r in replies] == [250, 250, 354, 250, 250, 250, 354, 250], replies
    assert len(edge.queue_list()) == 2


def test_nul_and_8bit_commands(sluice):
    with sluice.session() as c:
        check(c.cmd("NOOP"), 250)
        c.send(b"NOOP a\x00b\r\n")
        check(c.reply(), 500, "5.5.2")
        c.send(b"HELO h\xc3\xa9llo\r\n")
        check(c.reply(), 501, "5.5.2")
        c.send(b"MAIL FROM:<j\xc3\xa9@client.test>\r\n")
        check(c.reply(), 553, "5.6.7")
        check(c.cmd("QUIT"), 221)
