"""Loopback ports for daemons and peers, picked by binding port 0."""

import socket


def free_port(host="127.0.0.1"):
    """A TCP port free on `host` right now (IPv6 when the host has a colon)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def free_udp_port(host="127.0.0.1"):
    """A UDP port free on `host` right now."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def ipv6_available():
    """True when ::1 can be bound (the IPv6 tests skip otherwise)."""
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.bind(("::1", 0))
        s.close()
        return True
    except OSError:
        return False


def refusing_port():
    """A bound socket that never listens, and its port: connections to it
    are refused for as long as the socket is kept open."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]
