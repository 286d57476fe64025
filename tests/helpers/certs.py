"""Certificates for the tests, made with the openssl CLI (EC P-256, valid
three days): a self-signed server certificate, a test CA and leaves it
signs."""

import os
import shutil
import subprocess

EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
# Extensions of a server leaf (the next hops' certificates).
SERVER_EXT = ("basicConstraints=critical,CA:FALSE\n"
              "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
# Extensions of a client leaf (a connector's client certificate).
CLIENT_EXT = "extendedKeyUsage=clientAuth,serverAuth\n"


def have_openssl():
    """True when the openssl CLI is installed."""
    return shutil.which("openssl") is not None


def openssl(*args):
    """Runs the openssl CLI; raises if it fails."""
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


def self_signed(cert, key, name):
    """A self-signed certificate for DNS name `name` at the paths given."""
    openssl("req", "-x509", *EC, "-keyout", key, "-out", cert, "-days", "3",
            "-subj", "/CN=" + name, "-addext", "subjectAltName=DNS:" + name)
    return cert, key


def make_ca(d, tag, subject, key_usage="keyCertSign,cRLSign"):
    """A test CA in directory `d`: (certificate path, key path)."""
    cert, key = os.path.join(str(d), tag + ".pem"), os.path.join(str(d), tag + ".key")
    openssl("req", "-x509", *EC, "-keyout", key, "-out", cert, "-days", "3", "-subj", "/CN=" + subject,
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical," + key_usage)
    return cert, key


def make_leaf(d, ca, tag, dns_name, ext=SERVER_EXT):
    """A certificate for `dns_name` signed by `ca` (a (cert, key) pair), with
    `ext` after the subjectAltName: (certificate path, key path)."""
    key, csr, crt, extfile = (os.path.join(str(d), tag + s) for s in (".key", ".csr", ".pem", ".ext"))
    openssl("req", "-new", *EC, "-keyout", key, "-out", csr, "-subj", "/CN=" + dns_name)
    with open(extfile, "w") as f:
        f.write("subjectAltName=DNS:%s\n%s" % (dns_name, ext))
    openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
            "-days", "3", "-extfile", extfile, "-out", crt)
    return crt, key
