"""Durability: kill -9 the daemon while clients send; nothing acknowledged is lost,
nothing is spooled twice or torn."""

import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from helpers.smtp import ConnectionClosed, RawSMTP, dot_stuff, make_message, queued_id

CLIENTS = 8
MAX_PER_CLIENT = 80
ROUNDS = 3
# 300 KiB and 600 KiB pass the spool's CHUNK (256 KiB): those messages are
# written as Chunk records before their Message record, and a kill can fall
# between them.
SIZES = [300, 4000, 20000, 70000] * 3 + [300000, 600000]  # 1 in 7 chunked


def test_kill9_loses_nothing_acknowledged(sluice_factory):
    d = sluice_factory()
    seed = int(os.environ.get("SLUICE_CRASH_SEED", time.time()))
    print("crash test seed", seed)
    rnd = random.Random(seed)

    stop = threading.Event()
    lock = threading.Lock()
    sent = {}      # msgid -> (bytes, from, rcpts): the end of data was (about to be) sent
    acked = {}     # msgid -> queue id, from the final 250
    anomalies = []  # replies other than the expected ones, with the client's view
    disconnects = [0]

    def run_client(n):
        r = random.Random(seed * 100 + n)
        c = None
        seq = 0
        sender = "client%d@example.test" % n
        while not stop.is_set() and seq < MAX_PER_CLIENT:
            try:
                if c is None:
                    c = RawSMTP(d.host, d.port, timeout=5)
                    g = c.reply()
                    e = c.cmd("EHLO client.test") if g.code == 220 else g
                    if e.code != 250:
                        with lock:
                            anomalies.append(("connect", None, e))
                        c.close()
                        c = None
                        time.sleep(0.05)
                        continue
                seq += 1
                msgid = "<crash-%d-%d-%d@client.test>" % (seed, n, seq)
                rcpts = ["r%d-%d@example.test" % (n, i) for i in range(1 + seq % 3)]
                size = r.choice(SIZES)
                body = b"." + b"".join(b"%d.%d line %06d %s\r\n" % (n, seq, i, b"." * (i % 7))
                                       for i in range(size // 30))
                msg = make_message("crash %d %d" % (n, seq), body, msgid=msgid, sender=sender)
                steps = [c.cmd("MAIL FROM:<%s>" % sender)]
                for rc in rcpts:
                    steps.append(c.cmd("RCPT TO:<%s>" % rc))
                steps.append(c.cmd("DATA"))
                expected = [250] * (1 + len(rcpts)) + [354]
                if [s.code for s in steps] != expected:
                    with lock:
                        anomalies.append(("envelope", msgid, steps))
                    c.close()
                    c = None
                    time.sleep(0.05)
                    continue
                with lock:
                    sent[msgid] = (msg, sender, rcpts)
                c.send(dot_stuff(msg))
                final = c.reply()
                if final.code == 250:
                    qid = queued_id(final)
                    with lock:
                        acked[msgid] = qid
                else:
                    with lock:
                        anomalies.append(("data", msgid, final))
                    c.close()
                    c = None
                time.sleep(r.uniform(0.02, 0.12))
            except (ConnectionClosed, OSError, TimeoutError):
                with lock:
                    disconnects[0] += 1
                if c is not None:
                    c.close()
                c = None
                time.sleep(0.05)
            except Exception as ex:  # a malformed reply, a 250 without a queue id, ...
                with lock:
                    anomalies.append(("exception", None, repr(ex)))
                if c is not None:
                    c.close()
                c = None
                time.sleep(0.05)
        if c is not None:
            try:
                c.cmd("QUIT", timeout=2)
            except Exception:
                pass
            c.close()

    threads = [threading.Thread(target=run_client, args=(n,), daemon=True) for n in range(CLIENTS)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    mid_run_listing = None
    for i in range(ROUNDS):
        time.sleep(rnd.uniform(0.3, 1.5))
        if i == 1:
            # the CLI reads the spool while the daemon writes it
            mid_run_listing = d.queue_list()
        d.kill9()
        time.sleep(rnd.uniform(0.0, 0.2))
        d.start()
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads), "client threads did not finish"
    assert d.stop() == 0, "sluice did not exit 0 on SIGTERM"
    print("sent %d, acknowledged %d, disconnects %d, %.1fs"
          % (len(sent), len(acked), disconnects[0], time.monotonic() - t0))

    # no 5xx to a valid message, ever; 4xx are allowed only as transient answers
    def is_hard(a):
        if a[0] == "exception":
            return True
        replies = a[2] if isinstance(a[2], list) else [a[2]]
        return any(x.code >= 500 for x in replies)
    hard = [a for a in anomalies if is_hard(a)]
    assert not hard, "5xx replies or protocol errors on valid mail: %r" % hard[:5]
    if anomalies:
        print("transient 4xx replies:", anomalies[:10])
    assert len(acked) >= CLIENTS, "too few messages acknowledged to mean anything: %d" % len(acked)

    entries = d.queue_list()
    ids = [e["id"] for e in entries]
    # what was listed while the daemon ran is still there, the same
    by_id = {e["id"]: e for e in entries}
    for e in mid_run_listing:
        assert e["id"] in by_id, "listed while running, gone after: %r" % e
        assert (by_id[e["id"]]["from"], by_id[e["id"]]["rcpts"], by_id[e["id"]]["size"]) == (
            e["from"], e["rcpts"], e["size"]), e
    assert len(ids) == len(set(ids)), "an id is listed twice"

    with ThreadPoolExecutor(4) as ex:
        raws = dict(zip(ids, ex.map(d.queue_raw, ids)))

    spooled = {}  # msgid -> queue id
    for e in entries:
        raw = raws[e["id"]]
        m = re.search(rb"^Message-ID: (<crash-[^>]+>)\r$", raw, re.M)
        assert m, "spooled message %s is not one a client sent (or is torn): %r" % (e["id"], raw[:300])
        msgid = m.group(1).decode()
        assert msgid in sent, "spooled message %s (%s) was never sent" % (e["id"], msgid)
        assert msgid not in spooled, "message %s spooled twice: %s and %s" % (msgid, spooled[msgid], e["id"])
        spooled[msgid] = e["id"]
        msg, sender, rcpts = sent[msgid]
        assert raw == msg, "spooled message %s (%s) is not whole: %d bytes, sent %d" % (
            e["id"], msgid, len(raw), len(msg))
        assert e["from"] == sender and sorted(e["rcpts"]) == sorted(rcpts), e
        assert e["size"] == len(msg), e

    lost = sorted(set(acked) - set(spooled))
    assert not lost, "%d acknowledged messages lost, e.g. %s" % (len(lost), lost[:5])
    wrong_id = [(m, q, spooled[m]) for m, q in acked.items() if spooled[m] != q]
    assert not wrong_id, "acknowledged under another id: %r" % wrong_id[:5]
    assert len(spooled) >= len(acked)
    print("spooled %d, of which %d without acknowledgement" % (len(spooled), len(spooled) - len(acked)))


def test_torn_tail_is_dropped_and_the_spool_stays_appendable(sluice):
    """Junk after the last record (a write torn by a crash) must not lose anything
    acknowledged, nor make later messages vanish on the next recovery."""
    d = sluice
    kept = {}
    with d.session() as c:
        for i in range(3):
            m = make_message("before-tear-%d" % i, b"x" * (i * 5000) + b"\r\n")
            kept[queued_id(c.send_mail("alice@example.test", ["bob@example.test"], m))] = m
    d.kill9()
    files = [os.path.join(d.spool_dir, f) for f in os.listdir(d.spool_dir)]
    files = [f for f in files if os.path.isfile(f)]
    assert files, "nothing in the spool directory"
    newest = max(files, key=lambda f: (os.path.getmtime(f), os.path.getsize(f)))
    with open(newest, "ab") as f:
        # a record head promising more than follows, then random junk
        f.write(b"S" + (5000).to_bytes(4, "little") + b"\x01\x02\x03\x04" + b"torn" * 10)
        f.write(random.Random(7).randbytes(300))
    d.start()
    listed = {e["id"] for e in d.queue_list()}
    assert listed == set(kept), (listed, set(kept))
    for q, m in kept.items():
        assert d.queue_raw(q) == m
    with d.session() as c:
        m = make_message("after-tear")
        q = queued_id(c.send_mail("alice@example.test", ["carol@example.test"], m))
        kept[q] = m
    d.kill9()
    d.start()
    assert {e["id"] for e in d.queue_list()} == set(kept)
    for q, m in kept.items():
        assert d.queue_raw(q) == m


def test_kill9_at_rest_leaves_no_torn_tail_and_the_restart_trims_the_unused_end(sluice):
    """The writer keeps zeros written ahead of its last frame; a crash leaves them
    in the segment. The next start must read every message, call nothing torn or
    damaged, and cut the zeros (no new record is ever appended to that file)."""
    d = sluice
    kept = {}
    with d.session() as c:
        for i in range(5):
            m = make_message("at-rest-%d" % i, b"y" * (i * 3000) + b"\r\n")
            kept[queued_id(c.send_mail("alice@example.test", ["bob@example.test"], m))] = m
    segs = [os.path.join(d.spool_dir, f) for f in os.listdir(d.spool_dir) if f.startswith("seg-")]
    assert segs, os.listdir(d.spool_dir)
    newest = max(segs)
    size_running = os.path.getsize(newest)
    with open(newest, "rb") as f:
        tail = f.read()[-4096:]
    assert tail == b"\0" * 4096, "no preallocated zeros at the end of %s" % newest
    d.kill9()
    before = d.stderr()
    d.start()
    log = d.stderr()[len(before):]
    assert "torn" not in log and "damaged" not in log, log
    assert "recovered 5 message(s)" in log, log
    trimmed = os.path.getsize(newest)
    assert trimmed < size_running, (trimmed, size_running)
    with open(newest, "rb") as f:
        assert not f.read().endswith(b"\0" * 64), "zeros left after the last frame"
    assert {e["id"] for e in d.queue_list()} == set(kept)
    for q, m in kept.items():
        assert d.queue_raw(q) == m
