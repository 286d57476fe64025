"""pytest fixtures for sluice's black-box tests, wrapping tests/helpers.

The binary is $SLUICE_BIN, else $CARGO_BIN_EXE_sluice, else this
repository's target/debug/sluice (`cargo build --bin sluice`). Run:
`python3 -m pytest -q tests/`.

Each test starts its own daemons (`sluice_factory`), each on its own picked
loopback ports, in a temp dir with its own config, spool and state; see
helpers/daemon.py for the config they get.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from helpers import certs  # noqa: E402
from helpers.daemon import HOSTNAME, NO_BINARY, SLUICE_BIN, Launcher  # noqa: E402
from helpers.ports import refusing_port  # noqa: E402
from helpers.sink import Sink  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "missing_tool(reason): a needed tool is missing under CI: fail")


def pytest_sessionstart(session):
    if not SLUICE_BIN or not os.path.exists(SLUICE_BIN):
        raise pytest.UsageError(NO_BINARY + (" (%s does not exist)" % SLUICE_BIN if SLUICE_BIN else ""))


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture(autouse=True)
def _fail_when_a_tool_is_missing_under_ci(request):
    m = request.node.get_closest_marker("missing_tool")
    if m is not None:
        pytest.fail("CI is set and %s" % m.args[0], pytrace=False)


@pytest.fixture(scope="session")
def sluice_bin():
    """The path of the sluice binary under test."""
    return SLUICE_BIN


@pytest.fixture(scope="session")
def dead_port():
    """A loopback TCP port that is bound but never listens: connections are refused."""
    s, port = refusing_port()
    yield port
    s.close()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    """A self-signed certificate for edge1.test, made with the openssl CLI."""
    d = tmp_path_factory.mktemp("tls")
    return certs.self_signed(str(d / "cert.pem"), str(d / "key.pem"), HOSTNAME)


@pytest.fixture
def sluice_factory(tmp_path, request, dead_port, tls_files):
    """make(tls=False, ipv6=False, limits=None, spool_dir=None, start=True,
    rules_text=None, **config) -> Sluice (see helpers.daemon.Launcher);
    every daemon is killed at teardown, its log printed if the test failed."""
    launcher = Launcher(tmp_path, dead_port, tls_files)
    yield launcher.make
    failed = any(getattr(request.node, "rep_" + w, None) is not None and
                 getattr(request.node, "rep_" + w).failed for w in ("setup", "call"))
    launcher.cleanup(dump_logs=failed)


@pytest.fixture
def sluice(sluice_factory):
    """A daemon with the default limits, no TLS."""
    return sluice_factory()


@pytest.fixture
def sluice_tls(sluice_factory):
    """A daemon offering STARTTLS with a self-signed certificate for edge1.test."""
    return sluice_factory(tls=True)


@pytest.fixture
def sinks():
    """make(**kw) -> a started helpers.sink.Sink, stopped at teardown."""
    made = []

    def make(*args, **kw):
        s = Sink(*args, **kw).start()
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()
