"""Metrics (issue 15, part 1) against the real daemon: the session counters
by listener address, as `sluice status --json` shows them in its `metrics`
object and on the `[metrics] listen` endpoint (format 0.0.4, 404 for other
paths); every other counter and level moving through a relay with real
peers (an SMTP sink with STARTTLS, a dead DNS server); an address in use at
start, and `sluice config check`. The STATS line in rsyslog is in
test_metrics_syslog.py, the Prometheus scrape in test_prometheus.py."""

import json
import os
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request

from helpers.daemon import SLUICE_BIN, relay
from helpers.ports import free_port
from helpers.smtp import check, unverified_context


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


def scrape(port, path="/metrics"):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=10) as r:
            return r.status, r.headers.get("Content-Type"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read().decode()


def sample(body, name, **labels):
    want = name + ("{" + ",".join('%s="%s"' % kv for kv in labels.items()) + "}" if labels else "") + " "
    lines = [ln for ln in body.splitlines() if ln.startswith(want)]
    assert len(lines) == 1, (want, body)
    return int(lines[0].split()[-1])


def test_metrics_endpoint_serves_the_counters_and_404s_the_rest(sluice_factory):
    mport = free_port()
    d = sluice_factory(extra='[metrics]\nlisten = "127.0.0.1:%d"\n' % mport)
    label = "%s:%d" % (d.host, d.port)
    status, ctype, body = scrape(mport)
    assert status == 200 and ctype == "text/plain; version=0.0.4", (status, ctype)
    assert "# TYPE sluice_sessions_total counter" in body
    assert "# HELP sluice_sessions_total " in body
    assert "# TYPE sluice_agent_actions_total counter" in body
    assert sample(body, "sluice_agent_actions_total", agent="sender_filter", action="rejected") == 0
    assert "# TYPE sluice_syslog_dropped_total counter" in body
    before = sample(body, "sluice_sessions_total", listener=label)
    for _ in range(2):
        c = d.session()
        c.cmd("QUIT")
        c.close()
    assert sample(scrape(mport)[2], "sluice_sessions_total", listener=label) == before + 2
    assert scrape(mport, "/")[0] == 404
    assert scrape(mport, "/metricsx")[0] == 404


def test_metrics_address_in_use_stops_the_start_naming_it(sluice_factory):
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen(1)
    port = held.getsockname()[1]
    try:
        d = sluice_factory(start=False, extra='[metrics]\nlisten = "127.0.0.1:%d"\n' % port)
        p = subprocess.run([SLUICE_BIN, "run", "--config", d.config], capture_output=True,
                           timeout=20, stdin=subprocess.DEVNULL)
        assert p.returncode != 0
        err = p.stderr.decode()
        assert ("[metrics] listen on 127.0.0.1:%d" % port) in err and "in use" in err, err
    finally:
        held.close()


def test_config_check_shows_the_metrics_section(sluice_factory):
    d = sluice_factory(start=False, extra='[metrics]\nlisten = "127.0.0.1:9"\n')
    p = d.cli("config", "check")
    assert p.returncode == 0, p.stderr
    assert '[metrics]\nlisten = "127.0.0.1:9"\nsyslog_interval = "5m"' in p.stdout.decode(), p.stdout


def test_syslog_interval_is_checked(sluice_factory):
    d = sluice_factory(start=False, extra='[metrics]\nsyslog_interval = "2s"\n')
    p = d.cli("config", "check")
    assert p.returncode == 0, p.stderr
    assert 'syslog_interval = "2s"' in p.stdout.decode(), p.stdout
    for bad in ('"0s"', '"soon"', '"-1s"'):
        d = sluice_factory(start=False, extra='[metrics]\nsyslog_interval = %s\n' % bad)
        with open(d.config, encoding="utf-8") as f:
            line = f.read().splitlines().index("syslog_interval = %s" % bad) + 1
        checked = d.cli("config", "check")
        run = subprocess.run([SLUICE_BIN, "run", "--config", d.config], capture_output=True,
                             timeout=20, stdin=subprocess.DEVNULL, cwd=d.cwd)
        for p in (checked, run):
            err = p.stderr.decode()
            assert p.returncode != 0, (bad, err)
            assert ":%d:" % line in err and "syslog_interval" in err, (bad, err)
