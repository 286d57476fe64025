"""`sluice queue list|show` ask the running daemon over the control socket
and report its queue's state (a delivery in progress, attempts, the next
attempt, the last reason); with no daemon they read the spool files and say
so."""
import asyncio
import json
import re
import time

from helpers.daemon import relay
from helpers.ports import free_port
from helpers.queue import states
from helpers.sink import Sink
from helpers.smtp import queued_id


class SlowSink(Sink):
    """Holds the end of data of the first message for `hold` seconds."""

    def __init__(self, hold):
        super().__init__()
        self.hold = hold

    async def handle_DATA(self, server, session, envelope):
        if self.hold:
            hold, self.hold = self.hold, 0
            await asyncio.sleep(hold)
        return await super().handle_DATA(server, session, envelope)


def listed(d, qid):
    p = d.cli("queue", "list", "--json")
    assert p.returncode == 0, p.stderr
    entries = [e for e in json.loads(p.stdout) if e["id"] == qid]
    assert len(entries) == 1, entries
    return entries[0]


def test_queue_list_shows_a_delivery_in_progress(sluice_factory, tmp_path):
    slow = SlowSink(hold=4)
    slow.ctl.start()
    try:
        d = relay(sluice_factory, {"mx.slow.test": slow.port, "mx": {"slow.test": "mx.slow.test"}})
        c = d.session()
        qid = queued_id(c.send_mail("a@contoso.com", ["x@slow.test"], b"Subject: slow\r\n\r\nbody\r\n"))
        deadline = time.time() + 3
        while time.time() < deadline and not listed(d, qid)["busy"]:
            time.sleep(0.05)
        e = listed(d, qid)
        assert e["source"] == "daemon" and e["busy"] is True, e
        assert e["states"] == ["pending"], e  # the spool has no result yet
        text = d.cli("queue", "list").stdout.decode()
        assert text.splitlines()[0].startswith("source: daemon"), text
        line = [ln for ln in text.splitlines() if ln.startswith(qid)]
        assert line and "[in delivery]" in line[0], text
        shown = d.cli("queue", "show", qid).stdout.decode()
        assert "delivery:  in progress" in shown, shown
        slow.wait(1, timeout=15)
        states(d, qid, ["Delivered"])
        assert listed(d, qid)["busy"] is False
    finally:
        slow.ctl.stop()


def test_queue_list_reports_attempts_next_attempt_and_reason(sluice_factory, tmp_path):
    dead = free_port()
    d = relay(sluice_factory, {"mx.later.test": dead, "mx": {"later.test": "mx.later.test"}},
              retry='"1h"')
    c = d.session()
    qid = queued_id(c.send_mail("a@contoso.com", ["x@later.test", "y@later.test"], b"Subject: later\r\n\r\nbody\r\n"))
    states(d, qid, ["Deferred", "Deferred"])
    t = time.time()
    e = listed(d, qid)
    assert e["source"] == "daemon" and e["busy"] is False, e
    assert e["states"] == ["deferred", "deferred"], e
    assert [r["rcpt"] for r in e["recipients"]] == ["x@later.test", "y@later.test"], e
    for r in e["recipients"]:
        assert r["state"] == "deferred" and r["attempts"] == 1, r
        assert t + 3500 < r["next_attempt"] <= t + 3601, r
        assert r["reason"], r
    text = d.cli("queue", "list").stdout.decode()
    rows = [ln.strip() for ln in text.splitlines() if ln.startswith("    ")]
    assert len(rows) == 2, text
    for row, rcpt in zip(rows, ("x@later.test", "y@later.test")):
        assert re.match(r"<%s>  deferred  \(1 attempt\(s\), next in (59|60)m\) \S" % re.escape(rcpt), row), text

    # The daemon stopped: the spool files, said so, with the same record.
    assert d.stop() == 0
    e2 = listed(d, qid)
    assert e2["source"] == "spool" and e2["busy"] is None, e2
    assert e2["recipients"] == e["recipients"], (e, e2)
    text = d.cli("queue", "list").stdout.decode()
    assert text.splitlines()[0].startswith("source: spool files (no daemon"), text
    j = d.queue_json(qid)
    assert j["source"] == "spool" and j["recipients"] == e["recipients"], j
