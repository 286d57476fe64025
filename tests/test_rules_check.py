"""`sluice rules check FILE`, black box (docs/INTERFACES.md, "Policy (issue 3)").

Prints table sizes against capacities, the blob size and version, then
`FILE:LINE:COL: error: ...` / `FILE:LINE:COL: warning: ...`. Exit 0 without
errors (warnings allowed), 1 on errors. The normative sample
(config/rules.toml) must pass; each malformed
variant below is the sample with one change, and the error must name the line
of that change.
"""

import os
import re
import subprocess

import pytest

from helpers.daemon import SLUICE_BIN

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RULES = os.path.join(ROOT, "config", "rules.toml")


def check(path, cwd=ROOT, timeout=20):
    assert os.path.exists(SLUICE_BIN), "no sluice binary at %s (set SLUICE_BIN)" % SLUICE_BIN
    p = subprocess.run([SLUICE_BIN, "rules", "check", path], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=timeout, cwd=cwd)
    out = p.stdout.decode("utf-8", "replace")
    err = p.stderr.decode("utf-8", "replace")
    return p.returncode, out, err, "rules check %s -> exit %d\nstdout:\n%s\nstderr:\n%s" % (
        path, p.returncode, out[-8000:], err[-4000:])


def diagnostics(path, text, kind):
    """(line, col, message) of every `PATH:LINE:COL: kind: message` line."""
    rx = re.compile(r"^%s:(\d+):(\d+): %s: (.*)$" % (re.escape(path), kind), re.M)
    return [(int(m.group(1)), int(m.group(2)), m.group(3)) for m in rx.finditer(text)]


def sample_text():
    with open(RULES, encoding="utf-8") as f:
        return f.read()


def variant(tmp_path, old, new, name="rules.toml"):
    """The sample with `old` (occurring once) replaced by `new`; returns (path, line of the change)."""
    s = sample_text()
    assert s.count(old) == 1, "%r occurs %d times in the sample" % (old, s.count(old))
    pos = s.index(old)
    line = s[:pos].count("\n") + 1
    p = tmp_path / name
    p.write_text(s.replace(old, new), encoding="utf-8")
    return str(p), line


# ---------------------------------------------------------------------------
# valid files
# ---------------------------------------------------------------------------

def test_sample_passes_and_prints_sizes():
    rc, out, err, info = check("config/rules.toml")
    assert rc == 0, info
    both = out + err
    assert not diagnostics("config/rules.toml", both, "error"), info
    assert "error:" not in both, info
    rules_lines = [ln for ln in both.splitlines() if "rules" in ln.lower() and "1024" in ln]
    assert rules_lines, "no line with the rule table's size against its capacity (1024):\n" + info
    assert any(re.search(r"(?<![\d.])5(?![\d.])", ln) for ln in rules_lines), \
        "the sample has 5 rules:\n" + info
    assert "version" in both.lower(), info


def test_absolute_path_passes():
    rc, out, err, info = check(RULES)
    assert rc == 0, info


def test_only_domains_is_valid(tmp_path):
    p = tmp_path / "minimal.toml"
    p.write_text('[domains]\naccepted = ["a.test"]\n', encoding="utf-8")
    rc, out, err, info = check(str(p))
    assert rc == 0, info
    assert not diagnostics(str(p), out + err, "error"), info


def test_empty_file_is_valid(tmp_path):
    # "Every section and key is optional"
    p = tmp_path / "empty.toml"
    p.write_text("", encoding="utf-8")
    rc, out, err, info = check(str(p))
    assert rc == 0, info


def test_missing_file_fails(tmp_path):
    rc, out, err, info = check(str(tmp_path / "nope.toml"))
    assert rc != 0, info


# ---------------------------------------------------------------------------
# errors, with the line of the fault
# ---------------------------------------------------------------------------

ERRORS = [
    # (id, old text in the sample, new text)
    ("toml-syntax", 'tls = "required"\n', 'tls = "required\n'),
    ("toml-syntax-bracket", '[[connector]]\nname = "journal"', '[[connector]\nname = "journal"'),
    ("unknown-key-prority", "priority = 3\n", "prority = 3\n"),
    ("unknown-connector", 'then = { use_connector = "onprem" }', 'then = { use_connector = "nowhere" }'),
    ("bad-regex", "header_value_not_matches = '(?i)^public$'", "header_value_not_matches = '(?i)^(public$'"),
    ("bad-regex-attachment", "attachment_name_matches = '(?i)\\.(exe|scr|js)$'",
     "attachment_name_matches = '(?i)\\.(exe|scr|js$'"),
    ("bad-cidr-prefix", 'client_ips = ["127.0.0.3/32"]', 'client_ips = ["127.0.0.3/33"]'),
    ("bad-cidr-address", 'client_ips = ["127.0.0.2/32"]', 'client_ips = ["127.0.0.300/32"]'),
    ("bad-reject-text", 'then = { reject = "550 5.7.1 Executable attachments are refused" }',
     'then = { reject = "550 text" }'),
    ("reject-success-code", 'then = { reject = "550 5.7.1 Executable attachments are refused" }',
     'then = { reject = "250 2.0.0 Ok" }'),
    ("default-not-accepted", 'default = "contoso.com"', 'default = "fabrikam.com"'),
    ("value-match-without-header",
     "if = { header = \"X-RoutethroughTM\", header_value_not_matches = '(?i)^public$' }",
     "if = { header_value_not_matches = '(?i)^public$' }"),
    ("bad-tls-policy", 'tls = "verify"', 'tls = "sometimes"'),
    ("bad-location", 'if = { sender_group = "TrendUsers", recipient_location = "outside" }',
     'if = { sender_group = "TrendUsers", recipient_location = "elsewhere" }'),
    # references to names the file does not define, like the unknown connector above
    ("unknown-inbound", 'if = { inbound = "exchange-online", recipient_location = "inside" }',
     'if = { inbound = "exchange-onlin", recipient_location = "inside" }'),
    ("unknown-group", 'if = { sender_group = "Executives" }', 'if = { sender_group = "Executive" }'),
    ("unknown-cmt-inbound", 'from_inbound = ["exchange-online"]', 'from_inbound = ["exchange-offline"]'),
    ("bad-rewrite-direction", 'direction = "outbound"', 'direction = "sideways"'),
    ("bad-size", 'max_message_size = "36 MiB"', 'max_message_size = "lots"'),
    ("bad-stop-type", "stop = true", 'stop = "yes"'),
    ("bad-inbound-kind", 'kind = "partner"', 'kind = "friend"'),
    ("unknown-condition-key", 'if = { sender_group = "Executives" }', 'if = { sendr_group = "Executives" }'),
    ("unknown-action-key", 'then = { route_to = "trend.local" }\n\n[[rule]]                         # seed 000: source',
     'then = { route_too = "trend.local" }\n\n[[rule]]                         # seed 000: source'),
]


APPENDED = [
    ("unknown-agent", '[[agent]]\nname = "cmtt"\nenabled = false\n', 'name = "cmtt"'),
    ("bad-blocked-network", '[connection_filter]\nblocked_networks = ["198.51.100.0/33"]\n', "blocked_networks"),
]


@pytest.mark.parametrize("extra,marker", [(e, m) for _, e, m in APPENDED], ids=[i for i, _, _ in APPENDED])
def test_error_in_added_keys(tmp_path, extra, marker):
    text = sample_text() + "\n" + extra
    line = [i + 1 for i, ln in enumerate(text.splitlines()) if marker in ln][-1]
    p = tmp_path / "rules.toml"
    p.write_text(text, encoding="utf-8")
    rc, out, err, info = check(str(p))
    assert rc == 1, info
    errs = diagnostics(str(p), out + err, "error")
    assert line in [ln for ln, _, _ in errs], "expected an error on line %d, got %r\n%s" % (line, errs, info)


def test_disabling_the_recipient_filter_is_allowed_and_keeps_the_accepted_domains(tmp_path):
    # Disabling it switches off what it does beyond the accepted domains
    # (valid/blocked recipients, directory, call-ahead, tarpit, harvest
    # limit); the accepted-domain check always runs, so no open relay.
    text = sample_text() + '\n[[agent]]\nname = "recipient_filter"\nenabled = false\n'
    p = tmp_path / "rules.toml"
    p.write_text(text, encoding="utf-8")
    rc, out, err, info = check(str(p))
    assert rc == 0, info
    assert "open relay" not in out + err, info


@pytest.mark.parametrize("agent,enabled", [("recipient_filter", "true"), ("cmt", "false"),
                                           ("header_firewall", "false")])
def test_other_agent_settings_still_pass(tmp_path, agent, enabled):
    p = tmp_path / "rules.toml"
    p.write_text(sample_text() + '\n[[agent]]\nname = "%s"\nenabled = %s\n' % (agent, enabled),
                 encoding="utf-8")
    rc, out, err, info = check(str(p))
    assert rc == 0, info
    assert "open relay" not in out + err, info


@pytest.mark.parametrize("old,new", [(o, n) for _, o, n in ERRORS], ids=[i for i, _, _ in ERRORS])
def test_error_names_the_line(tmp_path, old, new):
    path, line = variant(tmp_path, old, new)
    rc, out, err, info = check(path)
    assert rc == 1, info
    errs = diagnostics(path, out + err, "error")
    assert errs, "no `%s:LINE:COL: error:` line:\n%s" % (path, info)
    assert all(c >= 1 for _, c, _ in errs), info
    assert line in [ln for ln, _, _ in errs], "expected an error on line %d (%r), got %r\n%s" % (
        line, new.strip(), errs, info)


def test_error_relative_path_is_named_as_given(tmp_path):
    path, line = variant(tmp_path, "priority = 3\n", "prority = 3\n")
    rc, out, err, info = check("rules.toml", cwd=str(tmp_path))
    assert rc == 1, info
    errs = diagnostics("rules.toml", out + err, "error")
    assert line in [ln for ln, _, _ in errs], info
    assert "prority" in " ".join(m for _, _, m in errs), info
    assert (line, 1) in [(ln, c) for ln, c, _ in errs], "the key starts in column 1: %r\n%s" % (errs, info)


def generated_rules(n):
    lines = ["version = 1", "", "[domains]", 'accepted = ["a.test"]', "",
             "[[connector]]", 'name = "internet"', 'address_spaces = ["*"]', ""]
    for i in range(n):
        lines += ["[[rule]]", 'name = "r%d"' % i, 'if = { recipient = "u%d@a.test" }' % i,
                  'then = { use_connector = "internet" }', ""]
    return "\n".join(lines) + "\n"


def test_too_many_rules_names_max_rules(tmp_path):
    p = tmp_path / "many.toml"
    p.write_text(generated_rules(1025), encoding="utf-8")
    rc, out, err, info = check(str(p))
    assert rc == 1, info
    both = out + err
    errs = diagnostics(str(p), both, "error")
    assert errs, info
    named = [m for _, _, m in errs if "MAX_RULES" in m]
    assert named, "no error names MAX_RULES:\n" + info
    assert any("1025" in m and "1024" in m for m in named), info


def generated_tables(kind, n):
    lines = ["[domains]", 'accepted = ["a.test"]', ""]
    if kind == "groups":
        lines.append("[groups]")
        lines += ['G%d = ["u%d@a.test"]' % (i, i) for i in range(n)]
        lines.append("")
        for i in range(n):  # every group used, so no warning hides the error
            lines += ["[[rule]]", 'name = "g%d"' % i, 'if = { sender_group = "G%d" }' % i,
                      'then = { add_header = { "X-G" = "%d" } }' % i, ""]
    elif kind == "inbound":
        for i in range(n):
            lines += ["[[inbound]]", 'name = "in%d"' % i, 'kind = "partner"',
                      'client_ips = ["10.%d.%d.0/24"]' % (i // 256, i % 256), ""]
    elif kind == "connectors":
        for i in range(n):
            lines += ["[[connector]]", 'name = "c%d"' % i, 'address_spaces = ["d%d.test"]' % i, ""]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("kind,cap,name", [("groups", 64, "MAX_GROUPS"), ("inbound", 32, "MAX_INBOUND"),
                                           ("connectors", 64, "MAX_CONNECTORS")])
def test_other_capacities_named(tmp_path, kind, cap, name):
    p = tmp_path / ("%s.toml" % kind)
    p.write_text(generated_tables(kind, cap + 1), encoding="utf-8")
    rc, out, err, info = check(str(p))
    assert rc == 1, info
    errs = diagnostics(str(p), out + err, "error")
    assert [m for _, _, m in errs if name in m], "no error names %s:\n%s" % (name, info)
    q = tmp_path / ("%s-full.toml" % kind)
    q.write_text(generated_tables(kind, cap), encoding="utf-8")
    rc, out, err, info = check(str(q))
    assert rc == 0, info


def test_rules_at_capacity_pass(tmp_path):
    p = tmp_path / "full.toml"
    p.write_text(generated_rules(1024), encoding="utf-8")
    rc, out, err, info = check(str(p))
    assert rc == 0, info
    assert any("rules" in ln.lower() and "1024" in ln for ln in (out + err).splitlines()), info


# ---------------------------------------------------------------------------
# warnings: exit 0
# ---------------------------------------------------------------------------

def test_warning_unused_group(tmp_path):
    old = 'Executives = ["ceo@contoso.com"]\n'
    path, line = variant(tmp_path, old, old + 'Unused = ["nobody@contoso.com"]\n')
    rc, out, err, info = check(path)
    assert rc == 0, info
    warns = diagnostics(path, out + err, "warning")
    assert warns, "no `%s:LINE:COL: warning:` line:\n%s" % (path, info)
    named = [w for w in warns if "Unused" in w[2]]
    assert named, "no warning names the group:\n" + info
    assert line + 1 in [w[0] for w in named], "the warning is not on the group's line %d:\n%s" % (line + 1, info)
    assert not diagnostics(path, out + err, "error"), info


def test_warning_same_address_space_and_cost(tmp_path):
    old = '[[connector]]\nname = "trend"'
    new = '[[connector]]\nname = "internet2"\naddress_spaces = ["*"]\n\n' + old
    path, line = variant(tmp_path, old, new)
    rc, out, err, info = check(path)
    assert rc == 0, info
    warns = diagnostics(path, out + err, "warning")
    # the tie is reported on internet2's "*", naming both and who wins
    tie = (line + 2, len('address_spaces = [') + 1,
           'connectors "internet" and "internet2" both have address space "*" and cost 10: '
           '"internet" (first in the file) is chosen')
    assert tie in warns, "expected %r among:\n%r\n%s" % (tie, warns, info)
    assert [w for w in warns if "internet2" in w[2]] == [
        (line + 1, len('name = ') + 1, 'connector "internet2" is never chosen: each of its address spaces '
                                       'is also on "internet" with a lower cost (or earlier in the file)'),
        tie], info
    assert not diagnostics(path, out + err, "error"), info


def test_no_tie_warning_for_different_costs(tmp_path):
    old = '[[connector]]\nname = "trend"'
    new = '[[connector]]\nname = "internet2"\naddress_spaces = ["*"]\ncost = 11\n\n' + old
    path, line = variant(tmp_path, old, new)
    rc, out, err, info = check(path)
    assert rc == 0, info
    assert not [w for w in diagnostics(path, out + err, "warning") if "both have address space" in w[2]], info


CMT_ANON_WARNING = (
    '[cmt] from_inbound "partner-fabrikam" is not an organization connector: its mail is anonymous, '
    'so the header firewall strips the stamp "X-MS-Exchange-Organization-CentralizedMailFlowOverrideSet" '
    '(trusted prefix "X-MS-Exchange-Organization-") and a message from it is stamped and re-routed '
    'again on every pass')


def test_warning_cmt_from_a_partner_connector(tmp_path):
    # the sample's firewall strips X-MS-Exchange-Organization-* from anonymous mail,
    # so CMT never sees mail from a partner connector as stamped
    old = 'from_inbound = ["exchange-online"]'
    path, line = variant(tmp_path, old, 'from_inbound = ["exchange-online", "partner-fabrikam"]')
    rc, out, err, info = check(path)
    assert rc == 0, info
    col = len('from_inbound = ["exchange-online", ') + 1
    assert diagnostics(path, out + err, "warning") == [(line, col, CMT_ANON_WARNING)], info
    assert not diagnostics(path, out + err, "error"), info


def test_warning_cmt_from_a_partner_connector_default_firewall(tmp_path):
    # no [header_firewall] section: the default trusted prefix strips the stamp too
    s = sample_text()
    start = s.index("[header_firewall]")
    end = s.index("[limits]")
    s = s[:start] + s[end:]
    s = s.replace('from_inbound = ["exchange-online"]', 'from_inbound = ["partner-fabrikam"]')
    p = tmp_path / "rules.toml"
    p.write_text(s, encoding="utf-8")
    line = s[:s.index('from_inbound = ["partner-fabrikam"]')].count("\n") + 1
    rc, out, err, info = check(str(p))
    assert rc == 0, info
    warns = diagnostics(str(p), out + err, "warning")
    assert (line, len('from_inbound = [') + 1, CMT_ANON_WARNING) in warns, info


def test_no_cmt_warning_when_the_stamp_survives(tmp_path):
    # a firewall section without trusted_prefixes strips nothing: the stamp survives
    old = 'trusted_prefixes = ["X-MS-Exchange-Organization-"]\n'
    s = sample_text()
    assert s.count(old) == 1
    s = s.replace(old, "").replace('from_inbound = ["exchange-online"]',
                                   'from_inbound = ["exchange-online", "partner-fabrikam"]')
    p = tmp_path / "rules.toml"
    p.write_text(s, encoding="utf-8")
    rc, out, err, info = check(str(p))
    assert rc == 0, info
    assert not [w for w in diagnostics(str(p), out + err, "warning") if "from_inbound" in w[2]], info


def test_version_matches_trace_policy_version():
    import json
    rc, out, err, info = check("config/rules.toml")
    assert rc == 0, info
    p = subprocess.run([SLUICE_BIN, "trace", os.path.join(HERE, "policy", "plain.eml"), "--from", "a@example.org",
                        "--to", "user@contoso.com", "--peer", "192.0.2.1", "--rules", RULES, "--json"],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=20, cwd=ROOT)
    assert p.returncode == 0, p
    version = json.loads(p.stdout)["policy_version"]
    assert version.lower() in (out + err).lower(), "trace's policy_version %s not in:\n%s" % (version, info)


def test_crlf_file_passes_and_lines_still_count(tmp_path):
    # a rule file written on Windows: CRLF is valid TOML
    p = tmp_path / "crlf.toml"
    p.write_bytes(sample_text().replace("\n", "\r\n").encode("utf-8"))
    rc, out, err, info = check(str(p))
    assert rc == 0, info
    path, line = variant(tmp_path, "priority = 3\n", "prority = 3\n", name="bad.toml")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    q = tmp_path / "bad-crlf.toml"
    q.write_bytes(text.replace("\n", "\r\n").encode("utf-8"))
    rc, out, err, info = check(str(q))
    assert rc == 1, info
    assert line in [ln for ln, _, _ in diagnostics(str(q), out + err, "error")], info
