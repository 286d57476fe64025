"""A small raw SMTP client for the black-box tests.

It talks over a plain socket so a test can pipeline, send malformed bytes
exactly as written, and read replies one at a time (multi-line aware:
"NNN-text" continues a reply, "NNN text" or "NNN" ends it).
Every blocking call has a timeout.
"""

import re
import select
import socket
import ssl
import time

CRLF = b"\r\n"
_ENH = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s|$)")


class ConnectionClosed(Exception):
    """The server closed the connection before a complete reply arrived."""


class Reply:
    """One SMTP reply: a code and its text lines (without the code)."""

    def __init__(self, code, lines, raw):
        self.code = code
        self.lines = lines
        self.raw = raw

    @property
    def text(self):
        return self.lines[0] if self.lines else ""

    @property
    def enhanced(self):
        m = _ENH.match(self.text)
        return "%s.%s.%s" % m.groups() if m else None

    @property
    def keywords(self):
        """EHLO keywords (upper case), from the lines after the first."""
        return [ln.split(" ", 1)[0].upper() for ln in self.lines[1:]]

    def keyword_line(self, keyword):
        for ln in self.lines[1:]:
            if ln.split(" ", 1)[0].upper() == keyword.upper():
                return ln
        return None

    def __repr__(self):
        return "Reply(%d, %r)" % (self.code, self.lines)


def check(reply, code, enhanced=None, contains=None):
    """Assert a reply's code (and enhanced code and text, when given)."""
    assert reply.code == code, "expected %s %s, got %r" % (code, enhanced or "", reply)
    if enhanced is not None:
        assert reply.enhanced == enhanced, "expected %s %s, got %r" % (code, enhanced, reply)
    if contains is not None:
        assert contains in " ".join(reply.lines), "expected %r in %r" % (contains, reply)
    return reply


def dot_stuff(data):
    """Dot-stuff message bytes (which must end with CRLF) and append the end of data."""
    assert data == b"" or data.endswith(CRLF), "message must end with CRLF"
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def queued_id(reply):
    """The queue id in "250 2.0.0 Ok: queued as <ID>"."""
    check(reply, 250, "2.0.0")
    m = re.search(r"queued as <?([^\s>]+)>?", " ".join(reply.lines))
    assert m, "no 'queued as ID' in %r" % reply
    return m.group(1)


class RawSMTP:
    def __init__(self, host, port, timeout=10.0, source=None):
        addr = (host, port)
        src = (source, 0) if source else None
        self.timeout = timeout
        self.sock = socket.create_connection(addr, timeout=timeout, source_address=src)
        self.buf = b""
        self.closed = False

    # -- low level -------------------------------------------------------
    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no complete reply in time; buffered: %r" % self.buf[:500])
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("no complete reply in time; buffered: %r" % self.buf[:500])
        except (ConnectionResetError, BrokenPipeError) as e:
            self.closed = True
            raise ConnectionClosed("connection reset (%s); buffered: %r" % (e, self.buf[:500]))
        if not chunk:
            self.closed = True
            raise ConnectionClosed("connection closed; buffered: %r" % self.buf[:500])
        self.buf += chunk

    def _line(self, deadline):
        while b"\n" not in self.buf:
            self._fill(deadline)
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def reply(self, timeout=None):
        """Read one (possibly multi-line) reply."""
        deadline = time.monotonic() + (timeout or self.timeout)
        lines = []
        raw = []
        code = None
        while True:
            line = self._line(deadline)
            raw.append(line + b"\n")
            assert line.endswith(b"\r"), "reply line not ended by CRLF: %r" % line
            text = line[:-1].decode("utf-8", "replace")
            assert re.match(r"^\d{3}([ -]|$)", text), "malformed reply line %r" % text
            c = int(text[:3])
            if code is None:
                code = c
            assert c == code, "code changed inside a multi-line reply: %r" % raw
            lines.append(text[4:])
            if len(text) == 3 or text[3] == " ":
                return Reply(code, lines, b"".join(raw))

    def replies(self, n, timeout=None):
        return [self.reply(timeout) for _ in range(n)]

    def cmd(self, line, timeout=None):
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.send(line + CRLF)
        return self.reply(timeout)

    def pending(self, wait=0.5):
        """Bytes that arrive within `wait` seconds without being asked for."""
        deadline = time.monotonic() + wait
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            r, _, _ = select.select([self.sock], [], [], remaining)
            if not r:
                break
            try:
                self.sock.settimeout(remaining)
                chunk = self.sock.recv(65536)
            except (socket.timeout, ssl.SSLWantReadError):
                break
            except (ConnectionResetError, BrokenPipeError):
                self.closed = True
                break
            if not chunk:
                self.closed = True
                break
            self.buf += chunk
        out, self.buf = self.buf, b""
        return out

    def wait_closed(self, timeout=5.0):
        """True when the server closes the connection within `timeout` (data read is discarded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self._fill(deadline)
            except ConnectionClosed:
                return True
            except TimeoutError:
                return False
            except (OSError, ssl.SSLError):
                return True
        return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- SMTP steps --------------------------------------------------------
    def greeting(self):
        return check(self.reply(), 220)

    def ehlo(self, name="client.test"):
        return check(self.cmd("EHLO " + name), 250)

    def starttls(self, context=None):
        check(self.cmd("STARTTLS"), 220, "2.0.0")
        assert self.buf == b"", "server sent bytes after its 220 to STARTTLS: %r" % self.buf
        if context is None:
            context = unverified_context()
        self.sock.settimeout(self.timeout)
        self.sock = context.wrap_socket(self.sock, server_hostname="edge1.test")

    def mail(self, mail_from, params="", expect=(250, "2.1.0")):
        line = "MAIL FROM:<%s>%s" % (mail_from, (" " + params) if params else "")
        r = self.cmd(line)
        if expect:
            check(r, *expect)
        return r

    def rcpt(self, to, params="", expect=(250, "2.1.5")):
        line = "RCPT TO:<%s>%s" % (to, (" " + params) if params else "")
        r = self.cmd(line)
        if expect:
            check(r, *expect)
        return r

    def data(self, message):
        """DATA, then the dot-stuffed message; returns the final reply."""
        check(self.cmd("DATA"), 354)
        self.send(dot_stuff(message))
        return self.reply()

    def send_mail(self, mail_from, rcpts, message, params=""):
        """One transaction, step by step (`params` for MAIL FROM); returns the
        final reply to the data."""
        self.mail(mail_from, params)
        for r in rcpts:
            self.rcpt(r)
        return self.data(message)


def unverified_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def verifying_context(cafile):
    """Trusts exactly the test's self-signed certificate (the name is checked by the CA match only)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def make_message(subject, body=b"Hello.\r\n", msgid=None, sender="alice@example.test",
                 to="bob@example.test", extra_headers=b""):
    """A CRLF message; body is bytes with CRLF line ends."""
    if msgid is None:
        msgid = "<%s@client.test>" % subject.replace(" ", "-")
    hdr = ("From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nMessage-ID: %s\r\n"
           "Date: Sun, 22 Nov 2026 08:00:00 +0000\r\n" % (sender, to, subject, msgid)).encode("utf-8")
    return hdr + extra_headers + b"\r\n" + body


def send_slowly(c, data, step=1, pause=0.0005):
    """Send in tiny writes (no Nagle), so the server sees the bytes in many reads."""
    import socket as _s
    c.sock.setsockopt(_s.IPPROTO_TCP, _s.TCP_NODELAY, 1)
    for i in range(0, len(data), step):
        c.sock.sendall(data[i:i + step])
        if pause:
            time.sleep(pause)
