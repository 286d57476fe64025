"""The operator's CLI (queue list / show) and the daemon's shutdown on SIGTERM/SIGINT."""

import os
import signal
import socket
import subprocess
import time

from helpers.daemon import SLUICE_BIN
from helpers.smtp import ConnectionClosed, RawSMTP, check, make_message, queued_id


def send(d, subject, rcpts, sender="alice@example.test", body=b"Hello.\r\n"):
    msg = make_message(subject, body, sender=sender)
    with d.session() as c:
        qid = queued_id(c.send_mail(sender, rcpts, msg))
        check(c.cmd("QUIT"), 221, "2.0.0")
    return qid, msg


def test_queue_list_and_show_with_daemon_stopped(sluice):
    d = sluice
    t_start = time.time()
    q1, m1 = send(d, "cli-one", ["bob@example.test"], body=b".dot\r\nline\r\n")
    q2, m2 = send(d, "cli-two", ["carol@example.test", "dave@example.test"], sender="eve@example.test")
    assert q1 != q2

    t0 = time.monotonic()
    assert d.stop() == 0, "sluice did not exit 0 on SIGTERM"
    assert time.monotonic() - t0 < 10

    entries = d.queue_list()
    assert sorted(e["id"] for e in entries) == sorted([q1, q2]), entries
    by_id = {e["id"]: e for e in entries}
    for qid, msg, sender, rcpts in ((q1, m1, "alice@example.test", ["bob@example.test"]),
                                    (q2, m2, "eve@example.test", ["carol@example.test", "dave@example.test"])):
        e = by_id[qid]
        assert e["from"] == sender, e
        assert sorted(e["rcpts"]) == rcpts, e
        assert e["size"] == len(msg), e
        assert isinstance(e["received"], int) and t_start - 5 <= e["received"] <= time.time() + 5, e
        assert isinstance(e["age"], int) and 0 <= e["age"] <= time.time() - t_start + 5, e
        assert d.queue_raw(qid) == msg

        j = d.queue_json(qid)
        for k in ("id", "from", "rcpts", "size", "received", "helo", "peer", "smtputf8", "body"):
            assert k in j, "queue show --json lacks %r: %r" % (k, j)
        assert j["id"] == qid and j["from"] == sender and sorted(j["rcpts"]) == rcpts, j
        assert j["size"] == len(msg) and j["received"] == e["received"], j
        assert j["helo"] == "client.test", j
        assert "127.0.0.1" in j["peer"], j
        assert j["smtputf8"] is False, j
        assert isinstance(j["body"], str) and j["body"] and j["body"] in msg.decode(), j

    # plain (human) listing names both
    p = d.cli("queue", "list")
    assert p.returncode == 0, p
    assert q1.encode() in p.stdout and q2.encode() in p.stdout, p.stdout

    for args in (("queue", "show", "no-such-id", "--raw"), ("queue", "show", "no-such-id", "--json"),
                 ("queue", "show", "no-such-id")):
        p = d.cli(*args)
        assert p.returncode == 1, "%s: exit %d, %r" % (args, p.returncode, p.stdout)
        if "--raw" in args:
            assert p.stdout == b"", p.stdout

    # and a daemon started again finds them
    d.start()
    assert sorted(e["id"] for e in d.queue_list()) == sorted([q1, q2])
    assert d.queue_raw(q2) == m2


def test_queue_list_empty(sluice):
    assert sluice.queue_list() == []
    assert sluice.stop() == 0
    assert sluice.queue_list() == []


def test_sigint_stops_cleanly(sluice):
    q, m = send(sluice, "sigint", ["bob@example.test"])
    sluice.signal(signal.SIGINT)
    assert sluice.proc.wait(10) == 0
    assert sluice.queue_raw(q) == m


def no_new_session(d):
    """After SIGTERM no new session starts: refused, closed, 421 4.3.2, or no greeting."""
    try:
        c = RawSMTP(d.host, d.port, timeout=2)
    except OSError:
        return True
    with c:
        try:
            r = c.reply(timeout=2)
        except (ConnectionClosed, TimeoutError, OSError):
            return True
        return (r.code, r.enhanced) == (421, "4.3.2")


def test_sigterm_during_data_lets_the_session_finish(sluice):
    d = sluice
    msg = make_message("in-flight", b"first half\r\n" * 100 + b"second half\r\n" * 100)
    half = len(msg) // 2
    c = d.session()
    with c:
        c.mail("alice@example.test")
        c.rcpt("bob@example.test")
        check(c.cmd("DATA"), 354)
        c.send(msg[:half])
        time.sleep(0.2)
        d.signal(signal.SIGTERM)
        time.sleep(0.5)
        assert d.running(), "sluice exited with a session in the middle of DATA:\n" + d.stderr()
        # The listeners close once the signal is handled: soon, not at once.
        deadline = time.monotonic() + 5
        while not no_new_session(d) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert no_new_session(d), "a new session was greeted after SIGTERM"
        c.send(msg[half:] + b".\r\n")
        try:
            r = c.reply(timeout=10)
        except ConnectionClosed as e:
            raise AssertionError("the message in flight was dropped silently: %s" % e)
        # The message in transfer finishes: it is accepted, not cut off.
        assert (r.code, r.enhanced) == (250, "2.0.0"), r
        try:
            c.send(b"QUIT\r\n")
            q = c.reply(timeout=5)
            assert q.code in (221, 421), q
        except (ConnectionClosed, OSError):
            pass
    assert d.proc.wait(10) == 0, "sluice did not exit 0 after its last session"
    entries = d.queue_list()
    qid = queued_id(r)
    assert [e["id"] for e in entries] == [qid], entries
    assert d.queue_raw(qid) == msg


def test_sigterm_exits_promptly_without_sessions(sluice):
    t0 = time.monotonic()
    assert sluice.stop() == 0
    assert time.monotonic() - t0 < 10
    # the port is closed
    s = socket.socket()
    s.settimeout(2)
    try:
        assert s.connect_ex((sluice.host, sluice.port)) != 0
    finally:
        s.close()


def start_fails(d, what):
    """`sluice run` with this config must exit non-zero, soon, and say why on stderr."""
    try:
        p = subprocess.run([SLUICE_BIN, "run", "--config", d.config], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=10)
    except subprocess.TimeoutExpired:
        raise AssertionError("sluice started (ran for 10 s) with %s" % what)
    assert p.returncode != 0, "sluice started with %s" % what
    assert p.stderr.strip(), "no error message for %s" % what


def test_bad_configs_are_refused(sluice_factory):
    d = sluice_factory(start=False)
    good = open(d.config, encoding="utf-8").read()
    cases = {
        "a TOML syntax error": good + "\n[limits\n",
        "an unknown bare_line_endings": good.replace("[queue]", '[limits]\nbare_line_endings = "maybe"\n\n[queue]'),
        "a bad duration": good.replace("[queue]", '[limits]\ncommand_timeout = "soon"\n\n[queue]'),
        "a bad size": good.replace("[queue]", '[limits]\nmax_message_size = "lots"\n\n[queue]'),
        "a missing certificate": good.replace("starttls = false", "starttls = true").replace(
            "[queue]", '[tls]\ncertificate = "nonexistent.pem"\nkey = "nonexistent.key"\n\n[queue]'),
    }
    for what, text in cases.items():
        with open(d.config, "w", encoding="utf-8") as f:
            f.write(text)
        start_fails(d, what)
    with open(d.config, "w", encoding="utf-8") as f:
        f.write(good)
    d.start()


def test_port_in_use_is_refused(sluice_factory):
    d = sluice_factory(start=False)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", d.port))
    s.listen(1)
    try:
        start_fails(d, "its port taken")
    finally:
        s.close()


def test_relative_paths_are_relative_to_the_config_file(sluice_factory, tmp_path):
    d = sluice_factory(start=False, tls=True)
    text = open(d.config, encoding="utf-8").read()
    for absolute, relative in ((d.spool_dir, "spool"), (d.state_dir, "state"),
                               (d.cert, "cert.pem"), (d.cert.replace("cert.pem", "key.pem"), "key.pem")):
        text = text.replace('"%s"' % absolute, '"%s"' % relative)
    with open(d.config, "w", encoding="utf-8") as f:
        f.write(text)
    # run from elsewhere: paths must not follow the working directory
    other = tmp_path / "elsewhere"
    other.mkdir()
    d.cwd = str(other)
    d.start()
    q, m = send(d, "relative", ["bob@example.test"])
    assert d.queue_raw(q) == m
    assert os.path.isdir(d.spool_dir) and os.listdir(d.spool_dir), "spool not beside the config file"
    assert not os.path.exists(other / "spool")


def test_sigterm_with_an_idle_session(sluice):
    """After SIGTERM an idle session is either served to its end or told 421 4.3.2;
    once it has gone, the daemon exits 0."""
    d = sluice
    c = d.session()
    with c:
        d.signal(signal.SIGTERM)
        time.sleep(0.5)
        try:
            r = c.cmd("MAIL FROM:<alice@example.test>", timeout=5)
            assert (r.code, r.enhanced) in ((250, "2.1.0"), (421, "4.3.2")), r
            if r.code == 421:
                assert c.wait_closed(5)
            else:
                check(c.cmd("QUIT"), 221, "2.0.0")
        except ConnectionClosed:
            raise AssertionError("the session was cut without a 421")
    assert d.proc.wait(10) == 0


def test_run_with_no_config_uses_the_embedded_default(tmp_path):
    """The README's first command: `sluice run` with no file listens on
    127.0.0.1:2525 and spools under ./sluice-data/, and `queue list` with no
    file finds what it spooled."""
    probe = socket.socket()
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the daemon does
    try:
        probe.bind(("127.0.0.1", 2525))
    except OSError as e:
        if os.environ.get("CI"):
            raise AssertionError("127.0.0.1:2525 is taken on the CI machine: %s" % e)
        import pytest
        pytest.skip("127.0.0.1:2525 is in use here")
    finally:
        probe.close()
    proc = subprocess.Popen([SLUICE_BIN, "run"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 15
        c = None
        while c is None:
            try:
                c = RawSMTP("127.0.0.1", 2525, timeout=5)
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode(errors="replace")
                assert time.time() < deadline, "nothing listens on 127.0.0.1:2525"
                time.sleep(0.1)
        with c:
            check(c.reply(), 220)
            check(c.cmd("EHLO client.test"), 250)
            msg = make_message("embedded default", b"Hello.\r\n", sender="alice@example.test")
            # An address literal on loopback: the queue's attempt asks no DNS server.
            qid = queued_id(c.send_mail("alice@example.test", ["bob@[127.0.0.1]"], msg))
            check(c.cmd("QUIT"), 221, "2.0.0")
        assert (tmp_path / "sluice-data" / "spool").is_dir(), os.listdir(tmp_path)
        out = subprocess.run([SLUICE_BIN, "queue", "list", "--json"], cwd=tmp_path,
                             capture_output=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert qid in out.stdout.decode(), out.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(15) == 0
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_into_closed_pipe(args, cwd=ROOT):
    """Run sluice with standard output a pipe nobody reads any more (as
    `sluice ... | head` leaves it): every write fails with EPIPE."""
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([SLUICE_BIN, *args], stdin=subprocess.DEVNULL, stdout=w,
                           stderr=subprocess.PIPE, timeout=30, cwd=cwd)
    finally:
        os.close(w)
    return p.returncode, p.stderr.decode("utf-8", "replace")


TRACE = ["trace", "tests/policy/to_johnny.eml", "--from", "someone@example.org",
         "--to", "johnny@contoso.com", "--peer", "192.0.2.1", "--rules", "config/rules.toml"]


def test_a_closed_standard_output_is_no_panic():
    for args, rc in ((TRACE, 0), (TRACE + ["--json"], 0), (TRACE + ["--snapshots"], 0),
                     (TRACE[:5] + ["x@gmail.com"] + TRACE[6:], 1),  # rejected: its status is kept
                     (["pipeline", "--rules", "config/rules.toml"], 0),
                     (["rules", "check", "config/rules.toml"], 0),
                     (["help"], 0)):
        got, err = run_into_closed_pipe(args)
        assert "panicked" not in err and "Broken pipe" not in err, (args, err)
        assert got == rc, (args, got, err)


def test_queue_commands_into_a_closed_pipe(sluice):
    d = sluice
    qid, _ = send(d, "pipe", ["bob@example.test"])
    assert d.stop() == 0
    for args in (["queue", "list"], ["queue", "list", "--json"], ["queue", "show", qid],
                 ["queue", "show", qid, "--json"], ["queue", "show", qid, "--raw"]):
        got, err = run_into_closed_pipe([*args, "--config", d.config], cwd=d.cwd)
        assert "panicked" not in err and "Broken pipe" not in err, (args, err)
        assert got == 0, (args, got, err)
