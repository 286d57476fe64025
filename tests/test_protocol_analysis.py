"""Protocol analysis: a per-client-address score from behaviour over
recent sessions; past the threshold the address is refused at connect with
421 4.7.0 for `block_for`. Clients are told apart by their loopback source
address (127.0.0.0/8 all routes to lo)."""

import json

from helpers.smtp import RawSMTP, check

RULES = """
[domains]
accepted = ["example.test"]

[[inbound]]
name = "inside"
kind = "organization"
client_ips = ["127.0.0.5/32"]

[[connector]]
name = "internet"
address_spaces = ["*"]

[protocol_analysis]
threshold = 5
block_for = "1h"
"""


def misbehave(d, source, bad=5):
    """A session from `source` with `bad` unknown commands (500 each)."""
    with RawSMTP(d.host, d.port, source=source) as c:
        c.greeting()
        c.ehlo()
        for _ in range(bad):
            check(c.cmd("FROB"), 500)
        check(c.cmd("QUIT"), 221)
        # The session's last score (no MAIL) comes after the 221, before
        # the close: `sluice trace` asks another thread.
        c.wait_closed(5)


def greeted(d, source):
    """The first reply to a connection from `source`."""
    with RawSMTP(d.host, d.port, source=source) as c:
        return c.reply()


def counts(d):
    p = d.cli("status", "--json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)["agents"]["protocol_analysis"]


def test_a_client_past_the_threshold_is_refused_at_connect(sluice_factory):
    d = sluice_factory(rules_text=RULES)
    misbehave(d, "127.0.0.4")
    check(greeted(d, "127.0.0.4"), 421, "4.7.0", "blocked")
    # Another address is not.
    check(greeted(d, "127.0.0.8"), 220)
    assert counts(d)["deferred"] == 1
    log = d.stderr()
    assert "protocol_analysis: 127.0.0.4 reached the threshold" in log, log
    assert "protocol_analysis: 127.0.0.4:" in log   # the REJECT line names the agent


def test_the_block_survives_a_policy_install(sluice_factory, tmp_path):
    d = sluice_factory(rules_text=RULES)
    misbehave(d, "127.0.0.4")
    newer = tmp_path / "newer.toml"
    newer.write_text(RULES.replace("threshold = 5", "threshold = 6"))
    p = d.cli("rules", "apply", str(newer))
    assert p.returncode == 0, p.stderr
    check(greeted(d, "127.0.0.4"), 421, "4.7.0")


def test_forged_helo_and_sessions_without_mail_score(sluice_factory):
    d = sluice_factory(rules_text=RULES)
    # HELO with our own name: 5 points at once.
    with RawSMTP(d.host, d.port, source="127.0.0.9") as c:
        c.greeting()
        check(c.cmd("HELO edge1.test"), 250)
        check(c.cmd("QUIT"), 221)
    check(greeted(d, "127.0.0.9"), 421, "4.7.0")
    # Five connections that never send MAIL: one point each.
    for _ in range(5):
        with RawSMTP(d.host, d.port, source="127.0.0.10") as c:
            c.greeting()
            check(c.cmd("QUIT"), 221)
            c.wait_closed(5)
    check(greeted(d, "127.0.0.10"), 421, "4.7.0")


def test_pipelining_without_ehlo_and_refused_recipients_score(sluice_factory):
    d = sluice_factory(rules_text=RULES)
    with RawSMTP(d.host, d.port, source="127.0.0.11") as c:
        c.greeting()
        # HELO then MAIL in one write: PIPELINING was never offered (2 points).
        c.send(b"HELO client.test\r\nMAIL FROM:<a@client.test>\r\n")
        check(c.reply(), 250)
        check(c.reply(), 250)
        # Relaying refused: 554 5.7.1, one point each.
        for i in range(3):
            check(c.cmd("RCPT TO:<x%d@elsewhere.test>" % i), 554, "5.7.1")
    check(greeted(d, "127.0.0.11"), 421, "4.7.0")


def test_originating_sessions_are_not_scored(sluice_factory):
    d = sluice_factory(rules_text=RULES)
    misbehave(d, "127.0.0.5", bad=8)
    check(greeted(d, "127.0.0.5"), 220)


def test_disabled_protocol_analysis_does_nothing(sluice_factory):
    for rules in [RULES + '[[agent]]\nname = "protocol_analysis"\nenabled = false\n',
                  RULES.replace("[protocol_analysis]", "[protocol_analysis]\nenabled = false")]:
        d = sluice_factory(rules_text=rules)
        misbehave(d, "127.0.0.4", bad=8)
        check(greeted(d, "127.0.0.4"), 220)
        assert counts(d)["deferred"] == 0


def test_trace_shows_the_running_daemons_score(sluice_factory, tmp_path):
    d = sluice_factory(rules_text=RULES)
    misbehave(d, "127.0.0.4", bad=3)   # 3 protocol errors + a session without mail
    msg = tmp_path / "m.eml"
    msg.write_bytes(b"From: a@client.test\r\nSubject: x\r\n\r\nHi.\r\n")
    args = ["trace", str(msg), "--from", "a@client.test", "--to", "bob@example.test",
            "--rules", d.workdir + "/rules.toml"]
    p = d.cli(*args, "--peer", "127.0.0.4", "--json")
    assert p.returncode == 0, p.stderr
    pa = json.loads(p.stdout)["protocol_analysis"]
    assert pa["enabled"] and pa["threshold"] == 5 and pa["score"] == 4 and pa["blocked_for"] is None, pa
    # The 5th point blocks and restarts the score: one more error and a
    # session without mail follow.
    misbehave(d, "127.0.0.4", bad=2)
    p = d.cli(*args, "--peer", "127.0.0.4")
    out = p.stdout.decode()
    assert "protocol_analysis: on, threshold 5, block_for 3600s (running daemon: score 2, blocked for 3" in out, out


def test_rset_floods_and_bare_line_endings_score(sluice_factory):
    d = sluice_factory(rules_text=RULES)
    with RawSMTP(d.host, d.port, source="127.0.0.12") as c:
        c.greeting()
        c.ehlo()
        c.mail("a@client.test")          # a session with mail: no "without mail" point
        for _ in range(10):              # ten RSETs are allowed
            check(c.cmd("RSET"), 250)
    check(greeted(d, "127.0.0.12"), 220)
    with RawSMTP(d.host, d.port, source="127.0.0.12") as c:
        c.greeting()
        c.ehlo()
        c.mail("a@client.test")
        for _ in range(13):              # three beyond the ten: 2 points each
            check(c.cmd("RSET"), 250)
    check(greeted(d, "127.0.0.12"), 421, "4.7.0")
    # Bare LF in DATA (refused, 550 5.6.11): 3 points each.
    for _ in range(2):
        with RawSMTP(d.host, d.port, source="127.0.0.13") as c:
            c.greeting()
            c.ehlo()
            c.mail("a@client.test")
            c.rcpt("bob@example.test")
            check(c.cmd("DATA"), 354)
            c.send(b"Subject: x\r\n\r\nbare\nline\r\n.\r\n")
            check(c.reply(), 550, "5.6.11")
    check(greeted(d, "127.0.0.13"), 421, "4.7.0")
