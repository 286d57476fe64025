"""`sluice report`: the daemon's mail-flow history and the MX plan.

Known traffic goes through a running daemon (some for each location, some
rewritten) and `report --json` must count it; synthetic syslog files of two
relays reproduce seed 001's 70/30 example with `--from-log`; damaged
history files and foreign syslog lines are skipped and said so; the
`--html` page is rendered by a real headless Chromium."""

import datetime
import json
import os
import shutil
import subprocess
import time
import zlib

from helpers.daemon import SLUICE_BIN
from helpers.smtp import check
from helpers.tools import needs_tool

# Seed 001's names: a flat domain and two location domains.
RULES = """version = 1

[domains]
accepted = ["contoso.com", "eu.contoso.com", "us.contoso.com"]

[[connector]]
name = "internet"
address_spaces = ["*"]

[[rewrite]]
direction = "inbound"
map = { %s }
"""
US_USERS = ["u%d@contoso.com" % i for i in range(1, 9)]
EU_USERS = ["e%d@contoso.com" % i for i in range(1, 4)]
MAP = ", ".join('"%s" = "%s"' % (a, a.replace("@", "@us.")) for a in US_USERS) + ", " + ", ".join(
    '"%s" = "%s"' % (a, a.replace("@", "@eu.")) for a in EU_USERS)
REPORT = '[report]\nlocal_domains = ["us.contoso.com"]\nflush_interval = "1s"\n'


def report(args, config=None, expect_rc=0):
    """Runs `sluice report ARGS --json` and returns the document."""
    cmd = [SLUICE_BIN, "report", *args, "--json"] + (["--config", config] if config else [])
    p = subprocess.run(cmd, capture_output=True, timeout=60)
    assert p.returncode == expect_rc, (p.returncode, p.stderr.decode(errors="replace"))
    return json.loads(p.stdout) if expect_rc == 0 else p


def rows(doc):
    """(domain, location) -> (messages, redirected) of a report."""
    return {(r["domain"], r["location"]): (r["messages"], r["redirected"]) for r in doc["destinations"]}


def layout(doc, name):
    return next(l for l in doc["plan"]["layouts"] if l["name"] == name)


def flow_daemon(sluice_factory):
    return sluice_factory(rules_text=RULES % MAP, queue_extra="hold = true\n", extra=REPORT)


def send_known_traffic(d):
    """8 messages rewritten to us (one with two us recipients), 3 rewritten
    to eu (redirected: eu is not this relay's), 2 addressed to eu directly,
    1 for an unmapped flat address. Returns the message sizes sent."""
    c = d.session()
    body = b"Subject: flow\r\n\r\n" + b"x" * 100 + b"\r\n"
    for u in US_USERS[:7]:
        check(c.send_mail("s@example.test", [u], body), 250)
    check(c.send_mail("s@example.test", US_USERS[6:8], body), 250)
    for u in EU_USERS:
        check(c.send_mail("s@example.test", [u], body), 250)
    for _ in range(2):
        check(c.send_mail("s@example.test", ["x@eu.contoso.com"], body), 250)
    check(c.send_mail("s@example.test", ["other@contoso.com"], body), 250)
    c.close()
    return len(body)


EXPECTED = {
    ("contoso.com", "us.contoso.com"): (8, 0),
    ("contoso.com", "eu.contoso.com"): (3, 3),
    ("eu.contoso.com", "eu.contoso.com"): (2, 0),
    ("contoso.com", "contoso.com"): (1, 0),
}


def wait_report(d, messages, timeout=15):
    """The history's report once it counts `messages` (flushed every 1 s)."""
    deadline = time.monotonic() + timeout
    while True:
        doc = report([], d.config)
        if doc["totals"]["messages"] == messages or time.monotonic() > deadline:
            return doc
        time.sleep(0.3)


def test_history_counts_known_traffic(sluice_factory):
    d = flow_daemon(sluice_factory)
    size = send_known_traffic(d)
    doc = wait_report(d, 14)
    assert doc["source"] == "history" and doc["skipped"] == [], doc
    assert rows(doc) == EXPECTED, doc
    for r in doc["destinations"]:
        assert r["bytes"] == r["messages"] * size, r  # the size as received, once per message
    assert doc["totals"]["redirected"] == 3
    assert abs(doc["totals"]["redirected_share"] - 3 / 14) < 1e-9
    # 11 rewritten messages: the plan's arithmetic, but too few to decide
    plan = doc["plan"]
    assert plan["messages"] == 11 and plan["decision"] == "too_few", plan
    assert plan["recommendation"] is None
    assert abs(layout(doc, "load_shared")["redirected_share"] - 0.5) < 1e-9
    assert abs(layout(doc, "single_primary")["redirected_share"] - 3 / 11) < 1e-9
    assert layout(doc, "single_primary")["primary"] == "us.contoso.com"
    # the ROUTE lines say which recipients were redirected, and the same
    # syslog read back gives the same table
    assert d.stop() == 0
    log = d.stderr()
    assert log.count(" redirected=yes ") == 3, log
    logfile = os.path.join(d.workdir, "sluice.stderr")
    from_log = report(["--from-log", logfile])
    assert from_log["destinations"] == report([], d.config)["destinations"]
    assert from_log["lines"]["unmatched"] == 0
    text = subprocess.run([SLUICE_BIN, "report", "--config", d.config], capture_output=True, timeout=30)
    assert text.returncode == 0
    assert b"too few data to decide: 11 rewritten message(s), at least 100 are needed" in text.stdout


def test_counts_survive_a_restart_by_the_shutdown_flush(sluice_factory):
    d = flow_daemon(sluice_factory)
    d.edit_config('flush_interval = "1s"', 'flush_interval = "1h"')
    d.restart()
    send_known_traffic(d)
    assert d.stop() == 0  # the shutdown flush writes what the hour did not
    assert rows(report([], d.config)) == EXPECTED
    # 400 days are kept: a file of 400 days ago goes at the next flush,
    # one of 399 days ago stays
    today = open(day_file(d.state_dir, 0), "rb").read()
    for age in (399, 400, 450):
        with open(day_file(d.state_dir, age), "wb") as f:
            f.write(today)
    d.start()
    send_known_traffic(d)
    assert d.stop() == 0
    twice = {k: (m * 2, r * 2) for k, (m, r) in EXPECTED.items()}
    assert rows(report([], d.config)) == twice
    assert os.path.exists(day_file(d.state_dir, 399))
    assert not os.path.exists(day_file(d.state_dir, 400))
    assert not os.path.exists(day_file(d.state_dir, 450))


def day_file(state_dir, days_ago):
    day = datetime.datetime.now(datetime.timezone.utc).date() - datetime.timedelta(days=days_ago)
    return os.path.join(state_dir, "history", day.isoformat() + ".day")


def test_corrupt_and_truncated_history_files(sluice_factory):
    d = flow_daemon(sluice_factory)
    send_known_traffic(d)
    assert d.stop() == 0
    today = day_file(d.state_dir, 0)
    good = open(today, "rb").read()
    # yesterday: truncated; the day before: not a history file; three days
    # ago: a valid file under another day's name
    with open(day_file(d.state_dir, 1), "wb") as f:
        f.write(good[:len(good) // 2])
    with open(day_file(d.state_dir, 2), "wb") as f:
        f.write(b"hello, not a history file\n")
    shutil.copy(today, day_file(d.state_dir, 3))
    doc = report([], d.config)
    skipped = {os.path.basename(s["file"]): s["reason"] for s in doc["skipped"]}
    assert len(skipped) == 3, doc["skipped"]
    assert "checksum" in skipped[os.path.basename(day_file(d.state_dir, 1))]
    assert "bad magic" in skipped[os.path.basename(day_file(d.state_dir, 2))]
    assert "another name" in skipped[os.path.basename(day_file(d.state_dir, 3))]
    assert rows(doc) == EXPECTED  # today still counted
    text = subprocess.run([SLUICE_BIN, "report", "--config", d.config], capture_output=True, timeout=30)
    assert b"skipped " + day_file(d.state_dir, 1).encode() + b": checksum mismatch" in text.stdout
    # today's own file damaged (one octet flipped): the daemon sets it
    # aside, says so, and keeps counting from zero
    damaged = bytearray(good)
    damaged[12] ^= 0xFF
    open(today, "wb").write(bytes(damaged))
    d.start()
    c = d.session()
    check(c.send_mail("s@example.test", ["u1@contoso.com"], b"Subject: again\r\n\r\nx\r\n"), 250)
    c.close()
    assert d.stop() == 0
    assert "is damaged (checksum mismatch" in d.stderr()
    doc = report(["--days", "1"], d.config)
    assert rows(doc) == {("contoso.com", "us.contoso.com"): (1, 0)}, doc
    assert [os.path.basename(s["file"]) for s in doc["skipped"]] == [os.path.basename(today) + ".damaged"]


def test_bad_report_options_and_config(sluice_factory, tmp_path):
    p = report(["--days", "0"], expect_rc=2)
    assert b"--days" in p.stderr
    p = report(["--from-log", str(tmp_path / "missing.log")], expect_rc=2)
    assert b"missing.log" in p.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[report]\nlocal_domains = ["us.contoso.com", "not a domain"]\nflush = "1s"\n')
    p = subprocess.run([SLUICE_BIN, "config", "check", str(bad)], capture_output=True, timeout=30)
    assert p.returncode != 0
    err = p.stdout + p.stderr
    assert b":2:" in err and b"not a domain" in err, err
    assert b":3:1:" in err and b"flush" in err, err


# -- synthetic syslog of two relays -------------------------------------------

def relay_lines(host, fmt, start_qid, msgs, day="2026-11-22"):
    """Syslog lines of one relay: `msgs` is a list of (orig, final,
    redirected, size); fmt 'rfc5424' or 'rsyslog' (RSYSLOG_FileFormat)."""
    out = []
    for i, (orig, final, red, size) in enumerate(msgs):
        qid = "%s%06X" % (host.upper()[:2], start_qid + i)
        ts = "%sT08:%02d:%02d.000000Z" % (day, (i // 60) % 60, i % 60)
        receive = "from=<s@example.org> rcpts=1 size=%d peer=192.0.2.9:4000 tls=true result=NoAction" % size
        route = "to=<%s> orig=<%s> connector=internet next_hop=mx:%s %sroute of the connector" % (
            final, orig, final.split("@")[1], "redirected=yes " if red else "")
        for kind, text in (("RECEIVE", receive), ("ROUTE", route)):
            sd = '[sluice@32473 qid="%s" msgid="<%d@example.org>"]' % (qid, i)
            if fmt == "rfc5424":
                out.append("<22>1 %s %s sluice 4242 %s %s %s" % (ts, host, kind, sd, text))
            else:
                out.append("%s %s sluice[4242]: %s %s %s" % (ts.replace("Z", "+00:00"), host, kind, sd, text))
        out.append("%s %s sluice[4242]: SEND [sluice@32473 qid=\"%s\"] to=<%s> 250 ok" % (ts, host, qid, final))
    return out


def seed_logs(tmp_path, n=100, days=("2026-11-22",)):
    """Two relays with load-shared MX: each receives half of `n` messages a
    day for contoso.com, 70 % for us and 30 % for eu; each redirects what
    is for the other, which receives it again (unrewritten)."""
    us, eu = [], []
    for k, day in enumerate(days):
        half = n // 2
        us_n, eu_n = half * 70 // 100, half * 30 // 100
        at_us = [("u@contoso.com", "u@us.contoso.com", False, 1000)] * us_n + \
                [("e@contoso.com", "e@eu.contoso.com", True, 2000)] * eu_n
        at_eu = [("u@contoso.com", "u@us.contoso.com", True, 1000)] * us_n + \
                [("e@contoso.com", "e@eu.contoso.com", False, 2000)] * eu_n
        legs_at_eu = [("e@eu.contoso.com", "e@eu.contoso.com", False, 2000)] * eu_n
        legs_at_us = [("u@us.contoso.com", "u@us.contoso.com", False, 1000)] * us_n
        us += relay_lines("us1", "rfc5424", k * 10000, at_us + legs_at_us, day)
        eu += relay_lines("eu1", "rsyslog", k * 10000, at_eu + legs_at_eu, day)
    foreign = ["Nov 22 08:00:00 us1 postfix/smtpd[77]: connect from unknown[192.0.2.1]",
               "garbage without structure", "<13>1 2026-11-22T08:00:00Z us1 cron 1 - - tick"]
    p_us, p_eu = tmp_path / "us1.log", tmp_path / "eu1.log"
    p_us.write_text("\n".join(us[:10] + foreign + us[10:]) + "\n")
    p_eu.write_text("\n".join(eu) + "\n" + "\xff\xfe not utf-8\n")
    return p_us, p_eu


def test_seed_70_30_from_the_logs_of_two_relays(tmp_path):
    p_us, p_eu = seed_logs(tmp_path, 200)
    doc = report(["--from-log", str(p_us), str(p_eu)])
    assert doc["source"] == "logs"
    assert doc["lines"]["foreign"] == 4 and doc["lines"]["unmatched"] == 0, doc["lines"]
    # a SEND line per message: 100 + 70 legs at us1, 100 + 30 legs at eu1
    assert doc["lines"]["other_sluice"] == 300, doc["lines"]
    r = rows(doc)
    assert r[("contoso.com", "us.contoso.com")] == (140, 70)
    assert r[("contoso.com", "eu.contoso.com")] == (60, 30)
    plan = doc["plan"]
    assert plan["messages"] == 200
    assert [(l["location"], l["share"]) for l in plan["locations"]] == [
        ("us.contoso.com", 0.7), ("eu.contoso.com", 0.3)]
    # the seed: load-shared equal MX redirects 50 %, a US primary 30 %
    assert abs(layout(doc, "load_shared")["redirected_share"] - 0.50) < 1e-9
    assert abs(layout(doc, "single_primary")["redirected_share"] - 0.30) < 1e-9
    assert abs(layout(doc, "per_location")["redirected_share"] - 0.30) < 1e-9
    # bytes crossing: load-shared half of all (140*1000 + 60*2000) / 2,
    # a US primary the EU mail
    assert layout(doc, "load_shared")["crossing_bytes"] == 130000
    assert layout(doc, "single_primary")["crossing_bytes"] == 120000
    assert plan["decision"] == "recommended"
    rec = plan["recommendation"]
    assert rec["layout"] == "per_location"
    shared = [(m["preference"], m["relay_of"]) for m in rec["mx"] if m["domain"] == "contoso.com"]
    assert shared == [(10, "us.contoso.com"), (20, "eu.contoso.com")]
    # today's actual redirection (load-shared): 100 of the 200 + 100 legs
    assert doc["totals"]["redirected"] == 100 and doc["totals"]["messages"] == 300
    text = subprocess.run([SLUICE_BIN, "report", "--from-log", str(p_us), str(p_eu)],
                          capture_output=True, timeout=30).stdout.decode()
    assert "Recommended: one primary per location" in text, text
    assert "contoso.com.\tIN MX 10\tRELAY(us.contoso.com)" in text, text
    assert "4 foreign lines skipped" in text, text


def test_too_few_logs_to_decide(tmp_path):
    p_us, p_eu = seed_logs(tmp_path, 20)
    doc = report(["--from-log", str(p_us), str(p_eu)])
    assert doc["plan"]["messages"] == 20
    assert doc["plan"]["decision"] == "too_few" and doc["plan"]["recommendation"] is None
    assert "too few data" in doc["plan"]["why"]


def test_only_foreign_lines(tmp_path):
    f = tmp_path / "other.log"
    f.write_bytes(b"".join(b"Nov 22 08:00:%02d h postfix/qmgr[1]: line %d\n" % (i, i) for i in range(50)))
    doc = report(["--from-log", str(f)])
    assert doc["lines"]["read"] == 50 and doc["lines"]["foreign"] == 50
    assert doc["destinations"] == [] and doc["plan"]["decision"] == "no_rewritten_mail"


# -- the HTML page in a real browser -------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def png_pixels(path):
    """The RGB(A) pixels of an 8-bit PNG (non-interlaced), decoded with zlib."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, hdr = 8, b"", None
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            hdr = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h = int.from_bytes(hdr[0:4], "big"), int.from_bytes(hdr[4:8], "big")
    depth, ctype = hdr[8], hdr[9]
    assert depth == 8 and ctype in (2, 6), (depth, ctype)
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(idat)
    stride = w * bpp
    prev = bytearray(stride)
    rows_ = []
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows_.append(bytes(line))
        prev = line
    return w, h, [tuple(r[i:i + 3]) for r in rows_ for i in range(0, stride, bpp)]


@needs_tool(CHROMIUM, "chromium not installed (Debian package chromium)")
def test_html_page_renders_in_headless_chromium(tmp_path):
    p_us, p_eu = seed_logs(tmp_path, 200, days=("2026-11-20", "2026-11-21", "2026-11-22"))
    page = tmp_path / "report.html"
    p = subprocess.run([SLUICE_BIN, "report", "--from-log", str(p_us), str(p_eu), "--html", str(page)],
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    html = page.read_text()
    assert "<script" not in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              "--user-data-dir=%s" % (tmp_path / "profile")]
    dom = subprocess.run(common + ["--dump-dom", page.as_uri()], capture_output=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = dom.stdout.decode()
    # 3 days x 2 locations: 6 bars; one point of the redirected share a day
    assert text.count('class="bar"') == 6, text[:3000]
    assert text.count('class="point"') == 3
    shot = tmp_path / "shot.png"
    s = subprocess.run(common + ["--screenshot=%s" % shot, "--window-size=900,800", page.as_uri()],
                       capture_output=True, timeout=120)
    assert s.returncode == 0 and shot.exists(), s.stderr[-2000:]
    w, h, px = png_pixels(shot)
    assert (w, h) == (900, 800)
    colours = set(px)
    # the locations' bar colours and the red line are on the screen
    assert (0x1F, 0x77, 0xB4) in colours and (0xFF, 0x7F, 0x0E) in colours, len(colours)
    assert sum(1 for c in px if c == (0x1F, 0x77, 0xB4)) > 1000
