#!/usr/bin/env python3
"""Regenerates dkimpy-signed.json: one message signed by dkimpy (an
independent DKIM implementation) in several ways, with the key records to
verify them. Needs `pip install dkimpy pynacl`; the Rust unit tests in
src/shell/sender_auth/dkim/tests.rs read the JSON, not this script.

    cd tests/dkim && openssl genrsa -out rsa-test-only.key 2048 && python3 make_fixtures.py
"""
import base64
import json
import subprocess

import dkim
import nacl.signing

MSG = (b"From: Joe SixPack <joe@football.example.com>\r\n"
       b"To: Suzie Q <suzie@shopping.example.net>\r\n"
       b"Subject: Is dinner ready?\r\n"
       b"Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n"
       b"Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n"
       b"\r\n"
       b"Hi.\r\n\r\nWe lost the game.   Are you hungry yet?\t \r\n\r\nJoe.\r\n\r\n\r\n")
DOMAIN = b"football.example.com"
HEADERS = [b"from", b"to", b"subject", b"date", b"message-id"]


def main():
    rsa = open("rsa-test-only.key", "rb").read()
    rsa_pub = base64.b64encode(subprocess.run(
        ["openssl", "rsa", "-in", "rsa-test-only.key", "-pubout", "-outform", "DER"],
        check=True, capture_output=True).stdout).decode()
    sk = nacl.signing.SigningKey.generate()
    ed_priv = base64.b64encode(bytes(sk))
    out = {"keys": {
        "rsa._domainkey.football.example.com": "v=DKIM1; k=rsa; p=" + rsa_pub,
        "ed._domainkey.football.example.com": "v=DKIM1; k=ed25519; p=" + base64.b64encode(bytes(sk.verify_key)).decode(),
    }, "cases": []}

    def add(name, canon, sel, key, alg, length=False):
        sig = dkim.sign(MSG, sel, DOMAIN, key, canonicalize=canon, include_headers=HEADERS,
                        signature_algorithm=alg, length=length)
        out["cases"].append({"name": name, "message": (sig + MSG).decode()})

    add("rsa-relaxed", (b"relaxed", b"relaxed"), b"rsa", rsa, b"rsa-sha256")
    add("rsa-simple", (b"simple", b"simple"), b"rsa", rsa, b"rsa-sha256")
    add("ed-relaxed-simple", (b"relaxed", b"simple"), b"ed", ed_priv, b"ed25519-sha256")
    add("rsa-length", (b"relaxed", b"relaxed"), b"rsa", rsa, b"rsa-sha256", length=True)
    s1 = dkim.sign(MSG, b"rsa", DOMAIN, rsa, canonicalize=(b"relaxed", b"relaxed"), include_headers=[b"from", b"subject"])
    s2 = dkim.sign(s1 + MSG, b"ed", DOMAIN, ed_priv, canonicalize=(b"relaxed", b"relaxed"),
                   include_headers=[b"from", b"subject"], signature_algorithm=b"ed25519-sha256")
    out["cases"].append({"name": "both", "message": (s2 + s1 + MSG).decode()})

    def dnsfunc(name, timeout=5):
        return out["keys"].get(name.decode().rstrip("."), "").encode()

    for c in out["cases"]:
        m = c["message"].encode()
        n = sum(1 for line in m.split(b"\r\n\r\n")[0].split(b"\r\n") if line.lower().startswith(b"dkim-signature"))
        c["dkimpy"] = [dkim.DKIM(m).verify(idx=i, dnsfunc=dnsfunc) for i in range(n)]
    with open("dkimpy-signed.json", "w") as f:
        json.dump(out, f, indent=1)
    arc_fixtures(rsa, out["keys"]["rsa._domainkey.football.example.com"])


def arc_fixtures(rsa, key_record):
    """A message through a mailing list (ARC set 1) and a forwarder (set 2),
    sealed by dkimpy; the same test key published for both sealers."""
    keys = {"rsa._domainkey.lists.example.org": key_record, "rsa._domainkey.fwd.example.net": key_record}
    base = (b"Authentication-Results: lists.example.org; dkim=pass header.d=football.example.com;"
            b" spf=pass smtp.mailfrom=football.example.com\r\n" + MSG)
    signed = [b"from", b"to", b"subject", b"date", b"message-id"]
    one = b"".join(dkim.arc_sign(base, b"rsa", b"lists.example.org", rsa, b"lists.example.org",
                                 include_headers=signed)) + base
    hop = b"Authentication-Results: fwd.example.net; arc=pass\r\n" + one
    two = b"".join(dkim.arc_sign(hop, b"rsa", b"fwd.example.net", rsa, b"fwd.example.net",
                                 include_headers=signed)) + hop

    def dnsfunc(name, timeout=5):
        return keys.get(name.decode().rstrip("."), "").encode()

    cases = [{"name": n, "message": m.decode(), "dkimpy": dkim.arc_verify(m, dnsfunc=dnsfunc)[0].decode()}
             for n, m in (("one-hop", one), ("two-hops", two))]
    with open("dkimpy-arc.json", "w") as f:
        json.dump({"keys": keys, "cases": cases}, f, indent=1)


if __name__ == "__main__":
    main()
