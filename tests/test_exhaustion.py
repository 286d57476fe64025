"""Resource exhaustion, black box (issue 14, item 4): each attack gets its
documented answer, the daemon does not panic, and nothing grows without
bound. README "Resource exhaustion" lists the answers."""

import os
import resource
import socket
import time

from helpers.smtp import RawSMTP, check, make_message, queued_id

GIB = 1 << 30


def spool_holds(d, marker):
    """Whether any file under the spool directory contains `marker`."""
    for top, _, files in os.walk(d.spool_dir):
        for name in files:
            with open(os.path.join(top, name), "rb") as f:
                if marker in f.read():
                    return True
    return False


def still_works(c):
    check(c.cmd("RSET"), 250, "2.0.0")
    check(c.cmd("NOOP"), 250, "2.0.0")


def rss_kib(pid, key="VmRSS"):
    """The `key` line of /proc/PID/status (or Pss of smaps_rollup), in KiB."""
    path = "/proc/%d/%s" % (pid, "smaps_rollup" if key == "Pss" else "status")
    with open(path) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s in %s" % (key, path))


def no_panic(d):
    assert d.running(), "sluice died:\n" + d.stderr()[-4000:]
    assert "panicked" not in d.stderr(), d.stderr()[-4000:]


# -- 10,000 idle connections ---------------------------------------------------

IDLE = 10_000            # sessions held open
PER_IP = IDLE // 2       # connections_per_ip: two source addresses fill the total
# README "Resource exhaustion": an idle session costs about 18 KiB of the
# daemon's memory (18.2 KiB measured at 10,000, release and debug builds);
# bench/README's target, 24 KiB, is the bound.
PER_SESSION_KIB = 24


def raise_fd_limit(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        assert hard == resource.RLIM_INFINITY or hard >= need, (
            "this machine allows %d open files per process; the test needs %d" % (hard, need))
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def open_idle(d, n, source):
    """n connections from `source`, each greeted 220, kept open and silent."""
    socks = []
    for _ in range(n):
        s = socket.create_connection((d.host, d.port), timeout=30, source_address=(source, 0))
        socks.append(s)
        got = b""
        while not got.endswith(b"\r\n"):
            chunk = s.recv(512)
            assert chunk, "closed before the greeting (after %d sessions)" % len(socks)
            got += chunk
        assert got.startswith(b"220 "), (len(socks), got)
    return socks


def refused(d, source):
    with RawSMTP(d.host, d.port, source=source, timeout=30) as c:
        r = c.reply()
        assert c.wait_closed(10)
        return r


def test_ten_thousand_idle_connections(sluice_factory):
    raise_fd_limit(IDLE + 1000)  # the daemon inherits the limit: it holds as many
    d = sluice_factory(limits={"connections": IDLE, "connections_per_ip": PER_IP, "command_timeout": "5m"})
    time.sleep(0.5)
    idle_rss, idle_pss = rss_kib(d.proc.pid), rss_kib(d.proc.pid, "Pss")
    socks = []
    try:
        socks += open_idle(d, PER_IP, "127.0.0.1")
        # the per-IP limit holds
        check(refused(d, "127.0.0.1"), 421, "4.7.0")
        socks += open_idle(d, IDLE - PER_IP, "127.0.0.2")
        # the total holds
        check(refused(d, "127.0.0.3"), 421, "4.3.2")
        time.sleep(1)
        rss, pss = rss_kib(d.proc.pid), rss_kib(d.proc.pid, "Pss")
        per_rss = (rss - idle_rss) / IDLE
        per_pss = (pss - idle_pss) / IDLE
        print("idle: RSS %d KiB, Pss %d KiB; %d sessions: RSS %d KiB, Pss %d KiB; "
              "per session %.1f KiB RSS, %.1f KiB Pss" % (idle_rss, idle_pss, IDLE, rss, pss, per_rss, per_pss))
        assert per_rss <= PER_SESSION_KIB, "%.1f KiB RSS a session" % per_rss
        no_panic(d)
    finally:
        for s in socks:
            s.close()
    # every slot comes back: a new session is served
    deadline = time.monotonic() + 30
    while True:
        with RawSMTP(d.host, d.port, timeout=30) as c:
            r = c.reply()
        if r.code == 220 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    check(r, 220)
    no_panic(d)


# -- slowloris -------------------------------------------------------------------

def drip(c, data, limit):
    """Sends `data` one octet a second until a reply comes; returns
    (octets sent, reply bytes)."""
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    got = b""
    for i in range(min(len(data), limit)):
        try:
            c.sock.sendall(data[i:i + 1])
        except OSError:
            return i, got
        c.sock.settimeout(1.0)
        try:
            chunk = c.sock.recv(4096)
        except socket.timeout:
            continue
        got += chunk
        if got.endswith(b"\r\n"):
            return i + 1, got
    return limit, got


def test_slowloris_command_hits_the_deadline(sluice_factory):
    d = sluice_factory(limits={"command_timeout": "3s"})
    with d.connect() as c:
        line = b"EHLO a-rather-long-client-name.example.test\r\n"
        sent, got = drip(c, line, len(line))
        assert got.startswith(b"421 4.4.2 "), (sent, got)
        assert sent < len(line), "the whole command got through at a byte a second"
        assert c.wait_closed(5)
    no_panic(d)


def test_slowloris_data_hits_the_deadline(sluice_factory):
    d = sluice_factory(limits={"command_timeout": "30s", "data_timeout": "3s"})
    with d.session() as c:
        c.mail("alice@example.test")
        c.rcpt("bob@example.test")
        check(c.cmd("DATA"), 354)
        body = b"Subject: drip\r\n\r\n" + b"x" * 60 + b"\r\n.\r\n"
        sent, got = drip(c, body, len(body))
        assert got.startswith(b"421 4.4.2 "), (sent, got)
        assert sent < len(body)
        assert c.wait_closed(5)
    assert d.queue_list() == []
    no_panic(d)


# -- a 1 GiB message -------------------------------------------------------------

def test_gigabyte_announced_with_size_is_refused_at_mail(sluice_factory):
    d = sluice_factory()
    with d.session() as c:
        check(c.cmd("MAIL FROM:<alice@example.test> SIZE=%d" % GIB), 552, "5.3.4")
        # nothing was started: RCPT has no transaction, the session goes on
        check(c.cmd("RCPT TO:<bob@example.test>"), 503, "5.5.1")
        still_works(c)
    assert d.queue_list() == []
    no_panic(d)


def spool_count(d, marker):
    """Occurrences of `marker` in the files under the spool directory."""
    n = 0
    for top, _, files in os.walk(d.spool_dir):
        for name in files:
            with open(os.path.join(top, name), "rb") as f:
                n += f.read().count(marker)
    return n


def test_gigabyte_without_size_is_cut_at_the_limit(sluice_factory):
    """The client would send 1 GiB; sluice (limit 1 MiB) answers 552 5.3.4
    and stores nothing past the limit. 3 MiB stand for the GiB: what comes
    after the limit is only read and dropped. The octets below the limit
    that were already spooled as Chunk records (256 KiB each) are dead
    octets of no message: recovery never makes a message of them (the
    restart here shows it), and they go when their segment is collected
    (it is closed at 64 MiB or at the next start, then deleted once no
    message in it is live; README "Resource exhaustion")."""
    limit = 1 << 20
    d = sluice_factory(limits={"max_message_size": "1 MiB"})
    marker = b"GIGABYTE-MARKER-7f3a"
    line = marker + b" " + b"g" * 78 + b"\r\n"
    body = line * (3 * limit // len(line))
    with d.session(timeout=60) as c:
        c.mail("alice@example.test")
        c.rcpt("bob@example.test")
        check(c.data(make_message("gigabyte", body)), 552, "5.3.4")
        still_works(c)
    assert d.queue_list() == []
    stored = spool_count(d, marker) * len(line)
    print("octets of the refused message in the spool: %d (limit %d)" % (stored, limit))
    assert stored <= limit, "%d octets stored, more than the limit" % stored
    assert d.stop() == 0
    d.start()
    with d.session() as c:
        qid = queued_id(c.send_mail("alice@example.test", ["bob@example.test"], make_message("after")))
    assert [e["id"] for e in d.queue_list()] == [qid], "recovery made a message of the refused octets"
    no_panic(d)


# -- 1,000 recipients --------------------------------------------------------------

def send_rcpts(c, n):
    c.mail("alice@example.test")
    c.send(b"".join(b"RCPT TO:<r%d@example.test>\r\n" % i for i in range(n)))
    return [c.reply(timeout=30) for _ in range(n)]


def test_thousand_recipients_at_the_ceiling(sluice_factory):
    # both the appliance config and the rule file must allow 1000 (the smaller applies)
    d = sluice_factory(limits={"max_recipients": 1000}, rules_text='[domains]\naccepted = ["example.test"]\n\n[limits]\nmax_recipients = 1000\n')
    with d.session(timeout=30) as c:
        replies = send_rcpts(c, 1001)
        assert all(r.code == 250 for r in replies[:1000]), [r for r in replies[:1000] if r.code != 250][:3]
        check(replies[1000], 452, "4.5.3")
        qid = queued_id(c.data(make_message("thousand")))
    assert len(d.queue_entry(qid)["rcpts"]) == 1000
    no_panic(d)


def test_thousand_recipients_over_the_default_limit(sluice_factory):
    """Default max_recipients 200: the rest get 452 4.5.3; each counts as an
    error, so the 20-error limit closes the session with 421 4.7.0 before
    the thousandth (the message is not taken: no DATA came)."""
    d = sluice_factory()
    with d.session(timeout=30) as c:
        c.mail("alice@example.test")
        c.send(b"".join(b"RCPT TO:<r%d@example.test>\r\n" % i for i in range(1000)))
        replies = []
        try:
            while len(replies) < 1000:
                replies.append(c.reply(timeout=30))
                if replies[-1].code == 421:
                    break
        except Exception:
            pass
        codes = [(r.code, r.enhanced) for r in replies]
        assert codes[:200] == [(250, "2.1.5")] * 200, codes[:205]
        over = codes[200:]
        assert over and all(x == (452, "4.5.3") for x in over[:-1]), over[:30]
        assert over[-1] in ((452, "4.5.3"), (421, "4.7.0")), over[-3:]
    no_panic(d)


# -- MIME nested 1,000 deep ---------------------------------------------------------

NEST_RULES = """\
[domains]
accepted = ["example.test"]

[[connector]]
name = "internet"
address_spaces = ["*"]

[[rule]]
name = "no executables"
if = { attachment_name_matches = '(?i)\\.exe$' }
then = { reject = "550 5.7.1 Executable attachments are refused" }
"""


def nested(depth, attachment=b"evil.exe", pad=0):
    """A multipart/mixed nested `depth` deep, the attachment in the innermost part."""
    head = b"From: <alice@example.test>\r\nTo: <bob@example.test>\r\nSubject: nested\r\nMIME-Version: 1.0\r\n"
    opens, closes = [], []
    for i in range(depth):
        opens.append(b"Content-Type: multipart/mixed; boundary=\"b%d\"\r\n\r\n--b%d\r\n" % (i, i))
        closes.append(b"\r\n--b%d--\r\n" % i)
    inner = (b"Content-Type: application/octet-stream\r\n"
             b"Content-Disposition: attachment; filename=\"" + attachment + b"\"\r\n\r\nAAAA\r\n"
             + b"A" * pad)
    return head + b"".join(opens) + inner + b"".join(reversed(closes))


def test_mime_nested_a_thousand_deep(sluice_factory):
    d = sluice_factory(rules_text=NEST_RULES)
    # held whole (~70 KiB) and streamed in pieces (padded past the spool's 256 KiB chunk)
    for pad in (0, 2 << 20):
        for name, want in ((b"evil.exe", (550, "5.7.1")), (b"notes.txt", (250, "2.0.0"))):
            msg = nested(1000, name, pad)
            with d.session(timeout=60) as c:
                r = c.send_mail("alice@example.test", ["bob@example.test"], msg)
                print("nested 1000, %s, %d octets: %d %s" % (name.decode(), len(msg), r.code, r.enhanced))
                # the attachment at the bottom is found: the rule's answer
                check(r, *want)
                still_works(c)
            no_panic(d)


# -- a million short header fields -----------------------------------------------------

def test_a_million_header_fields(sluice_factory):
    d = sluice_factory()
    marker = b"MILLION-FIELDS-5b1e"
    fields = b"X-" + marker + b": a\r\n" + b"X:a\r\n" * 1_000_000
    msg = b"From: <alice@example.test>\r\nSubject: fields\r\n" + fields + b"\r\nbody\r\n"
    with d.session(timeout=120) as c:
        c.mail("alice@example.test")
        c.rcpt("bob@example.test")
        check(c.data(msg), 552, "5.3.4")
        still_works(c)
    assert d.queue_list() == []
    assert not spool_holds(d, marker), "octets of the refused header block are in the spool"
    no_panic(d)
