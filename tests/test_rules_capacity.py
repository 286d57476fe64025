"""A rule file at every capacity plus one (issue 14, item 4): each capacity
of src/engine/limits.rs that a rule file can reach gets a clear
`FILE:LINE:COL: error:` from `sluice rules check` (exit 1), never a panic.
Generators below make each file. MAX_RULES, MAX_GROUPS, MAX_INBOUND and
MAX_CONNECTORS are in test_rules_check.py (with the files at capacity);
MAX_AGENTS cannot be reached from a rule file (each known agent at most
once, an unknown or repeated one is an error of its own)."""

import pytest

from test_rules_check import check, diagnostics

HEAD = ['version = 1', '', '[domains]', 'accepted = ["a.test"]', '',
        '[[connector]]', 'name = "internet"', 'address_spaces = ["*"]', '']


def rule(i, cond, then='{ use_connector = "internet" }', extra=()):
    return ['[[rule]]', 'name = "r%d"' % i, 'if = %s' % cond, 'then = %s' % then, *extra, '']


def condsets():  # 683 rules of 3 sets (if + two excepts): 2049 > 2048
    out = []
    for i in range(683):
        out += rule(i, '{ recipient = "r%d@a.test" }' % i,
                    extra=['except = [{ sender = "s%d@a.test" }, { sender = "t%d@a.test" }]' % (i, i)])
    return out


def conditions():  # 1024 rules of 4 conditions, one of 5: 4097 > 4096
    out = []
    for i in range(1024):
        c = ('sender = "s%d@a.test", recipient = "r%d@a.test", sender_location = "inside", '
             'recipient_location = "outside"' % (i, i))
        if i == 0:
            c += ', inbound = "x"'
        out += rule(i, '{ %s }' % c)
    return ['[[inbound]]', 'name = "x"', 'kind = "partner"', 'client_ips = ["10.0.0.0/8"]', ''] + out


def actions():  # 1024 rules of 2 actions, one of 3: 2049 > 2048
    out = []
    for i in range(1024):
        t = 'add_header = { "X-A" = "1" }, use_connector = "internet"'
        if i == 0:
            t += ', remove_header = "X-B"'
        out += rule(i, '{ recipient = "r%d@a.test" }' % i, then='{ %s }' % t)
    return out


def spaces():
    return ['[[connector]]', 'name = "many"',
            'address_spaces = [%s]' % ", ".join('"d%d.test"' % i for i in range(257)), '']


def nets():
    return ['[[inbound]]', 'name = "many"', 'kind = "partner"',
            'client_ips = [%s]' % ", ".join('"10.%d.%d.0/24"' % (i // 256, i % 256) for i in range(257)), '']


def rewrites():
    return ['[[rewrite]]', 'direction = "inbound"',
            'map = { %s }' % ", ".join('"u%d@a.test" = "v@a.test"' % i for i in range(4097)), '']


def renames():
    return ['[header_firewall]', 'trusted_prefixes = ["X-T-"]',
            'rename_untrusted = { %s }' % ", ".join('"X-H%d" = "X-H%d-Untrusted"' % (i, i) for i in range(17)),
            '']


def group(members):
    return (['[groups]', 'G = [%s]' % ", ".join('"%s"' % m for m in members), '']
            + rule(0, '{ sender_group = "G" }'))


def items():  # one list of 4097 short addresses
    return group(["u%d@a" % i for i in range(4097)])


def strings():  # 1700 addresses of 40 octets: 68,000 > 65,536
    return group(["%s%04d@a.test" % ("x" * 29, i) for i in range(1700)])


def dfas():
    out = []
    for i in range(257):
        out += rule(i, "{ header = \"X-T\", header_value_matches = '^v%d$' }" % i)
    return out


def dfa_bytes():  # a Unicode \w{2} makes a DFA of about 230 KiB: two exceed 256 KiB
    out = []
    for i in range(2):
        out += rule(i, "{ header = \"X-T\", header_value_matches = '\\w{2}%d' }" % i)
    return out


def dns_lists():
    return ['[connection_filter]',
            'block_lists = [%s]' % ", ".join('{ zone = "bl%d.example" }' % i for i in range(9)), '']


def list_codes():
    return ['[connection_filter]',
            'block_lists = [{ zone = "bl.example", codes = [%s] }]'
            % ", ".join('"127.0.0.%d"' % (i + 2) for i in range(9)), '']


@pytest.mark.parametrize("make,name", [
    (condsets, "MAX_CONDSETS"), (conditions, "MAX_CONDITIONS"), (actions, "MAX_ACTIONS"),
    (spaces, "MAX_SPACES"), (nets, "MAX_NETS"), (rewrites, "MAX_REWRITES"), (renames, "MAX_RENAMES"),
    (items, "MAX_ITEMS"), (strings, "MAX_STRING_BYTES"), (dfas, "MAX_DFAS"), (dfa_bytes, "MAX_DFA_BYTES"),
    (dns_lists, "MAX_DNS_LISTS"), (list_codes, "MAX_LIST_CODES"),
], ids=lambda x: x if isinstance(x, str) else x.__name__)
def test_table_capacity_plus_one(tmp_path, make, name):
    p = tmp_path / "over.toml"
    p.write_text("\n".join(HEAD + make()) + "\n", encoding="utf-8")
    rc, out, err, info = check(str(p), timeout=60)
    assert "panicked" not in out + err, info
    assert rc == 1, info
    errs = diagnostics(str(p), out + err, "error")
    named = [e for e in errs if name in e[2]]
    assert named, "no FILE:LINE:COL error names %s:\n%s" % (name, info[:3000])
    line, col, _ = named[0]
    assert line >= 1 and col >= 1, named[0]


# Scalar capacities: a value one past the limit is an error at its own line.
@pytest.mark.parametrize("section,key,value,why", [
    ("limits", "max_recipients", "1001", "MAX_RECIPIENTS"),
    ("recipient_filter", "tarpit", '"60001ms"', "MAX_TARPIT_MS"),
    ("recipient_filter", "max_unknown", "20", "MAX_ERRORS - 1"),
    ("recipient_filter", "call_ahead_timeout", '"61s"', "MAX_CALL_AHEAD_TIMEOUT"),
    ("connection_filter", "block_lists", '[{ zone = "%s.example" }]' % ("z" * 182), "MAX_DNS_NAME"),
], ids=lambda x: x if " " not in x else None)
def test_scalar_capacity_plus_one(tmp_path, section, key, value, why):
    lines = HEAD + ["[%s]" % section, "%s = %s" % (key, value)]
    at = len(lines)
    p = tmp_path / "over.toml"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rc, out, err, info = check(str(p))
    assert "panicked" not in out + err, info
    assert rc == 1, "%s one past %s passed:\n%s" % (key, why, info)
    errs = diagnostics(str(p), out + err, "error")
    assert [e for e in errs if e[0] == at], "no error on line %d (%s):\n%s" % (at, key, info)
