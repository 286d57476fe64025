#!/usr/bin/env python3
"""Writes the hand-made seed files of fuzz/corpus/TARGET/ (seed-*): real
SMTP sessions (from tests/transcripts), server replies, the sample rule
file, a DNS answer, milter packets, SPF/DKIM records, AUTH answers,
directory exports, a passwd-file, spool segments and upload frames.
Run from anywhere; campaigns add their own files next to these."""
import base64, hashlib, os, struct, zlib, glob

ROOT = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(ROOT)


def put(target, name, data):
    d = os.path.join(ROOT, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def transcript_client(path):
    """The client's octets of a tests/transcripts/*.in file (C: lines)."""
    out = b""
    for line in open(path, "rb").read().split(b"\n"):
        if line.startswith(b"C: "):
            out += line[3:] + b"\r\n"
        elif line == b"C:":
            out += b"\r\n"
    return out


def receiver():
    for p in sorted(glob.glob(os.path.join(REPO, "tests/transcripts/*.in"))):
        name = os.path.basename(p)[:-3]
        put("receiver", name, bytes([0x04, 0x00]) + transcript_client(p))
    put("receiver", "smuggle", bytes([0x00, 0x41]) +
        b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n\n.\r\n"
        b"MAIL FROM:<e@f>\r\n\r\n.\n\r\n\x00.\r\n.\r\nQUIT\r\n")
    put("receiver", "bdat-normalize", bytes([0x13, 0x80]) +
        b"EHLO c\r\nMAIL FROM:<a@b> BODY=8BITMIME SIZE=20\r\nRCPT TO:<c@d>\r\n"
        b"BDAT 9\r\nS: x\n\r\nyz BDAT 3 LAST\r\nabcRSET\r\nQUIT\r\n")
    put("receiver", "auth", bytes([0x68, 0x11]) +
        b"EHLO c\r\nAUTH LOGIN\r\ndXNlcg==\r\ncGFzcw==\r\nAUTH PLAIN AHUAcA==\r\n"
        b"STARTTLS\r\nMAIL FROM:<a@b>\r\nQUIT\r\n")


def client():
    ok = (b"220 mx.example ESMTP\r\n250-mx.example\r\n250-PIPELINING\r\n250-SIZE 10000000\r\n"
          b"250-8BITMIME\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n"
          b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
          b"250 2.0.0 Ok: queued as 1\r\n221 2.0.0 Bye\r\n")
    put("client", "pipelined", bytes([0x00, 0x00]) + ok)
    put("client", "two-rcpts", bytes([0x10, 0x40]) + ok.replace(b"250 2.1.5 Ok\r\n", b"250 2.1.5 Ok\r\n550 5.1.1 No such user\r\n"))
    put("client", "starttls-chunking", bytes([0x05, 0x80]) +
        b"220 mx\r\n250-mx\r\n250-STARTTLS\r\n250 CHUNKING\r\n220 2.0.0 Ready\r\n"
        b"250-mx\r\n250-CHUNKING\r\n250 SIZE 100\r\n250 Ok\r\n250 Ok\r\n250 Ok\r\n221 Bye\r\n")
    put("client", "helo-fallback", bytes([0x80, 0x03]) +
        b"220 old\r\n502 what\r\n250 old\r\n250 ok\r\n451 4.3.0 later\r\n221 bye\r\n")


def header():
    for p in sorted(glob.glob(os.path.join(REPO, "tests/policy/*.eml")))[:8]:
        put("header", os.path.basename(p)[:-4], open(p, "rb").read()[:4096])
    put("header", "plain", b"From: a@b.example\r\nTo: c@d.example\r\nSubject: hi\r\n"
        b" folded\r\nX-Y : z\r\n\r\nbody\r\n")


def rules():
    put("rules", "config", open(os.path.join(REPO, "config/rules.toml"), "rb").read())


def blob():
    put("blob", "raw", bytes([0]) + b"\x01\x02\x03\x04\x05")
    put("blob", "resealed", bytes([1]) + bytes(range(64)))
    put("blob", "mutated", bytes([2]) + bytes([0x10, 0x00, 0x7f, 0x80, 0x01, 0xff, 0x00, 0x02, 0x00]))


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def upload():
    text = b"[settings]\nhostname = \"mx\"\n"
    h = hashlib.sha256(text).digest()
    begin = varint(0) + varint(7) + varint(len(text)) + varint(1) + h
    data = varint(1) + varint(7) + varint(1) + varint(len(text)) + text
    end = varint(2) + varint(7) + varint(2) + h
    frames = b"".join(bytes([len(p)]) + p for p in (begin, data, end))
    put("upload", "session", bytes([1]) + frames)
    put("upload", "noise", bytes([0]) + b"\x00\x05abc\x00\xff\xfe\x00")


def spool():
    recs = bytes([0x00, 5]) + b"hello" + bytes([0x01, 3]) + b"end" + bytes([0x06, 0]) + bytes([0x05, 2]) + b"ok"
    put("spool", "records", bytes([1, 0, 0, 0, 0]) + recs)
    put("spool", "torn", bytes([5, 30, 0, 0, 0]) + recs)
    put("spool", "flipped", bytes([3, 0, 0, 20, 0]) + recs)


def dns_name(n):
    return b"".join(bytes([len(p)]) + p.encode() for p in n.split(".")) + b"\x00"


def dns():
    q = dns_name("example.org") + struct.pack(">HH", 15, 1)
    mx = b"\xc0\x0c" + struct.pack(">HHIH", 15, 1, 300, 2 + len(dns_name("mx.example.org"))) + \
        struct.pack(">H", 10) + dns_name("mx.example.org")
    put("dns", "mx", bytes([2]) + struct.pack(">HHHHHH", 0x1234, 0x8180, 1, 1, 0, 0) + q + mx)
    q = dns_name("example.org") + struct.pack(">HH", 16, 1)
    txt = b"v=spf1 -all"
    rr = b"\xc0\x0c" + struct.pack(">HHIH", 16, 1, 60, len(txt) + 1) + bytes([len(txt)]) + txt
    put("dns", "txt", bytes([3]) + struct.pack(">HHHHHH", 7, 0x8180, 1, 1, 0, 0) + q + rr)
    put("dns", "truncated", bytes([0]) + struct.pack(">HHHHHH", 9, 0x8380, 1, 0, 0, 0) + q)


def milter_packet(c, data):
    return struct.pack(">I", len(data) + 1) + c + data


def milter():
    neg = milter_packet(b"O", struct.pack(">III", 6, 0x1FF, 0x1FFFFF) + struct.pack(">I", 1) + b"{auth_authen}\x00")
    put("milter", "negotiate", neg + milter_packet(b"c", b"") + milter_packet(b"a", b""))
    put("milter", "modify", neg + milter_packet(b"h", b"X-Spam\x00yes\x00") + milter_packet(b"m", struct.pack(">I", 1) + b"Subject\x00new\x00")
        + milter_packet(b"b", b"new body") + milter_packet(b"+", b"<x@y>\x00") + milter_packet(b"-", b"<z@y>\x00")
        + milter_packet(b"e", b"<f@y>\x00SIZE=1\x00") + milter_packet(b"q", b"held\x00") + milter_packet(b"a", b""))
    put("milter", "reply", milter_packet(b"y", b"550 5.7.1 Rejected\x00") + milter_packet(b"t", b"") + milter_packet(b"s", b""))


def spf():
    ip = bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 1])
    put("spf", "include", ip + b"alice@example.org\n"
        b"v=spf1 ip4:198.51.100.0/24 include:_spf.example.org a mx -all\n"
        b"v=spf1 ip4:192.0.2.0/24 ~all\n")
    put("spf", "macros", ip + b"bob@example.org\n"
        b"v=spf1 exists:%{ir}.%{l1r+-}._spf.%{d} redirect=_r.example.org exp=explain.%{d}\n"
        b"\x01\x02\x03\x04\nv=spf1 a:%{d2} ptr ip6:2001:db8::/32 ?all\n")


def dkim():
    put("dkim", "signature", b"v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; s=sel;\r\n"
        b" t=1700000000; x=1800000000; h=from:to:subject:date; l=100; i=@example.org;\r\n"
        b" bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=dGVzdA==")
    put("dkim", "key", b"v=DKIM1; k=rsa; h=sha256; t=y:s; s=email; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQ")
    put("dkim", "arc-seal", b"i=1; a=rsa-sha256; cv=none; d=example.org; s=sel; t=1; b=dGVzdA==")
    put("dkim", "arc-chain", b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=example.org; s=s; b=dA==\r\n"
        b"ARC-Message-Signature: i=1; a=rsa-sha256; d=example.org; s=s; h=from; bh=dA==; b=dA==\r\n"
        b"ARC-Authentication-Results: i=1; mx.example; spf=pass\r\n\r\n")


def auth():
    put("auth", "plain", bytes([0]) + base64.b64encode(b"\x00user\x00secret"))
    put("auth", "plain-empty", bytes([1]) + b"=\r\n" + base64.b64encode(b"authz\x00user\x00pw"))
    put("auth", "login", bytes([2]) + base64.b64encode(b"user") + b"\r\n" + base64.b64encode(b"pw"))
    put("auth", "cancel", bytes([2]) + b"*")


def directory():
    put("directory", "ldif", "version: 1\ndn: CN=Alice,DC=example,DC=org\nmail: alice@example.org\n"
        "proxyAddresses: SMTP:alice@example.org\nproxyAddresses: smtp:al@example.org\n"
        "description:: aGVsbG8=\n\ndn: CN=Ext,DC=example,DC=org\ntargetAddress: SMTP:x@ext.example\n"
        " continued\n")
    put("directory", "csv", "DN,objectClass,mail,proxyAddresses\n"
        "\"CN=Alice,DC=example,DC=org\",user,alice@example.org,SMTP:alice@example.org;smtp:al@example.org\n"
        "\"CN=Bob,DC=example,DC=org\",contact,,\"smtp:bob@example.org\"\n")


def passwd():
    put("passwd", "schemes",
        "# users\nalice@example.org:{SHA512-CRYPT}$6$salt$abcdefghijklmnopqrstuvwxyz0123456789./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwx::::\n"
        "bob:{BLF-CRYPT}$2b$05$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234\n"
        "carol:{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\n")


for f in (receiver, client, header, rules, blob, upload, spool, dns, milter, spf, dkim, auth, directory, passwd):
    f()
