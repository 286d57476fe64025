"""Outside tools some tests need (socat, sshd, rsyslogd, dnsmasq)."""

import os

import pytest


def needs_tool(available, reason):
    """Mark for tests that need an outside tool (socat, sshd, rsyslogd):
    skipped when it is missing, except under CI (the CI environment
    variable set), where a missing tool fails the test instead."""
    if available or not os.environ.get("CI"):
        return pytest.mark.skipif(not available, reason=reason)
    return pytest.mark.missing_tool(reason)
