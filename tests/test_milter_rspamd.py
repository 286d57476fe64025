"""rspamd as a milter (its proxy worker with `milter = yes`, self-scanning)
behind sluice's content_filter agent: one focused test. rspamd runs with a
private config dir over Debian's defaults, loopback only, its DNS pointed
at a closed port (no network), and reports with X-Spamd-Result on every
message. A GTUBE message is rejected with rspamd's own reply; a clean one
passes with rspamd's header added."""

import os
import shutil
import subprocess

import pytest

from helpers.daemon import relay
from helpers.milter import wait_port
from helpers.ports import free_port
from helpers.smtp import check

RSPAMD = shutil.which("rspamd")
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

RULES = """version = 1
[domains]
accepted = ["contoso.com"]

[[connector]]
name = "inside"
address_spaces = ["--"]
smart_hosts = ["hop.test"]
"""


@pytest.fixture(scope="module")
def rspamd(tmp_path_factory):
    if RSPAMD is None:
        pytest.skip("rspamd is not installed (scripts/test installs it)")
    base = tmp_path_factory.mktemp("rspamd")
    conf = base / "conf"
    for d in ("override.d", "local.d"):
        (conf / d).mkdir(parents=True)
    for d in ("run", "db", "log"):
        (base / d).mkdir()
    proxy = free_port()
    (conf / "override.d" / "worker-normal.inc").write_text(
        'bind_socket = "127.0.0.1:%d";\ncount = 1;\n' % free_port())
    (conf / "override.d" / "worker-controller.inc").write_text(
        'bind_socket = "127.0.0.1:%d";\ncount = 1;\n' % free_port())
    (conf / "override.d" / "worker-proxy.inc").write_text(
        'bind_socket = "127.0.0.1:%d";\nmilter = yes;\ntimeout = 60s;\ncount = 1;\n'
        'upstream "local" {\n  default = yes;\n  self_scan = yes;\n}\n' % proxy)
    (conf / "local.d" / "options.inc").write_text(
        'dns {\n  nameserver = ["127.0.0.1:1"];\n  timeout = 1s;\n  retransmits = 1;\n}\n')
    (conf / "local.d" / "logging.inc").write_text('type = "console";\nlevel = "error";\n')
    (conf / "local.d" / "milter_headers.conf").write_text('use = ["x-spamd-result"];\nskip_local = false;\nskip_authenticated = false;\n')
    proc = subprocess.Popen(
        [RSPAMD, "-f", "-u", "root", "-g", "root", "-c", "/etc/rspamd/rspamd.conf",
         "--var=LOCAL_CONFDIR=%s" % conf, "--var=RUNDIR=%s" % (base / "run"),
         "--var=DBDIR=%s" % (base / "db"), "--var=LOGDIR=%s" % (base / "log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_port(proxy, timeout=60, proc=None)
        yield "inet:127.0.0.1:%d" % proxy
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()


def test_rspamd_rejects_gtube_and_stamps_clean_mail(sluice_factory, sinks, rspamd):
    hop = sinks()
    milter = ('[[milter]]\nname = "rspamd"\naddress = "%s"\non_failure = "tempfail"\n'
              'eom_timeout = "60s"\n' % rspamd)
    d = relay(sluice_factory, {"hop.test": hop.port}, rules_text=RULES, extra=milter)
    head = b"From: a@ok.example\r\nTo: user@contoso.com\r\nMessage-ID: <%d@ok.example>\r\nSubject: %s\r\n\r\n"
    c = d.connect()
    c.ehlo()
    c.mail("a@ok.example")
    c.rcpt("user@contoso.com")
    r = c.data(head % (1, b"gtube") + b"This is spam.\r\n" + GTUBE + b"\r\n")
    assert r.code >= 500, r
    check(r, r.code, "5.7.1")
    assert d.queue_list() == []
    assert "REJECT content_filter:" in d.stderr() and "milter rspamd refused" in d.stderr()
    c.mail("a@ok.example")
    c.rcpt("user@contoso.com")
    check(c.data(head % (2, b"hello") + b"A perfectly ordinary message.\r\n"), 250)
    got = hop.wait(1)[0]
    assert b"\r\nX-Spamd-Result: default: False" in got.data, got.data
    # The next message goes over the pooled connection (QUIT_NC, then a
    # new milter session on the same socket).
    c.mail("a@ok.example")
    c.rcpt("user@contoso.com")
    check(c.data(head % (3, b"again") + b"Another ordinary message.\r\n"), 250)
    assert b"X-Spamd-Result: default: False" in hop.wait(2)[1].data
    assert "content_filter: milter rspamd failed" not in d.stderr()
