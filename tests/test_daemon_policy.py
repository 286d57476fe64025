"""The daemon applies the policy in session: the recipient filter at RCPT,
the pipeline at the end of DATA (hop count, attachment reject), and stores
each recipient's route with the message. Same code path as `sluice trace`."""
import ssl

from helpers.certs import CLIENT_EXT, make_ca, make_leaf
from helpers.rules import replace, variant_text
from helpers.smtp import check, queued_id


def policy_daemon(sluice_factory, tmp_path):
    # The sample, with exchange-onprem moved off 127.0.0.1 so that a client
    # on 127.0.0.1 is anonymous (Internet) and 127.0.0.2 is exchange-online.
    return sluice_factory(rules_text=variant_text("onprem_off_loopback"))


def test_relay_is_refused_for_anonymous_clients_and_routes_are_stored(sluice_factory, tmp_path):
    d = policy_daemon(sluice_factory, tmp_path)
    c = d.session()
    c.mail("someone@example.org")
    c.rcpt("x@gmail.com", expect=(554, "5.7.1"))
    c.rcpt("johnny@contoso.com")
    r = c.data(b"From: someone@example.org\r\nTo: johnny@contoso.com\r\nX-MS-Exchange-Organization-SCL: -1\r\n"
               b"Subject: hi\r\n\r\nhello\r\n")
    check(r, 250, "2.0.0")
    qid = queued_id(r)
    entry = d.queue_json(qid)
    assert entry["rcpts"] == ["johnny@contoso.com"]
    route = entry["routes"][0]
    assert route["rcpt"] == "johnny@eu.contoso.com", entry["routes"]
    assert route["connector"] == "onprem"
    assert route["next_hop"] == {"SmartHosts": ["exch1.contoso.internal:25", "exch2.contoso.internal:25"]}
    # Our Received: comes first (spliced in on the way out), naming the
    # client, us, the protocol and the queue id.
    first = entry["edits"][0]["Prepend"]["field"]
    assert first.startswith("Received: from client.test ([127.0.0.1])\r\n\tby edge1.test (sluice) with ESMTP id %s" % qid), first
    assert "for <johnny@contoso.com>" in first and first.endswith("+0000\r\n"), first
    kinds = [list(e.keys())[0] for e in entry["edits"]]
    assert "Remove" in kinds and "Address" in kinds, entry["edits"]
    # The stored bytes are the original ones; edits are spliced at delivery.
    assert b"X-MS-Exchange-Organization-SCL" in d.queue_raw(qid)
    c.close()


def test_hop_count_is_refused_in_session(sluice_factory, tmp_path):
    d = policy_daemon(sluice_factory, tmp_path)
    c = d.session()
    hops = b"".join(b"Received: from h%d.example by x; Sun, 22 Nov 2026 08:00:00 +0000\r\n" % i for i in range(31))
    r = c.send_mail("a@example.org", ["user@contoso.com"], hops + b"Subject: loop\r\n\r\nbody\r\n")
    check(r, 554, "5.4.14")
    r = c.send_mail("a@example.org", ["user@contoso.com"], hops.split(b"\r\n", 1)[1] + b"Subject: ok\r\n\r\nbody\r\n")
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
    check(c.send_mail("a@example.org", ["user@contoso.com"], mime(b"invoice.exe")), 550, "5.7.1")
    check(c.send_mail("a@example.org", ["user@contoso.com"], mime(b"invoice.pdf")), 250)
    # A message large enough to reach the spool in chunks before the end:
    # the attachment comes after 600 KiB of text and is still found.
    filler = (b"x" * 76 + b"\r\n") * 8000
    check(c.send_mail("a@example.org", ["user@contoso.com"], mime(b"payload.SCR", filler)), 550, "5.7.1")
    assert len(d.queue_list()) == 1
    # From the organisation (exchange-online, 127.0.0.2) the rule does not apply.
    o = d.connect(source="127.0.0.2")
    o.ehlo()
    check(o.send_mail("user@contoso.com", ["x@gmail.com"], mime(b"tool.exe")), 250)
    o.close()


def test_cmt_from_exchange_online_is_stamped_and_routed_on_premises(sluice_factory, tmp_path):
    d = policy_daemon(sluice_factory, tmp_path)
    o = d.connect(source="127.0.0.2")
    o.ehlo()
    r = o.send_mail("user@contoso.com", ["x@gmail.com"], b"From: user@contoso.com\r\nSubject: out\r\n\r\nhi\r\n")
    check(r, 250)
    entry = d.queue_json(queued_id(r))
    assert entry["routes"][0]["connector"] == "onprem", entry["routes"]
    assert {"Add": {"name": "X-MS-Exchange-Organization-CentralizedMailFlowOverrideSet", "value": ""}} in entry["edits"]
    o.close()


def client_pki(d, names=(("good", "mail.protection.outlook.com"), ("other", "mx.example.org"))):
    """A test CA and client certificates it signs, by default one for the name
    the sample's exchange-online connector expects and one for another name."""
    ca = make_ca(d, "ca", "sluice test CA", key_usage="keyCertSign")
    return ca[0], {tag: make_leaf(d, ca, tag, name, ext=CLIENT_EXT) for tag, name in names}


def cert_daemon(sluice_factory, tmp_path, names=None, replace_=()):
    """The sample rules with the organization's IP range moved off loopback
    (so only a client certificate can attribute a session), `replace`d
    (old, new) texts, and TLS that asks for client certificates from a test
    CA: the daemon, the certificates by tag, and a function that opens a TLS
    session with one (or none)."""
    pki = tmp_path / "pki"
    pki.mkdir()
    ca, certs = client_pki(pki, names) if names else client_pki(pki)
    d = sluice_factory(tls=True, client_ca=ca,
                       rules_text=variant_text("onprem_off_loopback", *(replace(o, n) for o, n in replace_)))

    def tls_session(cert):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if cert:
            ctx.load_cert_chain(*cert)
        c = d.session()
        c.starttls(ctx)
        c.ehlo()
        return c

    return d, certs, tls_session


def test_a_client_certificate_name_attributes_the_session(sluice_factory, tmp_path):
    d, certs, tls_session = cert_daemon(sluice_factory, tmp_path)

    # Without a certificate, or with one for another name: anonymous, no relay.
    for cert in (None, certs["other"]):
        c = tls_session(cert)
        c.mail("user@contoso.com")
        c.rcpt("x@gmail.com", expect=(554, "5.7.1"))
        c.close()
    # With the certificate exchange-online presents: originating; CMT applies.
    c = tls_session(certs["good"])
    r = c.send_mail("user@contoso.com", ["x@gmail.com"], b"From: user@contoso.com\r\nSubject: cloud\r\n\r\nhi\r\n")
    check(r, 250)
    entry = d.queue_json(queued_id(r))
    assert entry["routes"][0]["connector"] == "onprem", entry
    c.close()
    assert "attributed by certificate name mail.protection.outlook.com" in d.stderr()


def test_a_wildcard_tls_certificate_name_attributes_by_the_certificate_dns_name(sluice_factory, tmp_path):
    # tls_certificate_name = "*.protection.outlook.com": a certificate for
    # eu1.protection.outlook.com attributes; one for a name two labels down,
    # or for another domain, does not.
    d, certs, tls_session = cert_daemon(
        sluice_factory, tmp_path,
        (("one", "eu1.protection.outlook.com"), ("two", "a.eu1.protection.outlook.com"),
         ("other", "mx.example.org")),
        [('tls_certificate_name = "mail.protection.outlook.com"',
          'tls_certificate_name = "*.protection.outlook.com"')])

    for tag in ("two", "other"):
        c = tls_session(certs[tag])
        c.mail("user@contoso.com")
        c.rcpt("x@gmail.com", expect=(554, "5.7.1"))
        c.close()
    c = tls_session(certs["one"])
    r = c.send_mail("user@contoso.com", ["x@gmail.com"], b"From: user@contoso.com\r\nSubject: cloud\r\n\r\nhi\r\n")
    check(r, 250)
    entry = d.queue_json(queued_id(r))
    assert entry["routes"][0]["connector"] == "onprem", entry
    c.close()
    assert "attributed by certificate name eu1.protection.outlook.com" in d.stderr()
