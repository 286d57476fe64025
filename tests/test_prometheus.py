"""A real Prometheus server (Debian package `prometheus`) scrapes the
daemon's `[metrics] listen` endpoint on loopback, every second, into its own
storage in a temp dir; the values it stores, asked of its HTTP API
(`/api/v1/query`), must equal what the test sent: N messages received from
the inbound connector `lab`, M refusals with enhanced status code 5.5.1, and
N + M + 1 sessions on the listener (the fixture's readiness probe is one).

One focused test: Prometheus is a heavy peer. It waits by polling, with a
generous overall timeout, never by a fixed sleep."""

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from helpers.ports import free_port
from helpers.smtp import check
from helpers.tools import needs_tool

PROMETHEUS = shutil.which("prometheus") or (
    "/usr/bin/prometheus" if os.path.exists("/usr/bin/prometheus") else None)
pytestmark = needs_tool(PROMETHEUS is not None,
                        "prometheus not found (install the Debian package prometheus)")

RULES = """
[[inbound]]
name = "lab"
kind = "organization"
client_ips = ["127.0.0.1/32"]
"""

# Prometheus starts, scrapes and answers within this on a loaded 2-core box.
PATIENCE = 120


class Prometheus:
    """prometheus in the foreground on a picked loopback port, scraping
    `target` every second, its storage and log under `workdir`."""

    def __init__(self, workdir, target):
        self.dir = os.path.join(str(workdir), "prometheus")
        os.makedirs(self.dir)
        self.port = free_port()
        conf = os.path.join(self.dir, "prometheus.yml")
        with open(conf, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                    "scrape_configs:\n  - job_name: sluice\n"
                    "    static_configs:\n      - targets: ['%s']\n" % target)
        self.log = os.path.join(self.dir, "prometheus.log")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [PROMETHEUS, "--config.file=" + conf,
                 "--storage.tsdb.path=" + os.path.join(self.dir, "data"),
                 "--web.listen-address=127.0.0.1:%d" % self.port],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)

    def query(self, q):
        """The instant vector for `q`: [(labels, value)], or None while
        Prometheus is not answering yet."""
        url = "http://127.0.0.1:%d/api/v1/query?%s" % (self.port, urllib.parse.urlencode({"query": q}))
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                body = json.load(r)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            assert self.proc.poll() is None, "prometheus exited:\n" + self.text()
            return None
        assert body["status"] == "success", body
        return [(s["metric"], float(s["value"][1])) for s in body["data"]["result"]]

    def text(self):
        with open(self.log, "rb") as f:
            return f.read().decode("utf-8", "replace")[-5000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def prometheus_for(tmp_path):
    made = []

    def make(target):
        p = Prometheus(tmp_path, target)
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()


def test_prometheus_stores_what_the_test_sent(sluice_factory, prometheus_for):
    mport = free_port()
    d = sluice_factory(rules_text=RULES, extra='[metrics]\nlisten = "127.0.0.1:%d"\n' % mport)
    listener = "127.0.0.1:%d" % d.port
    n, m = 3, 2
    for i in range(n):
        c = d.session()
        check(c.send_mail("a@example.test", ["b@example.test"], b"Subject: %d\r\n\r\nbody\r\n" % i), 250)
        c.cmd("QUIT")
        c.close()
    for _ in range(m):
        c = d.session()
        check(c.cmd("RCPT TO:<b@example.test>"), 503, "5.5.1")  # no MAIL yet
        c.cmd("QUIT")
        c.close()

    prom = prometheus_for("127.0.0.1:%d" % mport)
    want = {
        'sluice_messages_received_total{connector="lab"}': n,
        'sluice_rejected_total{status="5.5.1"}': m,
        'sluice_sessions_total{listener="%s"}' % listener: n + m + 1,
        'up{job="sluice"}': 1,
    }

    def stored():
        got = {}
        for q in want:
            r = prom.query(q)
            got[q] = r[0][1] if r else None
        return got

    deadline = time.monotonic() + PATIENCE
    got = stored()
    while got != want and time.monotonic() < deadline:
        time.sleep(0.5)
        got = stored()
    assert got == want, (got, prom.text())
    # The labels Prometheus stored are ours, plus its job and instance.
    (labels, _), = prom.query('sluice_messages_received_total{connector="lab"}')
    assert labels == {"__name__": "sluice_messages_received_total", "connector": "lab",
                      "job": "sluice", "instance": "127.0.0.1:%d" % mport}, labels
