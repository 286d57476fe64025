"""Metrics (issue 15, part 1) against the real daemon: the session counters
by listener address, as `sluice status --json` shows them in its `metrics`
object. (The /metrics listener, the STATS line and the Prometheus test are
still to come.)"""

import json
import time


def metrics(d):
    p = d.cli("status", "--json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)["metrics"]


def test_sessions_are_counted_by_listener_in_status(sluice_factory):
    d = sluice_factory()
    label = "%s:%d" % (d.host, d.port)
    before = metrics(d)["sluice_sessions_total"].get(label, 0)
    for _ in range(3):
        c = d.session()
        c.cmd("QUIT")
        c.close()
    m = metrics(d)
    assert m["sluice_sessions_total"][label] == before + 3, m
    deadline = time.monotonic() + 10
    while metrics(d)["sluice_sessions"].get(label, 0) != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metrics(d)["sluice_sessions"].get(label, 0) == 0, metrics(d)
