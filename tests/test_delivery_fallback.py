"""Falling back within one attempt: a next hop that defers every recipient
hands the message to the next MX; an opportunistic STARTTLS whose handshake
fails is tried again in clear text on the same host (RFC 7435), while a
connector that requires TLS never does that (test_relay_dns_tls covers
`verify`)."""
import socket
import threading
import time

from helpers.daemon import dns_daemon
from helpers.queue import detail, state_names, states, submit
from helpers.sink import Sink


def two_mx(sluice_factory, p1, p2, **kw):
    return dns_daemon(sluice_factory, ["127.0.0.1:1"],
                      static={"mx1.two.test": ["127.0.0.1:%d" % p1],
                              "mx2.two.test": ["127.0.0.1:%d" % p2]},
                      static_mx={"two.test": [(10, "mx1.two.test"), (20, "mx2.two.test")]}, **kw)


def test_every_recipient_deferred_the_next_mx_gets_them(sluice_factory):
    mx1 = Sink(rcpt_reply="451 4.2.1 mailbox busy").start()
    mx2 = Sink().start()
    try:
        d = two_mx(sluice_factory, mx1.port, mx2.port)
        qid = submit(d, "a@contoso.com", ["x@two.test", "y@two.test"], "mx1 defers all")
        m = mx2.wait(1)
        assert sorted(m[0].rcpts) == ["x@two.test", "y@two.test"]
        states(d, qid, ["Delivered", "Delivered"])
        assert sorted(mx1.rcpts_seen) == ["x@two.test", "y@two.test"], "mx1 was not asked first"
        assert mx1.messages == []
        assert "DEFER qid=%s" % qid not in d.stderr(), "the fallback must happen within the attempt"
    finally:
        mx1.stop()
        mx2.stop()


def test_every_recipient_deferred_everywhere_keeps_the_replies(sluice_factory):
    # Both MX defer: the recipients stay deferred with the last host's own
    # replies, not a generic reason.
    mx1 = Sink(rcpt_reply="451 4.2.1 mx1 busy").start()
    mx2 = Sink(rcpt_reply="452 4.2.2 mx2 over quota").start()
    try:
        d = two_mx(sluice_factory, mx1.port, mx2.port, retry='"1h"')
        qid = submit(d, "a@contoso.com", ["x@two.test"], "both defer")
        entry = states(d, qid, ["Deferred"])
        assert "4.2.2 mx2 over quota" in detail(entry).get("reason", ""), entry
        assert mx1.rcpts_seen and mx2.rcpts_seen
    finally:
        mx1.stop()
        mx2.stop()


class BrokenTlsServer:
    """A minimal SMTP server that offers STARTTLS, says 220 to it, then
    answers the TLS ClientHello with a fatal alert. A session without
    STARTTLS takes the message. Records each session's commands."""

    ALERT = b"\x15\x03\x03\x00\x02\x02\x28"  # fatal handshake_failure

    def __init__(self):
        self.sessions = []  # [commands] per connection
        self.messages = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))  # the kernel picks: no race for the port
        self.port = self.sock.getsockname()[1]
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                conn.settimeout(5)
                self._session(conn)
            except OSError:
                pass
            finally:
                conn.close()

    def _session(self, conn):
        cmds = []
        self.sessions.append(cmds)
        f = conn.makefile("rb")
        conn.sendall(b"220 broken-tls.test ESMTP\r\n")
        while True:
            line = f.readline()
            if not line:
                return
            cmd = line.rstrip(b"\r\n").decode("ascii", "replace")
            cmds.append(cmd)
            verb = cmd.split(" ", 1)[0].upper()
            if verb == "EHLO":
                conn.sendall(b"250-broken-tls.test\r\n250-STARTTLS\r\n250 8BITMIME\r\n")
            elif verb == "STARTTLS":
                conn.sendall(b"220 2.0.0 go ahead\r\n")
                f.read1(4096)  # the ClientHello
                conn.sendall(self.ALERT)
                return
            elif verb in ("MAIL", "RCPT"):
                conn.sendall(b"250 2.1.0 ok\r\n")
            elif verb == "DATA":
                conn.sendall(b"354 go\r\n")
                data = b""
                while not data.endswith(b"\r\n.\r\n"):
                    chunk = f.readline()
                    if not chunk:
                        return
                    data += chunk
                self.messages.append(data)
                conn.sendall(b"250 2.0.0 taken in clear text\r\n")
            elif verb == "QUIT":
                conn.sendall(b"221 bye\r\n")
                return
            else:
                conn.sendall(b"502 5.5.1 no\r\n")

    def stop(self):
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()


def test_opportunistic_tls_handshake_failure_falls_back_to_clear_text(sluice_factory):
    srv = BrokenTlsServer()
    try:
        # The embedded default policy: everything leaves by MX, opportunistic TLS.
        d = dns_daemon(sluice_factory, ["127.0.0.1:1"],
                       static={"mx.broken.test": ["127.0.0.1:%d" % srv.port]},
                       static_mx={"broken.test": [(10, "mx.broken.test")]}, retry='"1h"')
        qid = submit(d, "a@contoso.com", ["x@broken.test"], "tls breaks")
        entry = states(d, qid, ["Delivered"])
        assert "taken in clear text" in detail(entry).get("reply", ""), entry
        assert len(srv.messages) == 1 and b"Subject: tls breaks" in srv.messages[0]
        assert len(srv.sessions) >= 2, srv.sessions
        assert "STARTTLS" in srv.sessions[0], "the first session should have tried TLS"
        assert "STARTTLS" not in srv.sessions[-1], srv.sessions
        assert "trying again without STARTTLS" in d.stderr()
    finally:
        srv.stop()


def test_a_held_queue_accepts_and_delivers_nothing(sluice_factory):
    sink = Sink().start()
    try:
        d = two_mx(sluice_factory, sink.port, sink.port, queue_extra="hold = true\n")
        qid = submit(d, "a@contoso.com", ["x@two.test"], "held")
        time.sleep(2.5)  # two scheduler ticks and more
        assert sink.messages == [] and sink.ehlos == [], "a held queue delivered"
        assert state_names(d.queue_json(qid)) == ["Pending"]
        assert "queue: on hold" in d.stderr()
        # Lifted (a restart reads [queue]): it goes.
        d.stop()
        d.edit_config("hold = true\n", "")
        d.start()
        sink.wait(1)
        states(d, qid, ["Delivered"])
    finally:
        sink.stop()
