"""Rule files for the tests: config/rules.toml (the normative sample) and
variants of it generated at test time, each by a small, explicit edit (replace
one text, insert after one, append a section). An edit whose anchor text is
not in the sample exactly once fails loudly (`VariantError`), so a changed
sample never silently yields an unchanged "variant"."""

import atexit
import os
import shutil
import tempfile

from helpers.daemon import ROOT

SAMPLE = os.path.join(ROOT, "config", "rules.toml")


class VariantError(AssertionError):
    """An edit's anchor is missing from (or not unique in) the sample."""


def sample_text():
    """The text of config/rules.toml."""
    with open(SAMPLE, encoding="utf-8") as f:
        return f.read()


def _anchor(text, old):
    """The position of `old`, which must occur exactly once in `text`."""
    n = text.count(old)
    if n != 1:
        raise VariantError("variant anchor %r occurs %d times in config/rules.toml (want 1): "
                           "update the variant in tests/helpers/rules.py" % (old, n))
    return text.index(old)


def replace(old, new):
    """Edit: `old` (exactly once in the text) becomes `new`."""
    def edit(text):
        _anchor(text, old)
        return text.replace(old, new)
    return edit


def insert_after(anchor, new):
    """Edit: `new` goes right after `anchor` (exactly once in the text)."""
    def edit(text):
        pos = _anchor(text, anchor) + len(anchor)
        return text[:pos] + new + text[pos:]
    return edit


def append(section):
    """Edit: `section` goes at the end (after a blank line)."""
    def edit(text):
        if not text.endswith("\n"):
            raise VariantError("config/rules.toml does not end with a newline")
        return text + "\n" + section
    return edit


# The variants, by name: the edits that make each from the sample.
VARIANTS = {
    # The sample with max_hops = 5 (hop-count tests need few Received: lines).
    "max_hops_5": [replace("max_hops = 30                    #", "max_hops = 5                     #")],
    # Rule 1 ("Route via Trend") switched off.
    "rule_disabled": [insert_after('name = "Route via Trend"\npriority = 1\n', "enabled = false\n")],
    # A TOML syntax error: an unterminated string.
    "syntax_error": [replace('tls = "required"\n', 'tls = "required\n')],
    # The CMT agent switched off.
    "cmt_disabled": [append('# variant: the CMT agent switched off\n[[agent]]\nname = "cmt"\nenabled = false\n')],
    # Transport rules moved after CMT on their event.
    "agent_priority": [append('# variant: transport rules moved after CMT on their event\n'
                              '[[agent]]\nname = "transport_rules"\npriority = 3\n')],
    # A blocked network.
    "connection_filter": [append('# variant: a blocked network\n[connection_filter]\n'
                                 'blocked_networks = ["198.51.100.0/24"]\n')],
    # The trend connector opportunistic, so a plain sink can stand in for it.
    "opportunistic": [replace('smart_hosts = ["hes.trend.example:25"]\ntls = "required"',
                              'smart_hosts = ["hes.trend.example:25"]\ntls = "opportunistic"')],
    # exchange-onprem moved off loopback: a client on 127.0.0.1 is anonymous.
    "onprem_off_loopback": [replace('client_ips = ["127.0.0.1/32", "::1/128"]', 'client_ips = ["127.0.0.9/32"]')],
}


def variant_text(name, *more):
    """The text of variant `name` (None: the sample), then the `more` edits."""
    text = sample_text()
    for edit in (VARIANTS[name] if name else []) + list(more):
        text = edit(text)
    return text


_DIR = []


def variant(name, *more):
    """The path of a file holding variant_text(name, *more), written now into
    a directory removed when the test run ends."""
    if not _DIR:
        _DIR.append(tempfile.mkdtemp(prefix="sluice-rules-"))
        atexit.register(shutil.rmtree, _DIR[0], True)
    path = os.path.join(_DIR[0], "rules_%s_%d.toml" % (name or "sample", len(os.listdir(_DIR[0]))))
    with open(path, "w", encoding="utf-8") as f:
        f.write(variant_text(name, *more))
    return path
