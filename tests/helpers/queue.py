"""Following a message through the daemon's queue: submitting one, polling
its recipients' states (`queue show --json`) and finding its DSNs in the log."""

import re
import time

from helpers.smtp import queued_id


def submit(d, mail_from, rcpts, subject):
    """One message in its own session; returns its queue id."""
    c = d.session()
    try:
        r = c.send_mail(mail_from, rcpts, b"From: <%s>\r\nSubject: %s\r\n\r\nbody\r\n"
                        % (mail_from.encode(), subject.encode()))
        return queued_id(r)
    finally:
        c.close()


def state_names(entry):
    """The recipients' state names of a `queue show --json` entry."""
    return [list(s.keys())[0] if isinstance(s, dict) else s for s in entry["states"]]


def states(d, qid, want, timeout=15):
    """Polls `queue show --json` until the recipients' states are `want`
    (each item a state name or a tuple of acceptable names)."""
    want = [w if isinstance(w, tuple) else (w,) for w in want]
    deadline = time.time() + timeout
    entry = None
    while time.time() < deadline:
        entry = d.queue_json(qid)
        names = state_names(entry)
        if len(names) == len(want) and all(n in w for n, w in zip(names, want)):
            return entry
        time.sleep(0.1)
    raise AssertionError("states of %s: %r, wanted %r" % (qid, entry and entry["states"], want))


def detail(entry, i=0):
    """The details (reason, attempts...) of recipient `i`'s state."""
    s = entry["states"][i]
    return list(s.values())[0] if isinstance(s, dict) else {}


def dsns_of(d, qid):
    """The ids of the DSNs the log says were spooled for `qid`."""
    return re.findall(r"BOUNCE qid=%s\b.* dsn=([0-9A-F]{16})" % qid, d.stderr())


def dsn_of(d, qid, timeout=10):
    """The id of the one DSN spooled for `qid` (waits for the log line)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        ids = dsns_of(d, qid)
        if ids:
            assert len(ids) == 1, ids
            return ids[0]
        time.sleep(0.1)
    raise AssertionError("no DSN logged for %s:\n%s" % (qid, d.stderr()))
