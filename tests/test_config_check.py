"""The appliance config is checked as a whole before anything opens.

`sluice config check [FILE]` prints the effective config (TOML, every default
filled in) and exits 0, or prints each error as FILE:LINE:COL: message and
exits 1; `sluice run` with a bad config refuses to start, names the line and
column, and opens no listener. The normative sample config/sluice.toml must
pass. Runs the real binary given by the environment variable SLUICE_BIN.
"""

import os
import re
import socket
import subprocess
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SLUICE_BIN = os.environ.get("SLUICE_BIN", str(REPO / "target" / "debug" / "sluice"))
SAMPLE = REPO / "config" / "sluice.toml"


def sluice(*args, timeout=20):
    """Runs the binary; returns (exit status, stdout, stderr)."""
    p = subprocess.run([SLUICE_BIN, *args], capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def diagnostics(path, text):
    """(line, col, message) of each `PATH:LINE:COL: message` line in text."""
    pat = re.compile(r"^(?:sluice: )?" + re.escape(str(path)) + r":(\d+):(\d+): (.+)$")
    return [(int(m[1]), int(m[2]), m[3]) for m in map(pat.match, text.splitlines()) if m]


def test_the_normative_sample_passes_and_prints_every_default():
    rc, out, err = sluice("config", "check", str(SAMPLE))
    assert rc == 0, err
    eff = tomllib.loads(out)
    assert eff["hostname"] == "edge1.contoso.com"
    assert [l["address"] for l in eff["listen"]] == ["127.0.0.1:2525", "[::1]:2525"]
    assert eff["spool_dir"] == str(REPO / "config" / "spool")
    assert eff["limits"]["max_message_size"] == 36 * 1024 * 1024
    assert eff["limits"]["command_timeout"] == "5m"
    assert eff["queue"]["retry"] == ["1m", "5m", "15m", "30m", "1h", "2h", "4h"]
    assert eff["dns"]["static_mx"]["eu.contoso.com"] == [[10, "relay-eu.contoso.example"],
                                                         [20, "relay-us.contoso.example"]]


def test_defaults_are_filled_in_and_the_output_reads_back(tmp_path):
    cfg = tmp_path / "sluice.toml"
    cfg.write_text('hostname = "edge.test"\n[dns]\nservers = ["192.0.2.53"]\n')
    rc, out, err = sluice("config", "check", "--config", str(cfg))
    assert rc == 0, err
    eff = tomllib.loads(out)
    assert eff["state_dir"] == str(tmp_path / "state")
    assert eff["listen"] == [{"address": "127.0.0.1:2525", "starttls": False}]
    assert eff["limits"]["connections"] == 1000
    assert eff["limits"]["max_recipients"] == 200
    assert eff["limits"]["bare_line_endings"] == "refuse"
    assert eff["queue"]["hold"] is False
    assert eff["dns"]["servers"] == ["192.0.2.53:53"]
    assert eff["syslog"] == {"target": "unix:/dev/log", "facility": "mail"}
    assert eff["upload"] == {"serial": "", "baud": 115200}
    # The printed config is itself a config that checks to the same output.
    again = tmp_path / "effective.toml"
    again.write_text(out)
    rc, out2, err = sluice("config", "check", str(again))
    assert rc == 0, err
    assert out2 == out
    # No FILE: --config; neither: the embedded default.
    rc, out3, _ = sluice("--config", str(cfg), "config", "check")
    assert (rc, out3) == (0, out)
    rc, out4, err = sluice("config", "check")
    assert rc == 0, err
    assert tomllib.loads(out4)["listen"][0]["address"] == "127.0.0.1:2525"


def test_a_typo_is_an_error_at_its_line_and_column(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('hostname = "edge.test"\n\n[limits]\nconections = 10\n[limts]\nx = 1\n')
    rc, out, err = sluice("config", "check", str(cfg))
    assert rc == 1, (out, err)
    assert out == ""
    diags = diagnostics(cfg, err)
    assert len(diags) == 2, err
    assert diags[0][:2] == (4, 1) and 'did you mean "connections"' in diags[0][2], err
    assert diags[1][:2] == (5, 2) and "did you mean [limits]" in diags[1][2], err


def test_a_bad_value_names_its_line_and_column(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[queue]\nwarn_after = "soon"\n[dns]\nservers = ["192.0.2.1", "not-an-ip"]\n')
    rc, _, err = sluice("config", "check", str(cfg))
    assert rc == 1
    diags = diagnostics(cfg, err)
    assert [d[:2] for d in diags] == [(2, 14), (4, 25)], err
    assert "warn_after" in diags[0][2] and "dns.servers[1]" in diags[1][2], err


def test_run_refuses_a_bad_config_and_opens_nothing(tmp_path):
    port = free_port()
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'hostname = "edge.test"\nspool_dir = "spool"\nstate_dir = "state"\n'
                   f'[[listen]]\naddress = "127.0.0.1:{port}"\n'
                   f'[syslog]\ntarget = "stderr"\n'
                   f'[dns]\nstatic_mx = {{ "a.test" = [[70000, "mx.a.test"]] }}\n')
    p = subprocess.Popen([SLUICE_BIN, "run", "--config", str(cfg)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 1, (out, err)
    diags = diagnostics(cfg, err)
    assert len(diags) == 1 and diags[0][:2] == (9, 27), err
    assert "preference" in diags[0][2], err
    assert "listening on" not in out + err
    assert not (tmp_path / "spool").exists() and not (tmp_path / "state").exists()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "something listens on the configured port"
