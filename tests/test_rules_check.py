"""`sluice rules check FILE`, black box (docs/INTERFACES.md, "Policy (issue 3)").

Prints table sizes against capacities, the blob size and version, then
`FILE:LINE:COL: error: ...` / `FILE:LINE:COL: warning: ...`. Exit 0 without
errors (warnings allowed), 1 on errors. The normative sample
(config/rules.toml = ../shared/rules.sample.toml) must pass; each malformed
variant below is the sample with one change, and the error must name the line
of that change.
"""

import os
import re
import subprocess

import pytest

from conftest import SLUICE_BIN

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RULES = os.path.join(ROOT, "config", "rules.toml")
SHARED_SAMPLE = os.path.join(os.path.dirname(ROOT), "shared", "rules.sample.toml")


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


def test_shared_sample_passes():
    if not os.path.exists(SHARED_SAMPLE):
        pytest.skip("no ../shared/rules.sample.toml")
    rc, out, err, info = check(SHARED_SAMPLE)
    assert rc == 0, info


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
]


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
    assert [w for w in warns if "Unused" in w[2]], "no warning names the group:\n" + info
    assert not diagnostics(path, out + err, "error"), info


def test_warning_same_address_space_and_cost(tmp_path):
    old = '[[connector]]\nname = "trend"'
    new = '[[connector]]\nname = "internet2"\naddress_spaces = ["*"]\n\n' + old
    path, line = variant(tmp_path, old, new)
    rc, out, err, info = check(path)
    assert rc == 0, info
    warns = diagnostics(path, out + err, "warning")
    assert warns, "no `%s:LINE:COL: warning:` line:\n%s" % (path, info)
    assert not diagnostics(path, out + err, "error"), info
