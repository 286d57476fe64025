"""The recipient directory: an LDIF and a CSV export of 10,000 generated users
installed with `sluice directory apply` over SSH (a real OpenSSH server on
loopback, forced command, export on stdin) and with `sluice directory send`
over a pseudo-terminal serial line; `sluice status` shows the directory;
mail from outside to a secondary (flat) address reaches the next hop (an
aiosmtpd sink) addressed to the primary one (seed 001's rewrite). A
malformed LDIF, a malformed CSV and an export over the capacity are refused
with the line named, and the installed directory stays (status and
rewriting unchanged). With the daemon stopped, `directory apply` installs
into the state directory and the daemon loads it at start."""
import base64
import json
import os
import shutil
import subprocess
import time

import pytest

from helpers.daemon import SLUICE_BIN, relay
from helpers.pty import PtyPair
from helpers.rules import variant_text
from helpers.smtp import check
from helpers.ssh import sshd_forcing
from helpers.tools import needs_tool

USERS = 10_000
# The capacity (engine::limits::MAX_DIRECTORY_ADDRESSES).
CAPACITY = 262_144


def ldif_export(site):
    """As ldifde writes it: version, comments, changetype, attributes of any
    case, folded lines, a base64 value, X500 proxies; then ldapsearch's
    trailer. User i: primary SMTP:user{i}@{site}.contoso.com, secondary
    smtp:user{i}@contoso.com."""
    out = ["version: 1", "# exported for the edge relay", ""]
    for i in range(USERS):
        out += ["dn: CN=User %d,OU=Users,DC=relay,DC=contoso,DC=com" % i, "changetype: add",
                "objectClass: user", "mail: user%d@%s.contoso.com" % (i, site)]
        primary = "proxyAddresses: SMTP:user%d@%s.contoso.com" % (i, site)
        if i % 3 == 0:  # folded at 40 columns
            out += [primary[:40], " " + primary[40:]]
        else:
            out.append(primary)
        secondary = "smtp:user%d@contoso.com" % i
        if i % 5 == 0:
            out.append("proxyaddresses:: " + base64.b64encode(secondary.encode()).decode())
        else:
            out.append("proxyAddresses: " + secondary)
        out += ["proxyAddresses: X500:/o=Contoso/ou=First/cn=Recipients/cn=user%d" % i, ""]
    out += ["# search result", "search: 2", "result: 0 Success", ""]
    return "\n".join(out)


def csv_export(site):
    """As csvde writes it: DN first, multi-valued cells separated by ';'."""
    rows = ["DN,objectClass,mail,proxyAddresses,targetAddress"]
    for i in range(USERS):
        rows.append('"CN=User %d,OU=Users,DC=contoso,DC=com",user,user%d@%s.contoso.com,'
                    '"SMTP:user%d@%s.contoso.com;smtp:user%d@contoso.com",' % (i, i, site, i, site, i))
    return "\r\n".join(rows) + "\r\n"


def status(d):
    p = d.cli("status", "--json")
    assert p.returncode == 0, p
    return json.loads(p.stdout)


def directory(d):
    return status(d)["directory"]["directory"]


def delivered_to(d, sink, rcpt, n):
    """Sends one message from outside to `rcpt`; the RCPT the next hop saw."""
    c = d.session()
    check(c.send_mail("someone@outside.example", [rcpt],
                      b"From: someone@outside.example\r\nTo: %s\r\nSubject: hi\r\n\r\nbody\r\n" % rcpt.encode()),
          250)
    c.close()
    m = sink.wait(n)[n - 1]
    return m[1], m[2]


def edge(sluice_factory, sinks, **kw):
    """A daemon on which 127.0.0.1 is an anonymous client and mail for the
    accepted domains goes to an aiosmtpd sink (the on-premises connector)."""
    sink = sinks()
    d = relay(sluice_factory, {"exch1.contoso.internal": sink.port, "exch2.contoso.internal": sink.port},
              rules_text=variant_text("onprem_off_loopback"), **kw)
    return d, sink


def refused(p, where, what):
    """`p` was refused naming `where` (FILE:LINE:COL) and `what`, and said
    that nothing changed (the callers check that it did not)."""
    assert p.returncode == 1, p
    err = p.stderr.decode()
    assert where in err and what in err, err
    assert "the installed directory is as it was" in err, err


@needs_tool(os.path.exists("/usr/sbin/sshd"), "OpenSSH server (Debian openssh-server) not installed")
def test_ldif_and_csv_over_ssh_rewrite_secondaries_and_bad_files_change_nothing(sluice_factory, sinks, tmp_path):
    d, sink = edge(sluice_factory, sinks)
    assert status(d)["directory"]["directory"] is None
    # Without a directory the flat address goes on as it is.
    rcpts, _ = delivered_to(d, sink, "user7@contoso.com", 1)
    assert rcpts == ["user7@contoso.com"]

    forced = "%s directory apply --config %s -" % (SLUICE_BIN, d.config)
    with sshd_forcing(forced, tmp_path) as ssh:
        p = subprocess.run(ssh + ["sluice", "directory", "apply", "-"], input=ldif_export("eu").encode(),
                           capture_output=True, timeout=120)
        assert p.returncode == 0, p
        assert b"20000 addresses of 10000 entries" in p.stdout, p.stdout
        ldif = directory(d)
        assert ldif["addresses"] == 2 * USERS and ldif["entries"] == USERS
        assert ldif["via"] == "ssh from 127.0.0.1" and len(ldif["version"]) == 16
        assert abs(ldif["installed_at"] - time.time()) < 300
        rcpts, data = delivered_to(d, sink, "user7@contoso.com", 2)
        assert rcpts == ["user7@eu.contoso.com"], "the secondary address became the primary"
        assert b"To: user7@eu.contoso.com\r\n" in data, data[:400]
        # A primary address and an address the directory does not know pass unchanged.
        assert delivered_to(d, sink, "user8@eu.contoso.com", 3)[0] == ["user8@eu.contoso.com"]
        assert delivered_to(d, sink, "nobody@contoso.com", 4)[0] == ["nobody@contoso.com"]
        # A [[rewrite]] entry of the rule file wins over the directory.
        assert delivered_to(d, sink, "johnny@contoso.com", 5)[0] == ["johnny@eu.contoso.com"]

        # The CSV export moves every user to the US site.
        p = subprocess.run(ssh + ["sluice", "directory", "apply", "-"], input=csv_export("us").encode(),
                           capture_output=True, timeout=120)
        assert p.returncode == 0, p
        csv = directory(d)
        assert csv["addresses"] == 2 * USERS and csv["version"] != ldif["version"]
        assert status(d)["directory"]["previous"]["version"] == ldif["version"]
        assert delivered_to(d, sink, "USER9999@Contoso.COM", 6)[0] == ["user9999@us.contoso.com"]

        # Bad input over the same path: the line is named, nothing changes.
        bad_ldif = ldif_export("eu").replace("proxyAddresses: smtp:user42@contoso.com",
                                             "proxyAddresses smtp:user42@contoso.com")
        line = bad_ldif.split("\n").index("proxyAddresses smtp:user42@contoso.com") + 1
        p = subprocess.run(ssh + ["sluice", "directory", "apply", "-"], input=bad_ldif.encode(),
                           capture_output=True, timeout=120)
        refused(p, "-:%d:1: error:" % line, "is not an attribute name")
        bad_csv = csv_export("eu").replace('"SMTP:user77@eu.contoso.com;', '"SMTP:user77@eu.contoso.com;"x')
        p = subprocess.run(ssh + ["sluice", "directory", "apply", "-"], input=bad_csv.encode(),
                           capture_output=True, timeout=120)
        refused(p, "-:79:", "closing quote")
    assert directory(d) == csv
    assert delivered_to(d, sink, "user42@contoso.com", 7)[0] == ["user42@us.contoso.com"]

    # Over the capacity: refused at the first address over it.
    big = tmp_path / "big.csv"
    big.write_text("mail\n" + "".join("u%d@contoso.com\n" % i for i in range(CAPACITY + 1)))
    p = d.cli("directory", "apply", str(big), timeout=120)
    refused(p, "%s:%d:1: error:" % (big, CAPACITY + 2), "at most %d addresses" % CAPACITY)
    assert d.cli("directory", "check", str(big), timeout=120).returncode == 1
    assert directory(d) == csv
    assert delivered_to(d, sink, "user1@contoso.com", 8)[0] == ["user1@us.contoso.com"]

    # A restart loads the installed directory.
    d.restart()
    assert directory(d) == csv
    assert delivered_to(d, sink, "user2@contoso.com", 9)[0] == ["user2@us.contoso.com"]


def test_check_and_apply_with_the_daemon_stopped(sluice_factory, sinks, tmp_path):
    d, sink = edge(sluice_factory, sinks)
    export = tmp_path / "users.ldif"
    export.write_text(ldif_export("eu"))
    p = d.cli("directory", "check", str(export))
    assert p.returncode == 0, p
    assert b"20000 addresses of 10000 entries" in p.stdout, p.stdout
    d.stop()
    p = d.cli("directory", "apply", str(export), timeout=120)
    assert p.returncode == 0, p
    assert b"no daemon running" in p.stdout
    p = d.cli("status")
    assert b"directory: version" in p.stdout and b"20000 addresses 10000 entries" in p.stdout, p.stdout
    d.start()
    assert directory(d)["addresses"] == 2 * USERS
    assert delivered_to(d, sink, "user3@contoso.com", 1)[0] == ["user3@eu.contoso.com"]
    # `sluice trace` shows the directory's rewrite in its log, from the
    # installed directory or from an export given with --directory.
    msg = tmp_path / "m.eml"
    msg.write_bytes(b"From: a@outside.example\r\nTo: user3@contoso.com\r\nSubject: t\r\n\r\nb\r\n")
    for extra in ([], ["--directory", str(tmp_path / "us.csv")]):
        (tmp_path / "us.csv").write_text(csv_export("us"))
        p = d.cli("trace", str(msg), "--from", "a@outside.example", "--to", "user3@contoso.com",
                  "--peer", "192.0.2.7", *extra, timeout=120)
        site = "us" if extra else "eu"
        want = "Recipient rewritten to [user3@%s.contoso.com] by the directory." % site
        assert want in p.stdout.decode(), p.stdout.decode()
        p = d.cli("trace", str(msg), "--from", "a@outside.example", "--to", "user3@contoso.com",
                  "--peer", "192.0.2.7", "--json", *extra, timeout=120)
        assert want in p.stdout.decode()


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")
def test_directory_send_over_a_serial_line(sluice_factory, sinks, tmp_path):
    pair = PtyPair(str(tmp_path / "daemon-tty"), str(tmp_path / "operator-tty"))
    try:
        d, sink = edge(sluice_factory, sinks,
                       extra='[upload]\nserial = %s\nbaud = 115200\n' % json.dumps(pair.a))
        deadline = time.monotonic() + 10
        while "serial upload: listening on" not in d.stderr():
            assert d.running() and time.monotonic() < deadline, d.stderr()
            time.sleep(0.05)
        policy = status(d)["policy"]["version"]

        def send(kind, path):
            return subprocess.run([SLUICE_BIN, kind, "send", "--serial", pair.b, str(path), "--config", d.config],
                                  stdin=subprocess.DEVNULL, capture_output=True, timeout=300, cwd=d.cwd)

        export = tmp_path / "users.ldif"
        export.write_text(ldif_export("eu"))
        p = send("directory", export)
        assert p.returncode == 0, p
        assert b"installed directory version" in p.stdout
        got = directory(d)
        assert got["addresses"] == 2 * USERS and got["via"].startswith("serial ")
        assert status(d)["policy"]["version"] == policy, "a directory is not a rule file"
        assert delivered_to(d, sink, "user5@contoso.com", 1)[0] == ["user5@eu.contoso.com"]

        # A malformed CSV over the line: the line named, nothing changed.
        bad = tmp_path / "bad.csv"
        bad.write_text("mail,proxyAddresses\nuser1@eu.contoso.com,smtp:user1@contoso.com\nnot-an-address,\n")
        p = send("directory", bad)
        assert p.returncode == 1, p
        assert b"bad.csv:3:1: error:" in p.stderr and b"not an e-mail address" in p.stderr, p.stderr
        assert directory(d) == got

        # A rule file still goes up as before, and leaves the directory be.
        rules = tmp_path / "rules.toml"
        rules.write_text(variant_text("onprem_off_loopback") + "\n# changed\n")
        p = send("rules", rules)
        assert p.returncode == 0, p
        assert b"installed policy version" in p.stdout
        assert status(d)["policy"]["version"] != policy
        assert directory(d) == got
        assert delivered_to(d, sink, "user6@contoso.com", 2)[0] == ["user6@eu.contoso.com"]
    finally:
        pair.close()
