"""A test milter on Debian's python3-milter (libmilter underneath), run by
/usr/bin/python3: `testmilter.py SOCKET LOGFILE`.

What it does with a message is asked for by the message itself, in its
`X-Milter-Do` header field (comma-separated words):
  addheader, insheader, chgheader (Subject), delheader (X-Delete-Me),
  replbody, addrcpt:ADDR, delrcpt:ADDR, chgfrom:ADDR, quarantine,
  reject, tempfail, replycode, discard, die-body (exits in a body
  callback), die-eom, hang (never answers end of message), spam (adds
  X-Spam: Yes).
A sender containing `reject-mail` is refused at MAIL, a recipient
containing `reject-rcpt` (550 5.1.1) or `tempfail-rcpt` at RCPT, the HELO
name `reject-helo.test` at HELO. Each message's view (macros, envelope, headers, body) is appended to
LOGFILE as one JSON line, so tests can see what sluice sent."""

import json
import os
import sys
import time

import Milter

SOCKET, LOG = sys.argv[1], sys.argv[2]
MACROS = ["j", "{daemon_name}", "{client_addr}", "{client_port}", "i", "{mail_addr}", "{rcpt_addr}", "v"]


class TestMilter(Milter.Base):
    def __init__(self):
        self.macros = {}
        self.rcpts = []
        self.headers = []
        self.text = b""
        self.do = []
        self.sender = None

    def _grab(self):
        for m in MACROS:
            v = self.getsymval(m)
            if v is not None:
                self.macros.setdefault(m, v)

    def connect(self, hostname, family, hostaddr):
        self.client = [hostname, str(hostaddr)]
        self._grab()
        return Milter.CONTINUE

    def hello(self, name):
        self.helo = name
        if name == "reject-helo.test":
            self.setreply("550", "5.7.1", "HELO refused by milter")
            return Milter.REJECT
        return Milter.CONTINUE

    def envfrom(self, f, *args):
        self.sender = f
        self.rcpts = []
        self.headers = []
        self.text = b""
        self.do = []
        self._grab()
        if "reject-mail" in f:
            self.setreply("550", "5.7.1", "Sender refused by milter")
            return Milter.REJECT
        return Milter.CONTINUE

    def envrcpt(self, to, *args):
        if "reject-rcpt" in to:
            self.setreply("550", "5.1.1", "Recipient refused by milter")
            return Milter.REJECT
        if "tempfail-rcpt" in to:
            return Milter.TEMPFAIL
        self.rcpts.append(to)
        self.macros.setdefault("{rcpt_addr}", self.getsymval("{rcpt_addr}"))
        return Milter.CONTINUE

    def header(self, name, value):
        self.headers.append([name, value])
        if name.lower() == "x-milter-do":
            self.do = [w.strip() for w in value.split(",") if w.strip()]
        return Milter.CONTINUE

    def eoh(self):
        self._grab()
        return Milter.CONTINUE

    def body(self, chunk):
        self.text += chunk
        if "die-body" in self.do:
            os._exit(3)
        return Milter.CONTINUE

    def eom(self):
        self._grab()
        with open(LOG, "a") as f:
            f.write(json.dumps({"macros": self.macros, "from": self.sender, "rcpts": self.rcpts,
                                "headers": self.headers, "body": self.text.decode("latin-1"),
                                "do": self.do}) + "\n")
        do = self.do
        if "die-eom" in do:
            os._exit(3)
        if "hang" in do:
            time.sleep(3600)
        if "addheader" in do:
            self.addheader("X-Test-Milter", "added")
        if "spam" in do:
            self.addheader("X-Spam", "Yes")
        if "insheader" in do:
            self.addheader("X-First", "inserted", 0)
        if "chgheader" in do:
            self.chgheader("Subject", 1, "[milter] changed")
        if "delheader" in do:
            self.chgheader("X-Delete-Me", 1, "")
        if "replbody" in do:
            self.replacebody(b"The milter replaced this body.\r\n")
        for w in do:
            if w.startswith("addrcpt:"):
                self.addrcpt("<%s>" % w[8:])
            elif w.startswith("delrcpt:"):
                self.delrcpt("<%s>" % w[8:])
            elif w.startswith("chgfrom:"):
                self.chgfrom("<%s>" % w[8:])
        if "quarantine" in do:
            self.quarantine("test quarantine")
        if "reject" in do:
            return Milter.REJECT
        if "tempfail" in do:
            return Milter.TEMPFAIL
        if "replycode" in do:
            self.setreply("554", "5.7.0", "Milter says no")
            return Milter.REJECT
        if "discard" in do:
            return Milter.DISCARD
        return Milter.ACCEPT


if __name__ == "__main__":
    Milter.factory = TestMilter
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGBODY | Milter.ADDRCPT | Milter.DELRCPT
                     | Milter.CHGHDRS | Milter.QUARANTINE | Milter.CHGFROM)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    Milter.runmilter("sluicetest", SOCKET, timeout=600)
