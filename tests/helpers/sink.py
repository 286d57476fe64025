"""The capturing next hop: an aiosmtpd server on loopback that keeps every
message the daemon delivers to it, with scripted replies where a test needs
them (to MAIL, to RCPT by address, to the end of data)."""

import time

from aiosmtpd.controller import Controller

from helpers.ports import free_port


class Captured(tuple):
    """One captured message: (mail_from, rcpts, data) as a tuple, plus
    whether it came over TLS and with which cipher."""

    def __new__(cls, mail_from, rcpts, data, tls=False, cipher=None):
        self = super().__new__(cls, (mail_from, rcpts, data))
        self.tls = tls
        self.cipher = cipher
        return self

    @property
    def mail_from(self):
        return self[0]

    @property
    def rcpts(self):
        return self[1]

    @property
    def data(self):
        return self[2]


class Sink:
    """A capturing SMTP server (aiosmtpd) on `host`:`port` (picked when not
    given). `script`: replies to the end of data, one per message, before
    it captures (then 250). `mail_reply`: the reply to every MAIL FROM.
    `rcpt_replies`: address -> replies used in turn (the last one repeats);
    `rcpt_reply`: the reply to every other RCPT (None: accept with
    `rcpt_default`). `tls_context`: offer STARTTLS with it. Call start()
    and stop(), or use the `sinks` fixture."""

    def __init__(self, host="127.0.0.1", port=None, script=(), tls_context=None, mail_reply=None,
                 rcpt_replies=None, rcpt_reply=None, rcpt_default="250 OK"):
        self.host = host
        self.port = port or free_port(host)
        self.messages = []
        self.ehlos = []  # (name, in TLS?) per EHLO
        self.rcpt_log = []  # (address, reply) per RCPT
        self.script = list(script)
        self.mail_reply = mail_reply
        self.rcpt_replies = {a: list(r) for a, r in (rcpt_replies or {}).items()}
        self.rcpt_reply = rcpt_reply
        self.rcpt_default = rcpt_default
        kw = {"tls_context": tls_context, "require_starttls": False} if tls_context else {}
        self.ctl = Controller(self, hostname=host, port=self.port, **kw)

    def start(self):
        self.ctl.start()
        return self

    def stop(self):
        self.ctl.stop()

    @property
    def rcpts_seen(self):
        """Every address given in RCPT, in order, whatever the reply."""
        return [a for a, _ in self.rcpt_log]

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        self.ehlos.append((hostname, session.ssl is not None))
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if self.mail_reply:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        script = self.rcpt_replies.get(address)
        reply = self.rcpt_reply or self.rcpt_default
        if script:
            reply = script.pop(0) if len(script) > 1 else script[0]
        self.rcpt_log.append((address, reply))
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return reply

    async def handle_DATA(self, server, session, envelope):
        if self.script:
            return self.script.pop(0)
        self.capture(session, envelope)
        return "250 2.0.0 captured"

    def capture(self, session, envelope):
        """Keeps the message of `envelope` (for subclasses that answer otherwise)."""
        self.messages.append(Captured(
            envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content or envelope.content,
            tls=session.ssl is not None, cipher=(session.ssl or {}).get("cipher")))

    def wait(self, n, timeout=15):
        """The messages, once there are at least `n` (fails after `timeout` s)."""
        deadline = time.time() + timeout
        while len(self.messages) < n and time.time() < deadline:
            time.sleep(0.05)
        assert len(self.messages) >= n, "sink on %s:%d got %d message(s), wanted %d" % (
            self.host, self.port, len(self.messages), n)
        return self.messages
