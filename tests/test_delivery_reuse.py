"""Delivery connection reuse (the connection cache), end to end: a raw
next hop on loopback counts the connections and the messages each one
carried, and can close a connection it kept idle (silently, or with a
421 first) to show that a cached session that fails before MAIL is
answered costs the message nothing."""
import json
import socket
import threading
import time

from helpers.daemon import relay
from helpers.smtp import check, queued_id
from helpers.queue import states


class CountingSink:
    """A minimal SMTP server on 127.0.0.1 (a thread per connection) that
    accepts every message and counts per connection how many it carried.
    `close_idle`: after each transaction, wait that many seconds and then
    close the connection (`goodbye`: the line sent before, e.g. a 421).
    `refuse_mail`, `refuse_data`: senders refused at MAIL (550; the
    pipelined RCPTs and DATA then get 503) or at DATA (451)."""

    def __init__(self, close_idle=None, goodbye=None, refuse_mail=(), refuse_data=()):
        self.close_idle = close_idle
        self.goodbye = goodbye
        self.refuse_mail = refuse_mail  # senders whose MAIL gets 550
        self.refuse_data = refuse_data  # senders whose DATA gets 451
        self.per_connection = []  # messages carried, one entry per connection
        self.messages = []  # (mail_from, rcpts, data)
        self.commands = []  # every command line, in order
        self.closed = 0  # connections the sink has closed
        self.lock = threading.Lock()
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(64)
        self.port = self.srv.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            with self.lock:
                self.per_connection.append(0)
                index = len(self.per_connection) - 1
            threading.Thread(target=self._serve, args=(conn, index), daemon=True).start()

    def _serve(self, conn, index):
        f = conn.makefile("rb")
        try:
            conn.sendall(b"220 sink.test ESMTP\r\n")
            mail, rcpts = None, []
            while True:
                line = f.readline()
                if not line:
                    return
                cmd = line.decode("latin-1").rstrip("\r\n")
                with self.lock:
                    self.commands.append(cmd)
                verb = cmd[:4].upper()
                if verb == "EHLO":
                    conn.sendall(b"250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10000000\r\n")
                elif verb == "MAIL":
                    mail, rcpts = cmd[10:].split(">")[0].lstrip("<"), []
                    if mail in self.refuse_mail:
                        mail = None
                        conn.sendall(b"550 5.7.1 sender refused\r\n")
                    else:
                        conn.sendall(b"250 2.1.0 ok\r\n")
                elif verb in ("RCPT", "DATA") and mail is None:
                    conn.sendall(b"503 5.5.1 MAIL first\r\n")
                elif verb == "DATA" and mail in self.refuse_data:
                    conn.sendall(b"451 4.3.0 not now\r\n")
                elif verb == "RCPT":
                    rcpts.append(cmd[8:].split(">")[0].lstrip("<"))
                    conn.sendall(b"250 2.1.5 ok\r\n")
                elif verb == "DATA":
                    conn.sendall(b"354 go\r\n")
                    data = b""
                    while True:
                        l = f.readline()
                        if not l or l == b".\r\n":
                            break
                        data += l[1:] if l.startswith(b".") else l
                    with self.lock:
                        self.messages.append((mail, rcpts, data))
                        self.per_connection[index] += 1
                    conn.sendall(b"250 2.0.0 captured\r\n")
                    if self.close_idle is not None:
                        time.sleep(self.close_idle)
                        if self.goodbye:
                            conn.sendall(self.goodbye)
                        return
                elif verb == "RSET":
                    mail, rcpts = None, []
                    conn.sendall(b"250 2.0.0 reset\r\n")
                elif verb == "QUIT":
                    conn.sendall(b"221 2.0.0 bye\r\n")
                    return
                else:
                    conn.sendall(b"502 5.5.2 what\r\n")
        except OSError:
            return
        finally:
            try:
                f.close()
                conn.close()
            except OSError:
                pass
            with self.lock:
                self.closed += 1

    def wait(self, n, timeout=20):
        deadline = time.time() + timeout
        while len(self.messages) < n and time.time() < deadline:
            time.sleep(0.05)
        assert len(self.messages) >= n, "got %d message(s), wanted %d" % (len(self.messages), n)
        return self.messages

    def stop(self):
        self.stopped = True
        self.srv.close()


def connection_metrics(d):
    p = d.cli("status", "--json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)["metrics"].get("sluice_delivery_connections_total", {})


def submit(d, n, prefix="m"):
    """Sends `n` messages over one inbound session; their queue ids."""
    c = d.session()
    qids = []
    for i in range(n):
        r = c.send_mail("a@contoso.com", ["x@reuse.test"],
                        b"Subject: %s %d\r\n\r\nbody %d\r\n" % (prefix.encode(), i, i))
        check(r, 250)
        qids.append(queued_id(r))
    c.close()
    return qids


def test_twenty_messages_share_connections_and_say_reused(sluice_factory):
    sink = CountingSink()
    try:
        d = relay(sluice_factory, {"mx.reuse.test": sink.port, "mx": {"reuse.test": "mx.reuse.test"}})
        qids = submit(d, 20)
        sink.wait(20)
        for q in qids:
            states(d, q, ["Delivered"])
        assert sum(sink.per_connection) == 20
        assert len(sink.per_connection) < 20, sink.per_connection
        assert max(sink.per_connection) >= 2, sink.per_connection
        log = d.stderr()
        sends = [l for l in log.splitlines() if "SEND qid=" in l]
        assert len(sends) == 20, sends
        assert all(" reused=" in l for l in sends), sends
        assert any(" reused=0" not in l for l in sends), sends
        assert "DEFER" not in log
        m = connection_metrics(d)
        assert m.get("yes", 0) >= 1 and m.get("yes", 0) + m.get("no", 0) == 20, m
        assert m.get("no", 0) == len(sink.per_connection), (m, sink.per_connection)
        # Idle past the limit (2 s by default), the sessions end with QUIT.
        deadline = time.time() + 6
        while sink.commands.count("QUIT") < len(sink.per_connection) and time.time() < deadline:
            time.sleep(0.1)
        assert sink.commands.count("QUIT") == len(sink.per_connection), sink.commands[-10:]
        # A reused session starts with MAIL: one EHLO per connection.
        assert sum(1 for c in sink.commands if c.startswith("EHLO")) == len(sink.per_connection)
    finally:
        sink.stop()


def test_a_session_closed_while_idle_costs_no_attempt(sluice_factory):
    for goodbye in (None, b"421 4.4.2 sink.test idle too long\r\n"):
        sink = CountingSink(close_idle=0.1, goodbye=goodbye)
        try:
            d = relay(sluice_factory, {"mx.reuse.test": sink.port, "mx": {"reuse.test": "mx.reuse.test"}},
                      queue_extra='connection_cache_time = "10s"\n')
            qids = []
            for i in range(4):
                qids += submit(d, 1, prefix="idle%d" % i)
                sink.wait(i + 1)
                # The sink has closed the session sluice keeps.
                deadline = time.time() + 5
                while sink.closed < i + 1 and time.time() < deadline:
                    time.sleep(0.02)
                assert sink.closed == i + 1, sink.closed
            for q in qids:
                entry = states(d, q, ["Delivered"])
                assert "Deferred" not in json.dumps(entry), entry
            log = d.stderr()
            assert "DEFER" not in log, log[-3000:]
            assert log.count("failed before MAIL was answered; a new one") >= 3, log[-3000:]
            sends = [l for l in log.splitlines() if "SEND qid=" in l]
            assert len(sends) == 4 and all(" reused=0" in l for l in sends), sends
            assert sink.per_connection == [1, 1, 1, 1], sink.per_connection
            m = connection_metrics(d)
            assert m.get("no", 0) == 4 and m.get("yes", 0) >= 3, m
        finally:
            sink.stop()


def test_a_refused_mail_or_data_keeps_the_session_with_rset(sluice_factory):
    """Postfix's connection cache keeps a session whose MAIL or DATA was
    refused: the message fails (bounced or deferred) and the next one goes
    over the same connection after RSET."""
    sink = CountingSink(refuse_mail={"refused@contoso.com"}, refuse_data={"later@contoso.com"})
    try:
        d = relay(sluice_factory, {"mx.reuse.test": sink.port, "mx": {"reuse.test": "mx.reuse.test"}},
                  queue_extra='connection_cache_time = "30s"\n', retry='"1h"')
        outcome = {}
        for sender, want in (("a@contoso.com", "Delivered"), ("refused@contoso.com", "Bounced"),
                             ("b@contoso.com", "Delivered"), ("later@contoso.com", "Deferred"),
                             ("c@contoso.com", "Delivered")):
            c = d.session()
            r = c.send_mail(sender, ["x@reuse.test"], b"Subject: from %s\r\n\r\nbody\r\n" % sender.encode())
            check(r, 250)
            c.close()
            outcome[sender] = states(d, queued_id(r), [want])
        assert [m[0] for m in sink.messages] == ["a@contoso.com", "b@contoso.com", "c@contoso.com"]
        assert sink.per_connection == [3], sink.per_connection
        mails = [i for i, c in enumerate(sink.commands) if c.startswith("MAIL")]
        assert len(mails) == 5, sink.commands
        # After each refusal the next transaction begins with RSET; never QUIT.
        for refused in (1, 3):
            assert sink.commands[mails[refused + 1] - 1] == "RSET", sink.commands
        assert "QUIT" not in sink.commands and sum(c.startswith("EHLO") for c in sink.commands) == 1
        assert "550 5.7.1" in json.dumps(outcome["refused@contoso.com"])
        assert "451 4.3.0" in json.dumps(outcome["later@contoso.com"])
        sends = [l for l in d.stderr().splitlines() if "SEND qid=" in l]
        assert [" reused=0" in l for l in sends] == [True, False, False], sends
    finally:
        sink.stop()


def test_the_cache_can_be_turned_off(sluice_factory):
    sink = CountingSink()
    try:
        d = relay(sluice_factory, {"mx.reuse.test": sink.port, "mx": {"reuse.test": "mx.reuse.test"}},
                  queue_extra="connection_cache_size = 0\n")
        submit(d, 5)
        sink.wait(5)
        # The sink counts a message before its 250, and sluice's QUIT
        # follows that 250.
        deadline = time.time() + 6
        while sink.commands.count("QUIT") < 5 and time.time() < deadline:
            time.sleep(0.05)
        assert sink.per_connection == [1] * 5, sink.per_connection
        assert sink.commands.count("QUIT") == 5, sink.commands[-10:]
    finally:
        sink.stop()


def test_sessions_kept_open_end_with_quit_at_shutdown(sluice_factory):
    sink = CountingSink()
    try:
        d = relay(sluice_factory, {"mx.reuse.test": sink.port, "mx": {"reuse.test": "mx.reuse.test"}},
                  queue_extra='connection_cache_time = "60s"\n')
        submit(d, 3)
        sink.wait(3)
        time.sleep(0.5)
        assert "QUIT" not in sink.commands, "kept open, well within the idle limit"
        assert d.stop() == 0
        deadline = time.time() + 5
        while sink.commands.count("QUIT") < len(sink.per_connection) and time.time() < deadline:
            time.sleep(0.05)
        assert sink.commands.count("QUIT") == len(sink.per_connection) >= 1, sink.commands
    finally:
        sink.stop()
