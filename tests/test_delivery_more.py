"""More delivery end to end, against the real binary and sinks on loopback:
per-recipient replies in one transaction, a next hop lacking 8BITMIME and
SMTPUTF8, CHUNKING to a second sluice, the per-destination concurrency
limit, retry times across a restart, criteria-based routing and journaling."""
import re
import socket
import socketserver
import threading
import time

from helpers.daemon import relay
from helpers.ports import free_port
from helpers.queue import dsn_of, dsns_of, states
from helpers.rules import variant_text
from helpers.smtp import check, queued_id


class RawSink:
    """A plain-socket SMTP server that offers only the extensions it is
    given (aiosmtpd always offers 8BITMIME), holds each end of data for
    `hold` seconds, and counts sessions open at once. `greeting` other than
    220 refuses every session."""

    def __init__(self, extensions=(), hold=0.0, greeting="220 raw.sink ESMTP", port=None):
        self.extensions = list(extensions)
        self.hold = hold
        self.greeting = greeting
        self.messages = []
        self.commands = []
        self.connections = 0
        self.open = 0
        self.max_open = 0
        self.lock = threading.Lock()
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                with sink.lock:
                    sink.connections += 1
                    sink.open += 1
                    sink.max_open = max(sink.max_open, sink.open)
                counted = [True]

                def closing():
                    """The session ends: no longer counted as open (said
                    before the 221 to QUIT, so the client cannot open its
                    next session before this one is counted out)."""
                    with sink.lock:
                        if counted[0]:
                            counted[0] = False
                            sink.open -= 1

                try:
                    sink.session(self.rfile, self.wfile, closing)
                except OSError:
                    pass
                finally:
                    closing()

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.server = Server(("127.0.0.1", port or 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def session(self, rfile, wfile, closing):
        def say(line):
            wfile.write(line.encode() + b"\r\n")
            wfile.flush()

        say(self.greeting)
        if not self.greeting.startswith("220"):
            return
        frm, rcpts = None, []
        while True:
            line = rfile.readline()
            if not line:
                return
            cmd = line.rstrip(b"\r\n").decode("utf-8", "replace")
            with self.lock:
                self.commands.append(cmd)
            verb = cmd.split(" ", 1)[0].upper()
            if verb == "EHLO":
                lines = ["raw.sink"] + self.extensions
                for i, ext in enumerate(lines):
                    say("250%s%s" % ("-" if i < len(lines) - 1 else " ", ext))
            elif verb == "HELO":
                say("250 raw.sink")
            elif verb == "MAIL":
                frm, rcpts = cmd, []
                say("250 2.1.0 ok")
            elif verb == "RCPT":
                rcpts.append(cmd)
                say("250 2.1.5 ok")
            elif verb == "DATA":
                say("354 go ahead")
                data = b""
                while not data.endswith(b"\r\n.\r\n") and data != b".\r\n":
                    chunk = rfile.readline()
                    if not chunk:
                        return
                    data += chunk
                time.sleep(self.hold)
                with self.lock:
                    self.messages.append((frm, rcpts, data))
                say("250 2.0.0 raw captured")
            elif verb in ("RSET", "NOOP"):
                say("250 2.0.0 ok")
            elif verb == "QUIT":
                closing()
                say("221 2.0.0 bye")
                return
            else:
                say("502 5.5.2 not here")

    def wait(self, n, timeout=20):
        deadline = time.time() + timeout
        while len(self.messages) < n and time.time() < deadline:
            time.sleep(0.05)
        assert len(self.messages) >= n, "raw sink got %d message(s), wanted %d" % (len(self.messages), n)
        return self.messages


# -------------------------------------------- (a) per-recipient replies -------

def test_mixed_replies_in_one_transaction(sluice_factory, tmp_path, sinks):
    mixed = sinks(rcpt_replies={"soon@mixed.test": ["451 4.2.1 mailbox busy", "250 2.1.5 now ok"],
                                "gone@mixed.test": ["550 5.1.1 no such user"]},
                  rcpt_default="250 2.1.5 ok")
    home = sinks()
    d = relay(sluice_factory, {"mx.mixed.test": mixed.port, "mx.home.test": home.port,
                               "mx": {"mixed.test": "mx.mixed.test", "home.test": "mx.home.test"}},
              retry='"2s"')
    c = d.session()
    r = c.send_mail("a@home.test", ["ok@mixed.test", "soon@mixed.test", "gone@mixed.test"],
                    b"Subject: three answers\r\n\r\nbody\r\n")
    qid = queued_id(r)
    first = mixed.wait(1)[0]
    # One transaction carried all three; only the accepted one was in it.
    assert first[1] == ["ok@mixed.test"], first
    assert [a for a, _ in mixed.rcpt_log[:3]] == ["ok@mixed.test", "soon@mixed.test", "gone@mixed.test"]
    entry = states(d, qid, ["Delivered", "Deferred", "Notified"])
    assert "451 4.2.1 mailbox busy" in entry["states"][1]["Deferred"]["reason"], entry
    assert "550 5.1.1 no such user" in entry["states"][2]["Notified"]["reason"], entry
    # The DSN: to the sender only, naming only the 5xx recipient.
    frm, to, dsn = home.wait(1)[0]
    assert frm in ("", "<>") and to == ["a@home.test"]
    assert b"Final-Recipient: rfc822; gone@mixed.test" in dsn, dsn
    assert b"Action: failed\r\nStatus: 5.1.1\r\n" in dsn, dsn
    assert b"Final-Recipient: rfc822; ok@mixed.test" not in dsn
    assert b"Final-Recipient: rfc822; soon@mixed.test" not in dsn
    # The deferred one goes on retry, alone.
    second = mixed.wait(2)[1]
    assert second[1] == ["soon@mixed.test"], second
    states(d, qid, ["Delivered", "Delivered", "Notified"])
    time.sleep(1)
    assert len(home.messages) == 1 and len(mixed.messages) == 2
    assert len(dsns_of(d, qid)) == 1


# ------------------------------------------------- (b) 8BITMIME / SMTPUTF8 -------

def test_no_8bitmime_or_smtputf8_at_the_next_hop_defers(sluice_factory, tmp_path):
    raw = RawSink(extensions=["SIZE 10000000", "ENHANCEDSTATUSCODES"])
    try:
        d = relay(sluice_factory, {"mx.old.test": raw.port, "mx": {"old.test": "mx.old.test"}},
                  retry='"1s"')
        c = d.session()
        q8 = queued_id(c.send_mail("a@contoso.com", ["x@old.test"],
                                   "Subject: caf\u00e9\r\n\r\nna\u00efve 8-bit body\r\n".encode("utf-8"),
                                   params="BODY=8BITMIME"))
        qu = queued_id(c.send_mail("j\u00f6rg@contoso.com", ["x@old.test"],
                                   b"Subject: utf8 sender\r\n\r\nascii body\r\n", params="SMTPUTF8"))
        e8 = states(d, q8, ["Deferred"])
        eu = states(d, qu, ["Deferred"])
        assert "4.6.3" in e8["states"][0]["Deferred"]["reason"], e8
        assert "4.6.7" in eu["states"][0]["Deferred"]["reason"], eu
        # Tried again and again (retry is 1s), never sent.
        deadline = time.time() + 10
        while time.time() < deadline and d.queue_json(q8)["states"][0]["Deferred"]["attempts"] < 2:
            time.sleep(0.1)
        assert d.queue_json(q8)["states"][0]["Deferred"]["attempts"] >= 2
        assert raw.connections >= 2
        assert raw.messages == [], "nothing may be sent to a host lacking 8BITMIME/SMTPUTF8"
        assert not [x for x in raw.commands if x.upper().startswith(("MAIL", "DATA"))], raw.commands
        # The reasons are visible to the operator.
        for qid, code in ((q8, "4.6.3"), (qu, "4.6.7")):
            shown = d.cli("queue", "show", qid).stdout.decode("utf-8")
            assert re.search(r"state: +<x@old.test>  deferred  .*%s" % re.escape(code), shown), shown
            listed = [e for e in d.queue_list() if e["id"] == qid][0]
            assert code in listed["recipients"][0]["reason"], listed
    finally:
        raw.stop()


# ------------------------------------------------------------- (c) CHUNKING -------

def test_chunking_to_a_second_sluice_arrives_intact(sluice_factory, tmp_path):
    b = sluice_factory()  # the next hop: offers CHUNKING; its own MX are dead ends
    ehlo = RawSMTPProbe(b.port).ehlo()
    assert "CHUNKING" in ehlo, ehlo
    proxy = Proxy(b.port)
    d = relay(sluice_factory, {"mx.b.test": proxy.port, "mx": {"far.test": "mx.b.test"}})
    body = (b"Subject: chunked\r\nX-Dots: yes\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nnot the end\r\n"
            + "8-bit: \u00e9\u00e8\u00ea\r\n".encode("utf-8") + b"x" * 5000 + b"\r\nlast line\r\n")
    c = d.session()
    qid = queued_id(c.send_mail("a@contoso.com", ["x@far.test"], body, params="BODY=8BITMIME"))
    entry = states(d, qid, ["Delivered"])
    reply = entry["states"][0]["Delivered"]["reply"]
    m = re.search(r"queued as ([0-9A-F]{16})", reply)
    assert m, reply
    got = b.queue_raw(m.group(1))
    # What B stored is A's message with A's Received: field on top, octet for octet.
    assert got.startswith(b"Received: "), got[:200]
    assert got.endswith(body), got[-300:]
    assert got.count(b"\r\nReceived: ") == 0 and got.split(b"\r\n", 1)[1].startswith(b"\tby edge1.test (sluice)")
    assert b.queue_json(m.group(1))["from"] == "a@contoso.com"
    # It went by BDAT, not DATA: what A sent, as the proxy saw it.
    sent = bytes(proxy.upstream)
    assert b"\r\nBDAT %d LAST\r\n" % len(got) in sent, sent[:600]
    assert b"\r\nDATA\r\n" not in sent


class Proxy:
    """Forwards a loopback port to another, keeping what the client sent."""

    def __init__(self, to_port):
        self.upstream = bytearray()
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(8)
        self.port = self.lsock.getsockname()[1]
        self.to_port = to_port
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                a, _ = self.lsock.accept()
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.to_port))
            threading.Thread(target=self.pump, args=(a, b, True), daemon=True).start()
            threading.Thread(target=self.pump, args=(b, a, False), daemon=True).start()

    def pump(self, src, dst, keep):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if keep:
                    self.upstream += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass


class RawSMTPProbe:
    def __init__(self, port):
        self.port = port

    def ehlo(self):
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            f = s.makefile("rb")
            f.readline()
            s.sendall(b"EHLO probe.test\r\n")
            lines = []
            while True:
                ln = f.readline().decode()
                lines.append(ln)
                if ln[3:4] != "-":
                    break
            s.sendall(b"QUIT\r\n")
            f.readline()
            return "".join(lines)


# ---------------------------------------------------------- (d) concurrency -------

def test_concurrency_per_destination_is_a_ceiling(sluice_factory, tmp_path):
    raw = RawSink(extensions=["8BITMIME"], hold=0.5)
    try:
        d = relay(sluice_factory, {"mx.busy.test": raw.port, "mx": {"busy.test": "mx.busy.test"}},
                  queue_extra="concurrency_per_destination = 2\n")
        c = d.session()
        qids = [queued_id(c.send_mail("a@contoso.com", ["x%d@busy.test" % i], b"Subject: n%d\r\n\r\nbody\r\n" % i))
                for i in range(10)]
        raw.wait(10, timeout=40)
        for q in qids:
            states(d, q, ["Delivered"])
        assert sorted(m[1][0] for m in raw.messages) == sorted("RCPT TO:<x%d@busy.test>" % i for i in range(10))
        assert raw.max_open == 2, "sessions open at once: %d, the limit is 2" % raw.max_open
    finally:
        raw.stop()


# ------------------------------------------------ (e) retries and restarts -------

def test_retry_time_and_attempts_survive_a_restart(sluice_factory, tmp_path):
    down = RawSink(greeting="451 4.3.2 not today")  # every session refused at once
    try:
        d = relay(sluice_factory, {"mx.down.test": down.port, "mx": {"down.test": "mx.down.test"}},
                  retry='"1h"')
        c = d.session()
        qid = queued_id(c.send_mail("a@contoso.com", ["x@down.test"], b"Subject: patience\r\n\r\nbody\r\n"))
        c.close()
        before = states(d, qid, ["Deferred"])["states"][0]["Deferred"]
        assert before["attempts"] == 1 and "451 4.3.2 not today" in before["reason"], before
        assert before["until"] > time.time() + 3500, before
        assert down.connections == 1
        d.restart()
        time.sleep(3)  # several scheduler ticks
        after = d.queue_json(qid)
        assert after["source"] == "daemon", after
        assert after["states"][0]["Deferred"] == before, (before, after)
        r = after["recipients"][0]
        assert (r["attempts"], r["next_attempt"]) == (1, before["until"]), r
        assert down.connections == 1, "an attempt before the retry time, after the restart"
        # The operator can still ask for it now.
        assert d.cli("queue", "retry", qid).returncode == 0
        deadline = time.time() + 10
        while time.time() < deadline and d.queue_json(qid)["states"][0]["Deferred"]["attempts"] < 2:
            time.sleep(0.1)
        assert d.queue_json(qid)["states"][0]["Deferred"]["attempts"] == 2
        assert down.connections == 2
    finally:
        down.stop()


# ------------------------------------- (f) criteria-based routing, journal -------

def test_criteria_based_routing_and_the_journal_recipient(sluice_factory, tmp_path, sinks):
    onprem, internet, archive = sinks(), sinks(), sinks()
    d = relay(sluice_factory, {
        "exch1.contoso.internal": onprem.port, "mx.gmail.test": internet.port,
        "archive.contoso.internal": archive.port, "hes.trend.example": free_port(),
        "mx": {"gmail.test": "mx.gmail.test"},
    }, rules_text=variant_text("opportunistic"))
    # Exchange Online (127.0.0.2) to an inside recipient: the rule's
    # use_connector = "onprem" sends it on-premises.
    o = d.connect(source="127.0.0.2")
    o.ehlo()
    r = o.send_mail("user@contoso.com", ["bob@contoso.com"], b"Subject: cloud to cloud\r\n\r\nbody\r\n")
    check(r, 250)
    q1 = queued_id(r)
    # With X-OriginatorOrg: the exception holds, the rule does not apply
    # (the address space still sends it on-premises: no loop, no override).
    r = o.send_mail("user@contoso.com", ["carol@contoso.com"],
             b"X-OriginatorOrg: eu.contoso.com\r\nSubject: already on-prem\r\n\r\nbody\r\n")
    check(r, 250)
    q2 = queued_id(r)
    o.close()
    got = onprem.wait(2)
    assert sorted(m[1][0] for m in got) == ["bob@contoso.com", "carol@contoso.com"], got
    r1 = d.queue_json(q1)["routes"][0]
    r2 = d.queue_json(q2)["routes"][0]
    assert r1["connector"] == r2["connector"] == "onprem", (r1, r2)
    route1 = [ln for ln in d.stderr().splitlines() if "ROUTE qid=%s " % q1 in ln]
    route2 = [ln for ln in d.stderr().splitlines() if "ROUTE qid=%s " % q2 in ln]
    assert len(route1) == 1 and 'connector onprem chosen by rule "Cloud to cloud via on-premises"' in route1[0], route1
    assert len(route2) == 1 and "address space of connector onprem matches contoso.com" in route2[0], route2
    assert "Routed via connector [onprem] (criteria-based routing)" in d.stderr()

    # Journaling: the CEO's mail to the Internet also goes to the journal
    # mailbox through the journal connector, stamped X-Journaled.
    c = d.session()
    r = c.send_mail("ceo@contoso.com", ["x@gmail.test"], b"Subject: board minutes\r\n\r\nbody\r\n")
    check(r, 250)
    qj = queued_id(r)
    c.close()
    j = archive.wait(1)[0]
    assert j[1] == ["journal@journaling.contoso.com"] and j[0] == "ceo@contoso.com", j
    assert b"\r\nX-Journaled: yes\r\n" in j[2] and b"Subject: board minutes" in j[2], j[2][:500]
    i = internet.wait(1)[0]
    assert i[1] == ["x@gmail.test"], i
    routes = d.queue_json(qj)["routes"]
    assert sorted((x["rcpt"], x["connector"]) for x in routes) == [
        ("journal@journaling.contoso.com", "journal"), ("x@gmail.test", "internet")], routes
    states(d, qj, ["Delivered", "Delivered"])
    assert len(onprem.messages) == 2


# ----------------------------------------------------- DSN of 8-bit mail -------

def test_a_dsn_quoting_8bit_headers_is_itself_8bit(sluice_factory, tmp_path, sinks):
    # The DSN quotes the original's UTF-8 Subject: a next hop without
    # 8BITMIME must not get it (deferred 4.6.3, not sent as 7-bit).
    hard = sinks(script=["554 5.7.1 go away"])
    old_home = RawSink(extensions=["ENHANCEDSTATUSCODES"])
    try:
        d = relay(sluice_factory, {"mx.hard.test": hard.port, "mx.home.test": old_home.port,
                                             "mx": {"hard.test": "mx.hard.test", "home.test": "mx.home.test"}})
        c = d.session()
        qid = queued_id(c.send_mail("a@home.test", ["x@hard.test"],
                                    "Subject: r\u00e9sum\u00e9\r\n\r\nbody\r\n".encode("utf-8"),
                                    params="BODY=8BITMIME"))
        states(d, qid, ["Notified"])
        dsn = dsn_of(d, qid)
        entry = states(d, dsn, ["Deferred"])
        assert "4.6.3" in entry["states"][0]["Deferred"]["reason"], entry
        assert old_home.messages == [] and old_home.connections >= 1
    finally:
        old_home.stop()
