"""The STATS line (issue 15): every `[metrics] syslog_interval` the daemon
logs its counters as RFC 5424 structured data, for boxes watched only
through syslog. A real rsyslogd (helpers.rsyslog) receives it over UDP; the
values in its file must be what the test did: sessions by listener, a
refusal by its enhanced status code, and the unlabelled counters and
levels in the `sluice@32473` element."""

import json

from helpers.rsyslog import RSYSLOGD, Rsyslog
from helpers.tools import needs_tool

import pytest

pytestmark = needs_tool(RSYSLOGD is not None, "rsyslogd not found (install the Debian package rsyslog)")

FACILITY_MAIL, SEV_INFO = 2, 6


@pytest.fixture
def rsyslog():
    r = Rsyslog().start()
    yield r
    r.stop()


def test_stats_line_carries_the_counters_into_rsyslog(rsyslog, sluice_factory):
    d = sluice_factory(syslog_target=rsyslog.target("udp"),
                       extra='[metrics]\nsyslog_interval = "1s"\n')
    listener = "127.0.0.1:%d" % d.port
    # The fixture's readiness probe was a session too.
    before = json.loads(d.cli("status", "--json").stdout)["metrics"]["sluice_sessions_total"][listener]
    for _ in range(2):
        c = d.session()
        c.cmd("QUIT")
        c.close()
    c = d.session()
    r = c.cmd("RCPT TO:<a@example.test>")  # no MAIL: refused
    assert r.code == 503, r
    c.cmd("QUIT")
    c.close()

    def stats_done(lines):
        for ln in lines:
            if ln.msgid != "STATS":
                continue
            sessions = ln.sd.get("sessions_total@32473", {}).get(listener)
            refused = ln.sd.get("rejected_total@32473", {}).get(r.enhanced)
            if sessions == str(before + 3) and refused == "1":
                return True
        return False

    lines = rsyslog.wait_for(stats_done, timeout=30)
    line = [ln for ln in lines if ln.msgid == "STATS" and stats_done([ln])][-1]
    assert (line.facility, line.severity, line.app) == (FACILITY_MAIL, SEV_INFO, "sluice"), line
    assert line.msg.startswith("counters since start"), line
    plain = line.sd["sluice@32473"]
    for name in ("syslog_dropped_total", "dns_queries_total", "dns_failures_total",
                 "dns_cache_hits_total", "policy_installs_total", "spool_segments",
                 "spool_bytes", "spool_free_bytes", "queue_oldest_message_age_seconds"):
        assert plain[name].isdigit(), (name, line)
    assert plain["policy_installs_total"] == "0"
    assert int(plain["spool_segments"]) >= 1 and int(plain["spool_free_bytes"]) > 0
    st = json.loads(d.cli("status", "--json").stdout)
    assert line.sd["policy_info@32473"] == {st["active_version"]: "1"}, line
