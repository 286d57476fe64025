"""The daemon applies the policy in session: the recipient filter at RCPT,
the pipeline at the end of DATA (hop count, attachment reject), and stores
each recipient's route with the message. Same code path as `sluice trace`."""
import os
import re

from smtpclient import check, queued_id

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE = os.path.join(HERE, "..", "config", "rules.toml")


def policy_daemon(sluice_factory, tmp_path):
    # The sample, with exchange-onprem moved off 127.0.0.1 so that a client
    # on 127.0.0.1 is anonymous (Internet) and 127.0.0.2 is exchange-online.
    text = open(SAMPLE, encoding="utf-8").read()
    text = text.replace('client_ips = ["127.0.0.1/32", "::1/128"]', 'client_ips = ["127.0.0.9/32"]')
    rules = tmp_path / "rules.toml"
    rules.write_text(text, encoding="utf-8")
    d = sluice_factory(start=False)
    cfg = open(d.config, encoding="utf-8").read()
    with open(d.config, "w", encoding="utf-8") as f:
        f.write('rules = "%s"\n' % rules + cfg)
    d.start()
    return d


def send(c, mail_from, rcpts, msg):
    c.mail(mail_from)
    for r in rcpts:
        c.rcpt(r)
    c.send(b"DATA\r\n")
    check(c.reply(), 354)
    body = msg if msg.endswith(b"\r\n") else msg + b"\r\n"
    c.send(re.sub(rb"(?m)^\.", b"..", body) + b".\r\n")
    return c.reply()


def test_relay_is_refused_for_anonymous_clients_and_routes_are_stored(sluice_factory, tmp_path):
    d = policy_daemon(sluice_factory, tmp_path)
    c = d.session()
    c.mail("someone@example.org")
    c.rcpt("x@gmail.com", expect=(554, "5.7.1"))
    c.rcpt("johnny@contoso.com")
    c.send(b"DATA\r\n")
    check(c.reply(), 354)
    c.send(b"From: someone@example.org\r\nTo: johnny@contoso.com\r\nX-MS-Exchange-Organization-SCL: -1\r\n"
           b"Subject: hi\r\n\r\nhello\r\n.\r\n")
    r = c.reply()
    check(r, 250, "2.0.0")
    qid = queued_id(r)
    entry = d.queue_json(qid)
    assert entry["rcpts"] == ["johnny@contoso.com"]
    route = entry["routes"][0]
    assert route["rcpt"] == "johnny@eu.contoso.com", entry["routes"]
    assert route["connector"] == "onprem"
    assert route["next_hop"] == {"SmartHosts": ["exch1.contoso.internal:25", "exch2.contoso.internal:25"]}
    kinds = [list(e.keys())[0] for e in entry["edits"]]
    assert "Remove" in kinds and "Address" in kinds, entry["edits"]
    # The stored bytes are the original ones; edits are spliced at delivery.
    assert b"X-MS-Exchange-Organization-SCL" in d.queue_raw(qid)
    c.close()


def test_hop_count_is_refused_in_session(sluice_factory, tmp_path):
    d = policy_daemon(sluice_factory, tmp_path)
    c = d.session()
    hops = b"".join(b"Received: from h%d.example by x; Sun, 22 Nov 2026 08:00:00 +0000\r\n" % i for i in range(31))
    r = send(c, "a@example.org", ["user@contoso.com"], hops + b"Subject: loop\r\n\r\nbody\r\n")
    check(r, 554, "5.4.14")
    r = send(c, "a@example.org", ["user@contoso.com"], hops.split(b"\r\n", 1)[1] + b"Subject: ok\r\n\r\nbody\r\n")
    check(r, 250)
    assert len(d.queue_list()) == 1


def mime(name, filler=b""):
    return (b"From: a@example.org\r\nTo: user@contoso.com\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"B\"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\n"
            + filler + b"hi\r\n--B\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Disposition: attachment; filename=\"" + name + b"\"\r\n\r\nTVqQAAMAAAAEAAAA\r\n--B--\r\n")


def test_executable_attachments_are_refused_from_outside(sluice_factory, tmp_path):
    d = policy_daemon(sluice_factory, tmp_path)
    c = d.session()
    check(send(c, "a@example.org", ["user@contoso.com"], mime(b"invoice.exe")), 550, "5.7.1")
    check(send(c, "a@example.org", ["user@contoso.com"], mime(b"invoice.pdf")), 250)
    # A message large enough to reach the spool in chunks before the end:
    # the attachment comes after 600 KiB of text and is still found.
    filler = (b"x" * 76 + b"\r\n") * 8000
    check(send(c, "a@example.org", ["user@contoso.com"], mime(b"payload.SCR", filler)), 550, "5.7.1")
    assert len(d.queue_list()) == 1
    # From the organisation (exchange-online, 127.0.0.2) the rule does not apply.
    o = d.connect(source="127.0.0.2")
    o.ehlo()
    check(send(o, "user@contoso.com", ["x@gmail.com"], mime(b"tool.exe")), 250)
    o.close()


def test_cmt_from_exchange_online_is_stamped_and_routed_on_premises(sluice_factory, tmp_path):
    d = policy_daemon(sluice_factory, tmp_path)
    o = d.connect(source="127.0.0.2")
    o.ehlo()
    r = send(o, "user@contoso.com", ["x@gmail.com"], b"From: user@contoso.com\r\nSubject: out\r\n\r\nhi\r\n")
    check(r, 250)
    entry = d.queue_json(queued_id(r))
    assert entry["routes"][0]["connector"] == "onprem", entry["routes"]
    assert {"Add": {"name": "X-MS-Exchange-Organization-CentralizedMailFlowOverrideSet", "value": ""}} in entry["edits"]
    o.close()
