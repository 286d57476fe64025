"""The policy engine, black box: `sluice trace MESSAGE.eml ... --rules FILE --json`
against the normative rule file config/rules.toml (= ../shared/rules.sample.toml).

Each test states one decision the sample's comments (or the seeds they cite)
make, and checks the JSON of docs/INTERFACES.md ("Policy (issue 3)"). Fixtures
(.eml messages with CRLF line endings, rule-file variants) are in tests/policy/.

Peers: 192.0.2.1 anonymous Internet client; 127.0.0.2 exchange-online and
127.0.0.1 exchange-onprem (organization: originating); 127.0.0.3
partner-fabrikam (partner: anonymous).
"""

import json
import os
import re
import subprocess

import pytest

from helpers.daemon import SLUICE_BIN
from helpers.smtp import check as smtp_check, queued_id

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIX = os.path.join(HERE, "policy")
RULES = os.path.join(ROOT, "config", "rules.toml")

ANON = "192.0.2.1"
ONLINE = "127.0.0.2"
ONPREM = "127.0.0.1"
PARTNER = "127.0.0.3"

STAMP = "X-MS-Exchange-Organization-CentralizedMailFlowOverrideSet"
TREND_HOP = {"smart_hosts": ["hes.trend.example:25"]}
ONPREM_HOP = {"smart_hosts": ["exch1.contoso.internal:25", "exch2.contoso.internal:25"]}
FABRIKAM_HOP = {"smart_hosts": ["mx1.fabrikam.example", "mx2.fabrikam.example:2525"]}
JOURNAL_HOP = {"smart_hosts": ["archive.contoso.internal"]}
EXE_REFUSED = "550 5.7.1 Executable attachments are refused"
RELAY_DENIED = "554 5.7.1 Relay access denied"

TOP_KEYS = ("result", "reply", "policy_version", "session", "sender", "recipients", "headers_added",
            "headers_removed", "headers_renamed", "headers_rewritten", "log")
RCPT_KEYS = ("original", "final", "connector", "next_hop", "override", "override_domain", "rule",
             "added_by", "rejected", "reason")


def fx(name):
    p = os.path.join(FIX, name)
    assert os.path.exists(p), p
    return p


class Trace:
    """One `sluice trace` run: the process and (with --json) the parsed document."""

    def __init__(self, args, proc, doc):
        self.args = args
        self.proc = proc
        self.rc = proc.returncode
        self.stdout = proc.stdout.decode("utf-8", "replace")
        self.stderr = proc.stderr.decode("utf-8", "replace")
        self.doc = doc

    def __repr__(self):
        return "sluice %s\n-> exit %s\nstdout: %s\nstderr: %s" % (
            " ".join(self.args), self.rc, self.stdout[:6000], self.stderr[:3000])

    def __getitem__(self, k):
        return self.doc[k]

    def rcpt(self, original):
        found = [r for r in self.doc["recipients"] if r["original"] == original and not r["added_by"]]
        assert len(found) == 1, "recipient %s listed %d times:\n%r" % (original, len(found), self)
        return found[0]

    def added(self):
        return [r for r in self.doc["recipients"] if r["added_by"]]

    def log_lines(self, *needles):
        """Log lines that contain every needle."""
        return [ln for ln in self.doc["log"] if all(n in ln for n in needles)]

    def header_added(self, name):
        return [h for h in self.doc["headers_added"] if h["name"].lower() == name.lower()]


def run_raw(args, timeout=20):
    return subprocess.run([SLUICE_BIN, *args], stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=timeout, cwd=ROOT)


def trace(eml, frm, to, peer=None, rules=RULES, extra=(), as_json=True, expect_rc=None):
    """Run trace; check the document's shape and its consistency with the exit status."""
    if isinstance(to, str):
        to = [to]
    assert os.path.exists(SLUICE_BIN), "no sluice binary at %s (set SLUICE_BIN)" % SLUICE_BIN
    args = ["trace", fx(eml) if not os.path.isabs(eml) else eml, "--from", frm]
    for t in to:
        args += ["--to", t]
    if peer is not None:
        args += ["--peer", peer]
    if rules is not None:
        args += ["--rules", rules]
    args += list(extra)
    if as_json:
        args.append("--json")
    proc = run_raw(args)
    t = Trace(args, proc, None)
    if expect_rc is not None:
        assert t.rc == expect_rc, "expected exit %d:\n%r" % (expect_rc, t)
    if as_json and t.rc in (0, 1):
        try:
            t.doc = json.loads(t.stdout)
        except ValueError as e:
            raise AssertionError("stdout is not one JSON document (%s):\n%r" % (e, t))
        check_shape(t, to)
    return t


def check_shape(t, to):
    d = t.doc
    assert isinstance(d, dict), t
    for k in TOP_KEYS:
        assert k in d, "trace JSON lacks %r:\n%r" % (k, t)
    assert d["result"] in ("Routed", "NoAction", "Rejected"), t
    assert isinstance(d["policy_version"], str) and re.fullmatch(r"[0-9a-fA-F]{16}", d["policy_version"]), t
    for k in ("peer", "inbound", "originating", "tls_name"):
        assert k in d["session"], "session lacks %r:\n%r" % (k, t)
    assert set(d["sender"]) >= {"original", "final"}, t
    for k in ("headers_added", "headers_removed", "headers_renamed", "headers_rewritten", "log"):
        assert isinstance(d[k], list), "%s is not a list:\n%r" % (k, t)
    assert all(isinstance(x, str) for x in d["log"]), t
    assert all(isinstance(x, str) for x in d["headers_removed"]), t
    for h in d["headers_added"]:
        assert set(h) >= {"name", "value"}, t
    for h in d["headers_renamed"]:
        assert set(h) >= {"from", "to"}, t
    for h in d["headers_rewritten"]:
        assert set(h) >= {"name", "from", "to"}, t
    assert isinstance(d["recipients"], list), t
    for r in d["recipients"]:
        for k in RCPT_KEYS:
            assert k in r, "recipient lacks %r:\n%r" % (k, t)
        assert r["override"] in (None, "route_to", "use_connector", "cmt"), t
        assert isinstance(r["reason"], str) and r["reason"].strip(), t
        if r["rejected"] is not None:
            assert r["connector"] is None and r["next_hop"] is None, "a rejected recipient has a route:\n%r" % t
        elif t.rc == 0:
            assert isinstance(r["connector"], str) and r["connector"], t
            assert isinstance(r["next_hop"], dict) and len(r["next_hop"]) == 1, t
        if r["override"] is None:
            assert r["override_domain"] is None, t
    # every --to is listed, in order, before any recipient a rule added
    # (a session refused as a whole, e.g. at connect, may list none)
    originals = [r["original"] for r in d["recipients"] if not r["added_by"]]
    if not (t.rc == 1 and not originals):
        assert originals == list(to), "recipients %r, sent %r:\n%r" % (originals, to, t)
    # exit status, result and reply agree
    if t.rc == 1:
        assert d["result"] == "Rejected", t
        assert isinstance(d["reply"], str) and re.match(r"^[45]\d\d [45]\.\d{1,3}\.\d{1,3} ", d["reply"]), t
    else:
        assert d["result"] != "Rejected", t
        assert d["reply"] is None, t
        overridden = any(r["override"] for r in d["recipients"] if r["rejected"] is None)
        assert d["result"] == ("Routed" if overridden else "NoAction"), t
        assert any(r["rejected"] is None for r in d["recipients"]), t


def assert_route(t, rcpt, connector, next_hop, override=None, override_domain=None, rule=None):
    r = t.rcpt(rcpt) if isinstance(rcpt, str) else rcpt
    got = {k: r[k] for k in ("connector", "next_hop", "override", "rejected")}
    want = {"connector": connector, "next_hop": next_hop, "override": override, "rejected": None}
    assert got == want, "recipient %s: got %r, want %r\n%r" % (r["original"], got, want, t)
    if override is None:
        assert r["override_domain"] is None and r["rule"] is None, "%s: %r\n%r" % (r["original"], r, t)
    if override_domain is not None:
        assert r["override_domain"] == override_domain, "%s: %r\n%r" % (r["original"], r, t)
    if rule is not None:
        assert r["rule"] == rule, "%s: %r\n%r" % (r["original"], r, t)


# ---------------------------------------------------------------------------
# 0. Attribution: who the session is
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("peer,inbound,originating", [
    (ANON, None, False),
    (ONLINE, "exchange-online", True),
    (ONPREM, "exchange-onprem", True),
    ("::1", "exchange-onprem", True),
    (PARTNER, "partner-fabrikam", False),
    ("2001:db8::1", None, False),
    ("127.0.0.4", None, False),
])
def test_session_attribution_by_ip(peer, inbound, originating):
    t = trace("plain.eml", "alice@contoso.com", "user@contoso.com", peer=peer, expect_rc=0)
    assert t["session"] == {"peer": peer, "inbound": inbound, "originating": originating, "tls_name": None}, t


def test_ipv4_mapped_peer_attributed_like_ipv4():
    # a dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d
    t = trace("plain.eml", "alice@contoso.com", "x@gmail.com", peer="::ffff:127.0.0.2", expect_rc=0)
    assert t["session"]["inbound"] == "exchange-online" and t["session"]["originating"] is True, t
    assert_route(t, "x@gmail.com", "onprem", ONPREM_HOP, override="cmt", override_domain="contoso.com")


def test_default_peer_is_loopback_onprem():
    t = trace("plain.eml", "alice@contoso.com", "user@contoso.com", expect_rc=0)
    assert t["session"]["peer"] == "127.0.0.1", t
    assert t["session"]["inbound"] == "exchange-onprem" and t["session"]["originating"] is True, t


def test_attribution_by_tls_certificate_name_makes_cmt_apply():
    # "either one attributes": an unknown IP presenting Exchange Online's certificate name
    t = trace("plain.eml", "alice@contoso.com", "x@gmail.com", peer=ANON,
              extra=["--tls-name", "mail.protection.outlook.com"], expect_rc=0)
    assert t["session"] == {"peer": ANON, "inbound": "exchange-online", "originating": True,
                            "tls_name": "mail.protection.outlook.com"}, t
    assert_route(t, "x@gmail.com", "onprem", ONPREM_HOP, override="cmt", override_domain="contoso.com")


def test_tls_name_attribution_ignores_case():
    t = trace("plain.eml", "alice@contoso.com", "x@gmail.com", peer=ANON,
              extra=["--tls-name", "Mail.Protection.Outlook.COM"], expect_rc=0)
    assert t["session"]["inbound"] == "exchange-online", t


@pytest.mark.parametrize("name,inbound", [
    ("mail.protection.outlook.com", "exchange-online"),
    ("EU1.Protection.Outlook.com", "exchange-online"),
    ("protection.outlook.com", None),            # no label for the star
    ("a.mail.protection.outlook.com", None),     # the star is exactly one label
    ("mail.protection.outlook.com.evil.example", None),
    ("mailprotection.outlook.com", None),
])
def test_wildcard_tls_certificate_name_fits_one_left_most_label(tmp_path, name, inbound):
    text = open(RULES, encoding="utf-8").read()
    old = 'tls_certificate_name = "mail.protection.outlook.com"'
    assert text.count(old) == 1
    p = tmp_path / "rules.toml"
    p.write_text(text.replace(old, 'tls_certificate_name = "*.protection.outlook.com"'), encoding="utf-8")
    t = trace("plain.eml", "alice@contoso.com", "user@contoso.com", peer=ANON, rules=str(p),
              extra=["--tls-name", name], expect_rc=0)
    assert t["session"]["inbound"] == inbound, t
    assert t["session"]["originating"] is (inbound is not None), t


def test_unknown_tls_name_stays_anonymous():
    t = trace("plain.eml", "alice@contoso.com", "x@gmail.com", peer=ANON,
              extra=["--tls-name", "mail.evil.example"], expect_rc=1)
    assert t["session"]["inbound"] is None and t["session"]["originating"] is False, t
    assert t["session"]["tls_name"] == "mail.evil.example", t
    assert t.rcpt("x@gmail.com")["rejected"] == RELAY_DENIED, t


def test_policy_version_is_stable_and_follows_the_file():
    a = trace("plain.eml", "alice@contoso.com", "user@contoso.com", peer=ONPREM, expect_rc=0)
    b = trace("rtm_on.eml", "bob@contoso.com", "x@gmail.com", peer=ONPREM, expect_rc=0)
    c = trace("plain.eml", "alice@contoso.com", "user@contoso.com", peer=ONPREM,
              rules=fx("rules_cmt_disabled.toml"), expect_rc=0)
    assert a["policy_version"] == b["policy_version"], (a, b)
    assert a["policy_version"] != c["policy_version"], "two different rule files, one version:\n%r\n%r" % (a, c)


# ---------------------------------------------------------------------------
# 1. The header rule (seed 000, rule #1 "Route via Trend")
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("peer", [ONPREM, ONLINE])
def test_header_rule_routes_via_trend(peer):
    t = trace("rtm_on.eml", "alice@contoso.com", "someone@gmail.com", peer=peer, expect_rc=0)
    assert t["result"] == "Routed", t
    r = t.rcpt("someone@gmail.com")
    assert r["final"] == "someone@gmail.com", t  # route_to changes the route, never the address
    assert_route(t, r, "trend", TREND_HOP, override="route_to", override_domain="trend.local",
                 rule="Route via Trend")
    assert t.log_lines("Found header [x-routethroughtm: On]"), t
    rerouted = t.log_lines("Rerouted to [trend.local] via [UseOverrideDomain]")
    assert rerouted, t
    assert any("someone@gmail.com" in ln for ln in rerouted), "the reroute line names no recipient:\n%r" % t
    if peer == ONLINE:
        # a transport rule's route_to wins over CMT
        assert t.rcpt("someone@gmail.com")["override"] == "route_to", t


@pytest.mark.parametrize("eml", ["rtm_public.eml", "rtm_PUBLIC.eml"])
def test_header_rule_public_label_is_not_rerouted(eml):
    t = trace(eml, "alice@contoso.com", "someone@gmail.com", peer=ONPREM, expect_rc=0)
    assert_route(t, "someone@gmail.com", "internet", {"mx": "gmail.com"})
    assert t["result"] == "NoAction", t
    assert not t.log_lines("Rerouted to [trend.local]"), t
    assert [ln for ln in t["log"] if "x-routethroughtm" in ln.lower()], \
        "the rule log says nothing about the header:\n%r" % t


def test_header_rule_pattern_is_anchored():
    # '(?i)^public$' excludes exactly "public": "publicly" is rerouted
    t = trace("rtm_publicly.eml", "alice@contoso.com", "someone@gmail.com", peer=ONPREM, expect_rc=0)
    assert_route(t, "someone@gmail.com", "trend", TREND_HOP, override="route_to",
                 override_domain="trend.local", rule="Route via Trend")
    assert t.log_lines("Found header [x-routethroughtm: publicly]"), t


def test_header_rule_header_absent():
    t = trace("plain.eml", "alice@contoso.com", "someone@gmail.com", peer=ONPREM, expect_rc=0)
    assert_route(t, "someone@gmail.com", "internet", {"mx": "gmail.com"})
    assert t["result"] == "NoAction", t
    assert t.log_lines("[x-routethroughtm] was not found"), t


def test_header_rule_public_but_sender_in_trendusers_routed_by_rule_2():
    t = trace("rtm_public.eml", "jaap@contoso.com", "someone@gmail.com", peer=ONPREM, expect_rc=0)
    assert_route(t, "someone@gmail.com", "trend", TREND_HOP, override="route_to",
                 override_domain="trend.local", rule="Sales via Trend")
    assert t["result"] == "Routed", t


def test_header_rule_exception_secure_domains():
    to = ["a@gmail.com", "b@secure.com", "c@secure.eu"]
    t = trace("rtm_on.eml", "alice@contoso.com", to, peer=ONPREM, expect_rc=0)
    assert t["result"] == "Routed", t
    assert_route(t, "a@gmail.com", "trend", TREND_HOP, override="route_to",
                 override_domain="trend.local", rule="Route via Trend")
    assert_route(t, "b@secure.com", "internet", {"mx": "secure.com"})
    assert_route(t, "c@secure.eu", "internet", {"mx": "secure.eu"})
    for r in ("b@secure.com", "c@secure.eu"):
        assert not t.log_lines(r, "Rerouted"), "%s logged as rerouted:\n%r" % (r, t)
    assert [ln for ln in t.log_lines("Rerouted to [trend.local] via [UseOverrideDomain]") if "a@gmail.com" in ln], t


@pytest.mark.parametrize("rcpt", ["b@Secure.Com", "b@SECURE.EU"])
def test_header_rule_exception_ignores_domain_case(rcpt):
    t = trace("rtm_on.eml", "alice@contoso.com", rcpt, peer=ONPREM, expect_rc=0)
    r = t.rcpt(rcpt)
    assert r["override"] is None and r["connector"] == "internet", t


@pytest.mark.parametrize("rcpt", ["b@notsecure.com", "b@secure.com.example.org", "b@secure.community"])
def test_header_rule_exception_is_the_exact_domain(rcpt):
    t = trace("rtm_on.eml", "alice@contoso.com", rcpt, peer=ONPREM, expect_rc=0)
    assert_route(t, rcpt, "trend", TREND_HOP, override="route_to", override_domain="trend.local",
                 rule="Route via Trend")


@pytest.mark.parametrize("eml", ["rtm_folded.eml", "rtm_lowercase_name.eml", "rtm_empty.eml"])
def test_header_rule_header_forms(eml):
    # a folded field, a lower-case field name, an empty value: the header is present
    # and its value is not "public"
    t = trace(eml, "alice@contoso.com", "someone@gmail.com", peer=ONPREM, expect_rc=0)
    assert_route(t, "someone@gmail.com", "trend", TREND_HOP, override="route_to",
                 override_domain="trend.local", rule="Route via Trend")


def test_header_rule_ignores_the_body():
    t = trace("rtm_in_body.eml", "alice@contoso.com", "someone@gmail.com", peer=ONPREM, expect_rc=0)
    assert_route(t, "someone@gmail.com", "internet", {"mx": "gmail.com"})
    assert t.log_lines("[x-routethroughtm] was not found"), t


# ---------------------------------------------------------------------------
# 2. Source-based routing by group (rule #2 "Sales via Trend")
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("sender", ["jaap@contoso.com", "anyone@sales.contoso.com", "jaap@CONTOSO.COM"])
def test_group_sender_to_outside_routed_via_trend(sender):
    t = trace("plain.eml", sender, "x@gmail.com", peer=ONPREM, expect_rc=0)
    assert_route(t, "x@gmail.com", "trend", TREND_HOP, override="route_to",
                 override_domain="trend.local", rule="Sales via Trend")
    assert t["result"] == "Routed", t


@pytest.mark.parametrize("sender", ["jaap@contoso.com", "anyone@sales.contoso.com"])
def test_group_sender_to_inside_not_overridden(sender):
    t = trace("plain.eml", sender, "user@contoso.com", peer=ONPREM, expect_rc=0)
    assert_route(t, "user@contoso.com", "onprem", ONPREM_HOP)
    assert t["result"] == "NoAction", t


def test_group_sender_mixed_recipients():
    t = trace("plain.eml", "jaap@contoso.com", ["x@gmail.com", "user@contoso.com"], peer=ONPREM, expect_rc=0)
    assert_route(t, "x@gmail.com", "trend", TREND_HOP, override="route_to",
                 override_domain="trend.local", rule="Sales via Trend")
    assert_route(t, "user@contoso.com", "onprem", ONPREM_HOP)


@pytest.mark.parametrize("sender", ["jaapx@contoso.com", "anyone@notsales.contoso.com", "anyone@contoso.com",
                                    "anyone@eu.sales.contoso.com", "jaap@contoso.com.example.org"])
def test_non_group_sender_not_routed_via_trend(sender):
    t = trace("plain.eml", sender, "x@gmail.com", peer=ONPREM, expect_rc=0)
    assert_route(t, "x@gmail.com", "internet", {"mx": "gmail.com"})


# ---------------------------------------------------------------------------
# 3. Criteria-based routing with its loop guard (seed 002, rule #3)
# ---------------------------------------------------------------------------

def test_cloud_to_cloud_via_onprem():
    t = trace("plain.eml", "alice@contoso.com", "user@contoso.com", peer=ONLINE, expect_rc=0)
    assert_route(t, "user@contoso.com", "onprem", ONPREM_HOP, override="use_connector",
                 rule="Cloud to cloud via on-premises")
    assert t["result"] == "Routed", t


@pytest.mark.parametrize("eml", ["originator_contoso.eml", "originator_eu.eml", "originator_us.eml",
                                 "originator_upper.eml", "originator_lowercase_name.eml"])
def test_cloud_to_cloud_loop_guard_exception(eml):
    t = trace(eml, "alice@contoso.com", "user@contoso.com", peer=ONLINE, expect_rc=0)
    assert_route(t, "user@contoso.com", "onprem", ONPREM_HOP)  # by the "--" address space
    assert t["result"] == "NoAction", t


@pytest.mark.parametrize("eml", ["originator_fabrikam.eml", "originator_evil.eml"])
def test_cloud_to_cloud_foreign_originator_still_overridden(eml):
    t = trace(eml, "alice@contoso.com", "user@contoso.com", peer=ONLINE, expect_rc=0)
    assert_route(t, "user@contoso.com", "onprem", ONPREM_HOP, override="use_connector",
                 rule="Cloud to cloud via on-premises")


def test_cloud_to_cloud_only_from_exchange_online():
    t = trace("plain.eml", "alice@contoso.com", "user@contoso.com", peer=ONPREM, expect_rc=0)
    assert_route(t, "user@contoso.com", "onprem", ONPREM_HOP)


# ---------------------------------------------------------------------------
# 4. Centralized mail flow (seed 002, the CMFA)
# ---------------------------------------------------------------------------

def test_cmt_stamps_and_overrides_once():
    t = trace("plain.eml", "alice@contoso.com", "x@gmail.com", peer=ONLINE, expect_rc=0)
    assert {"name": STAMP, "value": ""} in t["headers_added"], t
    assert len(t.header_added(STAMP)) == 1, t
    assert_route(t, "x@gmail.com", "onprem", ONPREM_HOP, override="cmt", override_domain="contoso.com")
    assert t.rcpt("x@gmail.com")["rule"] is None, t
    assert t["result"] == "Routed", t


def test_cmt_two_outside_recipients_one_stamp():
    t = trace("plain.eml", "alice@contoso.com", ["x@gmail.com", "y@example.org"], peer=ONLINE, expect_rc=0)
    assert len(t.header_added(STAMP)) == 1, t
    for r in ("x@gmail.com", "y@example.org"):
        assert_route(t, r, "onprem", ONPREM_HOP, override="cmt", override_domain="contoso.com")


def test_cmt_outside_and_inside_recipients():
    t = trace("plain.eml", "alice@contoso.com", ["x@gmail.com", "user@contoso.com"], peer=ONLINE, expect_rc=0)
    assert_route(t, "x@gmail.com", "onprem", ONPREM_HOP, override="cmt", override_domain="contoso.com")
    assert_route(t, "user@contoso.com", "onprem", ONPREM_HOP, override="use_connector",
                 rule="Cloud to cloud via on-premises")


def test_cmt_wins_over_a_better_address_space():
    # seed 002: with CMT, the partner connector is not evaluated even for a better match
    t = trace("plain.eml", "alice@contoso.com", "x@fabrikam.com", peer=ONLINE, expect_rc=0)
    assert_route(t, "x@fabrikam.com", "onprem", ONPREM_HOP, override="cmt", override_domain="contoso.com")


def test_cmt_stamped_message_back_from_onprem_not_overridden():
    t = trace("cmt_stamped.eml", "alice@contoso.com", "x@gmail.com", peer=ONPREM, expect_rc=0)
    assert_route(t, "x@gmail.com", "internet", {"mx": "gmail.com"})
    assert t["headers_added"] == [], t
    assert t["result"] == "NoAction", t


def test_cmt_stamped_message_back_from_a_listed_onprem_connector_not_overridden(tmp_path):
    # With exchange-onprem also in from_inbound, only the stamp keeps CMT
    # from overriding again (the test above passes even if the stamp were
    # ignored, since exchange-onprem is not listed in the sample).
    text = open(RULES, encoding="utf-8").read()
    old = 'from_inbound = ["exchange-online"]'
    assert text.count(old) == 1
    p = tmp_path / "rules.toml"
    p.write_text(text.replace(old, 'from_inbound = ["exchange-online", "exchange-onprem"]'), encoding="utf-8")
    # unstamped from on-premises: CMT applies (so the variant is live) ...
    t = trace("plain.eml", "alice@contoso.com", "x@gmail.com", peer=ONPREM, rules=str(p), expect_rc=0)
    assert_route(t, "x@gmail.com", "onprem", ONPREM_HOP, override="cmt", override_domain="contoso.com")
    assert len(t.header_added(STAMP)) == 1, t
    # ... stamped: left alone, out to the Internet, no second stamp
    t = trace("cmt_stamped.eml", "alice@contoso.com", "x@gmail.com", peer=ONPREM, rules=str(p), expect_rc=0)
    assert_route(t, "x@gmail.com", "internet", {"mx": "gmail.com"})
    assert t["headers_added"] == [], t
    assert t["result"] == "NoAction", t
    assert t.log_lines("Recipient [x@gmail.com]. Message already stamped; no override."), t


def test_cmt_stamped_message_from_online_not_overridden_again():
    t = trace("cmt_stamped.eml", "alice@contoso.com", "x@gmail.com", peer=ONLINE, expect_rc=0)
    assert_route(t, "x@gmail.com", "internet", {"mx": "gmail.com"})
    assert t.header_added(STAMP) == [], "a second stamp:\n%r" % t
    assert t["headers_added"] == [], t
    assert t["result"] == "NoAction", t


def test_cmt_stamp_found_whatever_the_case_of_its_name():
    t = trace("cmt_stamped_lowercase.eml", "alice@contoso.com", "x@gmail.com", peer=ONLINE, expect_rc=0)
    assert_route(t, "x@gmail.com", "internet", {"mx": "gmail.com"})
    assert t.header_added(STAMP) == [], t


def test_cmt_not_for_other_organization_peer():
    # only exchange-online is in from_inbound
    t = trace("plain.eml", "alice@contoso.com", "x@gmail.com", peer=ONPREM, expect_rc=0)
    assert_route(t, "x@gmail.com", "internet", {"mx": "gmail.com"})
    assert t.header_added(STAMP) == [], t


def test_rule_route_to_wins_over_cmt():
    t = trace("rtm_on.eml", "alice@contoso.com", "x@gmail.com", peer=ONLINE, expect_rc=0)
    assert_route(t, "x@gmail.com", "trend", TREND_HOP, override="route_to",
                 override_domain="trend.local", rule="Route via Trend")


def test_rule_route_to_on_stamped_message_still_applies():
    t = trace("cmt_stamped_rtm_on.eml", "alice@contoso.com", "x@gmail.com", peer=ONLINE, expect_rc=0)
    assert_route(t, "x@gmail.com", "trend", TREND_HOP, override="route_to",
                 override_domain="trend.local", rule="Route via Trend")
    assert t.header_added(STAMP) == [], t


def test_cmt_agent_disabled_does_no_override():
    t = trace("plain.eml", "alice@contoso.com", "x@gmail.com", peer=ONLINE,
              rules=fx("rules_cmt_disabled.toml"), expect_rc=0)
    assert_route(t, "x@gmail.com", "internet", {"mx": "gmail.com"})
    assert t.header_added(STAMP) == [], t
    assert t["result"] == "NoAction", t


# ---------------------------------------------------------------------------
# 5. Address rewriting (seed 001)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("eml,rcpt,final", [
    ("to_johnny.eml", "johnny@contoso.com", "johnny@eu.contoso.com"),
    ("to_willie.eml", "willie@contoso.com", "willie@us.contoso.com"),
])
@pytest.mark.parametrize("peer", [ANON, PARTNER])
def test_inbound_rewrite(eml, rcpt, final, peer):
    t = trace(eml, "someone@example.org", rcpt, peer=peer, expect_rc=0)
    r = t.rcpt(rcpt)
    assert r["final"] == final, t
    assert_route(t, r, "onprem", ONPREM_HOP)
    assert {"name": "To", "from": rcpt, "to": final} in t["headers_rewritten"], t


def test_inbound_rewrite_unmapped_address_unchanged():
    t = trace("to_other.eml", "someone@example.org", "other@contoso.com", peer=ANON, expect_rc=0)
    assert t.rcpt("other@contoso.com")["final"] == "other@contoso.com", t
    assert t["headers_rewritten"] == [], t
    assert_route(t, "other@contoso.com", "onprem", ONPREM_HOP)


def test_inbound_rewrite_two_recipients():
    t = trace("to_johnny.eml", "someone@example.org", ["johnny@contoso.com", "other@contoso.com"],
              peer=ANON, expect_rc=0)
    assert t.rcpt("johnny@contoso.com")["final"] == "johnny@eu.contoso.com", t
    assert t.rcpt("other@contoso.com")["final"] == "other@contoso.com", t


@pytest.mark.parametrize("eml,sender", [("from_eu.eml", "someone@eu.contoso.com"),
                                        ("from_us.eml", "someone@us.contoso.com")])
def test_outbound_rewrite(eml, sender):
    t = trace(eml, sender, "x@gmail.com", peer=ONPREM, expect_rc=0)
    assert t["sender"] == {"original": sender, "final": "someone@contoso.com"}, t
    assert {"name": "From", "from": sender, "to": "someone@contoso.com"} in t["headers_rewritten"], t
    assert t.rcpt("x@gmail.com")["final"] == "x@gmail.com", t


@pytest.mark.parametrize("sender,final", [
    ("Bob.Smith@eu.contoso.com", "Bob.Smith@contoso.com"),
    ("x+tag@us.contoso.com", "x+tag@contoso.com"),
    ("x@sub.eu.contoso.com", "x@sub.eu.contoso.com"),
    ("x@eu.contoso.com.example.org", "x@eu.contoso.com.example.org"),
])
def test_outbound_rewrite_wildcard(sender, final):
    t = trace("plain.eml", sender, "x@gmail.com", peer=ONPREM, expect_rc=0)
    assert t["sender"] == {"original": sender, "final": final}, t


@pytest.mark.parametrize("peer", [ANON, PARTNER])
def test_outbound_rewrite_skipped_for_anonymous_sessions(peer):
    # outbound maps flatten what the organisation sends; a non-originating
    # client's sender and From are left as they are
    t = trace("from_eu.eml", "someone@eu.contoso.com", "user@contoso.com", peer=peer, expect_rc=0)
    assert t["session"]["originating"] is False, t
    assert t["sender"] == {"original": "someone@eu.contoso.com", "final": "someone@eu.contoso.com"}, t
    assert t["headers_rewritten"] == [], t


def test_outbound_rewrite_leaves_flat_sender():
    t = trace("plain.eml", "alice@contoso.com", "x@gmail.com", peer=ONPREM, expect_rc=0)
    assert t["sender"] == {"original": "alice@contoso.com", "final": "alice@contoso.com"}, t


def test_inbound_rewrite_cc_header():
    t = trace("cc_willie.eml", "someone@example.org", ["johnny@contoso.com", "willie@contoso.com"],
              peer=ANON, expect_rc=0)
    assert t.rcpt("johnny@contoso.com")["final"] == "johnny@eu.contoso.com", t
    assert t.rcpt("willie@contoso.com")["final"] == "willie@us.contoso.com", t
    rw = t["headers_rewritten"]
    assert {"name": "To", "from": "johnny@contoso.com", "to": "johnny@eu.contoso.com"} in rw, t
    assert {"name": "Cc", "from": "willie@contoso.com", "to": "willie@us.contoso.com"} in rw, t


def test_inbound_rewrite_to_header_with_display_name_and_list():
    # headers_rewritten lists addresses; the field keeps its display name and other addresses
    t = trace("to_display_name.eml", "someone@example.org", ["johnny@contoso.com", "other@contoso.com"],
              peer=ANON, extra=["--snapshots"], expect_rc=0)
    assert t["headers_rewritten"] == [{"name": "To", "from": "johnny@contoso.com", "to": "johnny@eu.contoso.com"}], t
    rw = [s for s in t.doc.get("snapshots") or [] if s["agent"] == "inbound_rewrite"]
    assert len(rw) == 1, t
    assert 'To: "Johnny" <johnny@eu.contoso.com>, other@contoso.com\r\n' in rw[0]["after"], t


def test_outbound_rewrite_reply_to():
    t = trace("replyto_eu.eml", "someone@eu.contoso.com", "x@gmail.com", peer=ONPREM, expect_rc=0)
    assert t["sender"]["final"] == "someone@contoso.com", t
    rw = t["headers_rewritten"]
    assert {"name": "From", "from": "someone@eu.contoso.com", "to": "someone@contoso.com"} in rw, t
    assert {"name": "Reply-To", "from": "someone@eu.contoso.com", "to": "someone@contoso.com"} in rw, t


def test_snapshots_show_the_inbound_rewrite():
    t = trace("to_johnny.eml", "someone@example.org", "johnny@contoso.com", peer=ANON,
              extra=["--snapshots"], expect_rc=0)
    rw = [s for s in t.doc.get("snapshots") or [] if s["agent"] == "inbound_rewrite"]
    assert len(rw) == 1, t
    assert "To: johnny@contoso.com\r\n" in rw[0]["before"], t
    assert "To: johnny@eu.contoso.com\r\n" in rw[0]["after"], t


def test_defaults_connector_and_inbound_names_and_rewrite_direction():
    rules = fx("rules_defaults.toml")
    t = trace("plain.eml", "alice@a.test", "x@gmail.com", peer="127.0.0.9", rules=rules, expect_rc=0)
    assert t["session"]["inbound"] == "Inbound 1" and t["session"]["originating"] is True, t
    assert_route(t, "x@gmail.com", "Connector 1", {"mx": "gmail.com"})
    t = trace("plain.eml", "someone@example.org", "x@a.test", peer="127.0.0.10", rules=rules, expect_rc=0)
    assert t["session"]["inbound"] == "Inbound 2" and t["session"]["originating"] is False, t
    assert_route(t, "x@a.test", "Connector 2", {"smart_hosts": ["inside.a.test:25"]})
    # a rule names a connector by its default name
    t = trace("plain.eml", "boss@a.test", "x@gmail.com", peer="127.0.0.9", rules=rules, expect_rc=0)
    assert_route(t, "x@gmail.com", "Connector 3", {"smart_hosts": ["relay.test:25"]},
                 override="use_connector", rule="Rule 1")
    # a map without direction is inbound: it rewrites mail coming in, not going out
    t = trace("to_johnny.eml", "someone@example.org", "johnny@a.test", peer=ANON, rules=rules, expect_rc=0)
    assert t.rcpt("johnny@a.test")["final"] == "johnny@eu.a.test", t
    t = trace("plain.eml", "johnny@eu.a.test", "x@gmail.com", peer="127.0.0.9", rules=rules, expect_rc=0)
    assert t["sender"]["final"] == "johnny@eu.a.test", t


def group_rules(tmp_path):
    text = open(RULES, encoding="utf-8").read()
    old = 'Executives = ["ceo@contoso.com"]\n'
    assert text.count(old) == 1
    text = text.replace(old, old + 'Vips = ["vip@contoso.com", "*@vip.example"]\n')
    text += '\n[[rule]]\nname = "VIPs via Trend"\nif = { recipient_group = "Vips" }\nthen = { route_to = "trend.local" }\n'
    p = tmp_path / "rules.toml"
    p.write_text(text, encoding="utf-8")
    return str(p)


def test_recipient_group_condition_is_per_recipient(tmp_path):
    rules = group_rules(tmp_path)
    t = trace("plain.eml", "alice@contoso.com",
              ["VIP@Contoso.com", "anyone@vip.example", "other@contoso.com", "x@sub.vip.example"],
              peer=ONPREM, rules=rules, expect_rc=0)
    for r in ("VIP@Contoso.com", "anyone@vip.example"):
        assert_route(t, r, "trend", TREND_HOP, override="route_to", override_domain="trend.local",
                     rule="VIPs via Trend")
    assert_route(t, "other@contoso.com", "onprem", ONPREM_HOP)
    assert_route(t, "x@sub.vip.example", "internet", {"mx": "sub.vip.example"})


def test_recipient_group_does_not_look_at_the_sender(tmp_path):
    t = trace("plain.eml", "vip@contoso.com", "other@contoso.com", peer=ONPREM,
              rules=group_rules(tmp_path), expect_rc=0)
    assert_route(t, "other@contoso.com", "onprem", ONPREM_HOP)


@pytest.mark.parametrize("how", ["enabled = false", "missing"])
def test_cmt_disabled_in_the_cmt_section(tmp_path, how):
    text = open(RULES, encoding="utf-8").read()
    old = "[cmt]\nenabled = true\n"
    assert text.count(old) == 1
    if how == "missing":  # [cmt] enabled defaults to false
        text = text.replace(old, "[cmt]\n")
    else:
        text = text.replace(old, "[cmt]\n%s\n" % how)
    p = tmp_path / "rules.toml"
    p.write_text(text, encoding="utf-8")
    t = trace("plain.eml", "alice@contoso.com", "x@gmail.com", peer=ONLINE, rules=str(p), expect_rc=0)
    assert t["session"]["inbound"] == "exchange-online", t
    assert_route(t, "x@gmail.com", "internet", {"mx": "gmail.com"})
    assert t.header_added(STAMP) == [], t
    assert t["result"] == "NoAction", t


LOCATION_SPECIFIC = re.compile(r"@(eu|us)\.contoso\.com", re.I)


@pytest.mark.parametrize("peer", [ONPREM, ONLINE])
def test_originating_mail_to_the_internet_leaks_no_location_specific_address(peer):
    # Inbound rewriting is for mail on the way in: a message the organisation
    # sends out, even one that names johnny and willie in To/Cc, leaves flat.
    t = trace("cc_willie.eml", "alice@contoso.com", "x@gmail.com", peer=peer,
              extra=["--snapshots"], expect_rc=0)
    assert t["session"]["originating"] is True, t
    assert t.rcpt("x@gmail.com")["final"] == "x@gmail.com", t
    assert [h for h in t["headers_rewritten"] if h["name"] in ("To", "Cc")] == [], t
    assert [s["agent"] for s in t.doc["snapshots"] if s["agent"] == "inbound_rewrite"] == [], t
    assert not LOCATION_SPECIFIC.search(t.stdout), t
    assert t.log_lines("ewrit") == [], t


def test_originating_mail_to_a_flat_inside_address_is_not_rewritten():
    # From on-premises to johnny@contoso.com: the organisation's own mail,
    # delivered by the onprem connector under the flat address.
    t = trace("cc_willie.eml", "alice@contoso.com", ["johnny@contoso.com", "willie@contoso.com"],
              peer=ONPREM, expect_rc=0)
    assert t.rcpt("johnny@contoso.com")["final"] == "johnny@contoso.com", t
    assert t.rcpt("willie@contoso.com")["final"] == "willie@contoso.com", t
    assert_route(t, "johnny@contoso.com", "onprem", ONPREM_HOP)
    assert t["headers_rewritten"] == [], t


def test_inbound_rewrite_still_applies_to_anonymous_mail_with_an_outside_address_in_cc():
    t = trace("cc_willie.eml", "someone@example.org", "johnny@contoso.com", peer=ANON, expect_rc=0)
    assert t.rcpt("johnny@contoso.com")["final"] == "johnny@eu.contoso.com", t
    assert {"name": "Cc", "from": "willie@contoso.com", "to": "willie@us.contoso.com"} in t["headers_rewritten"], t


def test_snapshots_are_in_pipeline_order():
    # ceo@contoso.com is journaled (a transport rule adds X-Journaled); the
    # inbound rewrite of To runs before the transport rules, and is shown first.
    t = trace("to_johnny.eml", "ceo@contoso.com", "johnny@contoso.com", peer=ANON,
              extra=["--snapshots"], expect_rc=0)
    assert [s["agent"] for s in t.doc["snapshots"]] == ["inbound_rewrite", "transport_rules"], t
    first, second = t.doc["snapshots"]
    assert "To: johnny@eu.contoso.com\r\n" in first["after"] and "X-Journaled" not in first["after"], t
    assert second["before"] == first["after"], t
    assert "X-Journaled: yes\r\n" in second["after"], t


def test_null_sender_accepted():
    t = trace("null_sender.eml", "", "user@contoso.com", peer=ANON, expect_rc=0)
    assert t["sender"]["original"] == "" and t["sender"]["final"] == "", t
    assert_route(t, "user@contoso.com", "onprem", ONPREM_HOP)


# ---------------------------------------------------------------------------
# 6. Header firewall (seed 002)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("peer", [ANON, PARTNER])
def test_header_firewall_anonymous(peer):
    t = trace("firewall.eml", "someone@example.org", "user@contoso.com", peer=peer, expect_rc=0)
    removed = t["headers_removed"]
    assert "X-MS-Exchange-Organization-SCL" in removed, t
    # the prefix matches whatever the case; the name is reported as in the message
    assert "x-ms-exchange-organization-authas" in removed, t
    assert not [h for h in removed if h.lower().startswith("x-ms-exchange-crosspremises-")], t
    assert not [h for h in removed if h.lower().startswith("x-forefront")], t
    assert {"from": "X-Forefront-Antispam-Report", "to": "X-Forefront-Antispam-Report-Untrusted"} \
        in t["headers_renamed"], t
    assert len(t["headers_renamed"]) == 1, t


@pytest.mark.parametrize("peer", [ONPREM, ONLINE])
def test_header_firewall_organization_keeps_headers(peer):
    t = trace("firewall.eml", "someone@contoso.com", "user@contoso.com", peer=peer, expect_rc=0)
    assert t["headers_removed"] == [], t
    assert t["headers_renamed"] == [], t


def test_snapshots_show_the_firewall_change():
    t = trace("firewall.eml", "someone@example.org", "user@contoso.com", peer=ANON,
              extra=["--snapshots"], expect_rc=0)
    snaps = t.doc.get("snapshots")
    assert isinstance(snaps, list) and snaps, t
    for s in snaps:
        assert set(s) >= {"agent", "before", "after"}, t
    fw = [s for s in snaps if s["agent"] == "header_firewall"]
    assert len(fw) == 1, t
    before, after = fw[0]["before"], fw[0]["after"]
    assert "X-MS-Exchange-Organization-SCL: -1" in before, t
    assert "X-MS-Exchange-Organization-SCL" not in after, t
    assert "X-Forefront-Antispam-Report: " in before, t
    assert "X-Forefront-Antispam-Report-Untrusted: SCL:5" in after, t
    assert "X-Forefront-Antispam-Report: " not in after, t


@pytest.mark.parametrize("sender,peer,rcpt,line", [
    ("alice@contoso.com", ONLINE, "x@gmail.com", STAMP + ":"),
    ("ceo@contoso.com", ONPREM, "x@gmail.com", "X-Journaled: yes\r\n"),
])
def test_snapshots_show_added_headers(sender, peer, rcpt, line):
    t = trace("plain.eml", sender, rcpt, peer=peer, extra=["--snapshots"], expect_rc=0)
    snaps = t.doc.get("snapshots") or []
    hit = [s for s in snaps if line in s["after"] and line not in s["before"]]
    assert len(hit) == 1, t


def test_no_snapshots_without_the_flag():
    t = trace("firewall.eml", "someone@example.org", "user@contoso.com", peer=ANON, expect_rc=0)
    assert not t.doc.get("snapshots"), t


ORG_FORGED = ["X-MS-Exchange-Organization-SCL", "X-MS-Exchange-Organization-AuthAs", STAMP]


@pytest.mark.parametrize("peer", [ANON, PARTNER])
def test_default_header_firewall_strips_organization_headers_from_anonymous_mail(peer):
    # No [header_firewall] section: as Exchange's edge, anonymous mail loses
    # X-MS-Exchange-Organization-* (a forged SCL, AuthAs or CMT stamp);
    # nothing is renamed (no rename_untrusted by default).
    t = trace("forged_org_headers.eml", "someone@example.org", "user@contoso.com", peer=peer,
              rules=fx("rules_no_firewall.toml"), extra=["--snapshots"], expect_rc=0)
    assert t["session"]["originating"] is False, t
    assert sorted(t["headers_removed"]) == sorted(ORG_FORGED), t
    assert t["headers_renamed"] == [], t
    fw = [s for s in t.doc["snapshots"] if s["agent"] == "header_firewall"]
    assert len(fw) == 1 and "X-MS-Exchange-Organization-" not in fw[0]["after"], t
    assert "X-Forefront-Antispam-Report: SCL:5" in fw[0]["after"], t
    assert len(t.log_lines("header_firewall", "Removed header")) == 3, t


def test_default_header_firewall_keeps_organization_headers_of_originating_mail():
    t = trace("forged_org_headers.eml", "someone@contoso.com", "user@contoso.com", peer=ONPREM,
              rules=fx("rules_no_firewall.toml"), expect_rc=0)
    assert t["session"]["originating"] is True, t
    assert t["headers_removed"] == [] and t["headers_renamed"] == [], t


def test_explicit_header_firewall_without_trusted_prefixes_strips_nothing(tmp_path):
    # an explicit section says exactly what is stripped: here nothing
    text = open(fx("rules_no_firewall.toml"), encoding="utf-8").read()
    p = tmp_path / "rules.toml"
    p.write_text(text + '\n[header_firewall]\nrename_untrusted = { "X-Forefront-Antispam-Report" = "X-Untrusted" }\n',
                 encoding="utf-8")
    t = trace("forged_org_headers.eml", "someone@example.org", "user@contoso.com", peer=ANON,
              rules=str(p), expect_rc=0)
    assert t["headers_removed"] == [], t
    assert t["headers_renamed"] == [{"from": "X-Forefront-Antispam-Report", "to": "X-Untrusted"}], t


# ---------------------------------------------------------------------------
# 7. Journaling (rule #4)
# ---------------------------------------------------------------------------

def test_journal_executives():
    t = trace("plain.eml", "ceo@contoso.com", "x@gmail.com", peer=ONPREM, expect_rc=0)
    added = t.added()
    assert len(added) == 1, t
    j = added[0]
    assert j["final"] == "journal@journaling.contoso.com", t
    assert j["added_by"] == "Journal executives", t
    assert j["connector"] == "journal" and j["next_hop"] == JOURNAL_HOP and j["rejected"] is None, t
    assert {"name": "X-Journaled", "value": "yes"} in t["headers_added"], t
    assert_route(t, "x@gmail.com", "internet", {"mx": "gmail.com"})
    assert t.rcpt("x@gmail.com")["added_by"] is None, t


def test_journal_executive_address_from_anonymous_session():
    # rule #4 has no location condition; the added recipient is policy's, not a relayed RCPT
    t = trace("plain.eml", "ceo@contoso.com", "user@contoso.com", peer=ANON, expect_rc=0)
    added = t.added()
    assert len(added) == 1 and added[0]["final"] == "journal@journaling.contoso.com", t
    assert added[0]["rejected"] is None and added[0]["connector"] == "journal", t


def test_journal_once_for_several_recipients():
    t = trace("plain.eml", "ceo@contoso.com", ["x@gmail.com", "user@contoso.com"], peer=ONPREM, expect_rc=0)
    added = t.added()
    assert len(added) == 1 and added[0]["final"] == "journal@journaling.contoso.com", t
    assert len(t.header_added("X-Journaled")) == 1, t


def test_no_journal_for_others():
    t = trace("plain.eml", "alice@contoso.com", "x@gmail.com", peer=ONPREM, expect_rc=0)
    assert t.added() == [], t
    assert t.header_added("X-Journaled") == [], t


# ---------------------------------------------------------------------------
# 8. Attachment names (rule #5)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("eml", ["attach_exe.eml", "attach_scr.eml"])
@pytest.mark.parametrize("peer", [ANON, PARTNER])
def test_executable_from_outside_rejected(eml, peer):
    t = trace(eml, "bad@example.org", "user@contoso.com", peer=peer, expect_rc=1)
    assert t["result"] == "Rejected", t
    r = t.rcpt("user@contoso.com")
    assert r["rejected"] == EXE_REFUSED, t
    assert r["rule"] == "Refuse executables from outside", t
    assert t["reply"].startswith("550 5.7.1"), t


@pytest.mark.parametrize("eml", ["attach_name_only.eml", "attach_rfc2231.eml", "attach_rfc2047.eml",
                                 "attach_nested.eml"])
def test_executable_name_forms_rejected(eml):
    # the name from Content-Type only, RFC 2231 and RFC 2047 encoded names, a .js
    # attachment two multiparts deep
    t = trace(eml, "bad@example.org", "user@contoso.com", peer=ANON, expect_rc=1)
    assert t.rcpt("user@contoso.com")["rejected"] == EXE_REFUSED, t


def test_executable_from_anonymous_with_inside_sender_address_rejected():
    # "outside" is the session (not attributed to an organization connector), not the address
    t = trace("attach_exe.eml", "alice@contoso.com", "user@contoso.com", peer=ANON, expect_rc=1)
    assert t.rcpt("user@contoso.com")["rejected"] == EXE_REFUSED, t


def test_rejected_message_has_no_journal_copy():
    # anonymous mail claiming an executive sender with an executable: rule #4 (journal)
    # runs before rule #5 (reject). The message is refused in the session, so no
    # recipient -- the journal copy included -- may keep a route.
    t = trace("attach_exe.eml", "ceo@contoso.com", "user@contoso.com", peer=ANON, expect_rc=1)
    assert t.rcpt("user@contoso.com")["rejected"] == EXE_REFUSED, t
    routed = [r for r in t["recipients"] if r["rejected"] is None]
    assert routed == [], "a refused message still routes %r:\n%r" % ([r["final"] for r in routed], t)


def test_executable_from_outside_rejected_every_recipient():
    t = trace("attach_exe.eml", "bad@example.org", ["user@contoso.com", "johnny@contoso.com"],
              peer=ANON, expect_rc=1)
    for r in t["recipients"]:
        assert r["rejected"] == EXE_REFUSED, t


def test_reject_beats_route_to():
    # precedence per recipient: a rule's reject > a rule's route_to
    t = trace("attach_exe_rtm_on.eml", "bad@example.org", "user@contoso.com", peer=ANON, expect_rc=1)
    r = t.rcpt("user@contoso.com")
    assert r["rejected"] == EXE_REFUSED and r["rule"] == "Refuse executables from outside", t


@pytest.mark.parametrize("peer", [ONPREM, ONLINE])
def test_executable_from_organization_accepted(peer):
    t = trace("attach_exe.eml", "alice@contoso.com", "user@contoso.com", peer=peer, expect_rc=0)
    assert t.rcpt("user@contoso.com")["rejected"] is None, t
    assert t["result"] != "Rejected", t


@pytest.mark.parametrize("eml", ["attach_pdf.eml", "attach_exe_pdf_name.eml"])
def test_non_executable_from_outside_accepted(eml):
    t = trace(eml, "bad@example.org", "user@contoso.com", peer=ANON, expect_rc=0)
    assert_route(t, "user@contoso.com", "onprem", ONPREM_HOP)
    assert t["result"] == "NoAction", t


R5 = "OnResolvedMessage transport_rules: Rule #5 (Refuse executables from outside). "


def test_trace_log_shows_attachment_names():
    # the names the shell extracted (mail-parser) are logged once, when a rule first
    # looks at the attachments, then the rule's match names the attachment
    t = trace("attach_exe.eml", "bad@example.org", "user@contoso.com", peer=ANON, expect_rc=1)
    log = t["log"]
    want = ["OnResolvedMessage transport_rules: Attachment [invoice.exe]",
            R5 + "Found attachment [invoice.exe]",
            R5 + "Recipient [user@contoso.com]. Conditions hold."]
    i = log.index(want[0])
    assert log[i:i + 3] == want, t
    assert t.log_lines("Attachment [") == [want[0]], t
    # the existing lines are still there, unrenamed
    assert R5 + "Recipient [user@contoso.com]. Rejected." in log, t
    assert log[-1] == "Message processing completed. Result: [Rejected].", t


def test_trace_log_shows_attachment_names_decoded():
    t = trace("attach_rfc2231.eml", "bad@example.org", "user@contoso.com", peer=ANON, expect_rc=1)
    assert t.log_lines("Attachment [") == [
        "OnResolvedMessage transport_rules: Attachment [invoice d\u00e9cembre.exe]"], t
    assert R5 + "Found attachment [invoice d\u00e9cembre.exe]" in t["log"], t


def test_trace_log_attachment_without_match():
    t = trace("attach_pdf.eml", "bad@example.org", "user@contoso.com", peer=ANON, expect_rc=0)
    assert t.log_lines("Attachment [") == ["OnResolvedMessage transport_rules: Attachment [invoice.pdf]"], t
    assert t.log_lines("Found attachment") == [], t


def test_trace_log_no_attachment_lines_when_no_rule_looks():
    # from an organization connector rule #5 fails on sender_location before the
    # attachments are looked at
    t = trace("attach_exe.eml", "alice@contoso.com", "user@contoso.com", peer=ONPREM, expect_rc=0)
    assert t.log_lines("ttachment") == [], t


def test_trace_log_no_attachment():
    t = trace("plain.eml", "bad@example.org", "user@contoso.com", peer=ANON, expect_rc=0)
    assert "OnResolvedMessage transport_rules: No attachment." in t["log"], t
    assert t.log_lines("Attachment [") == [], t


# ---------------------------------------------------------------------------
# 9. Hop count
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("peer", [ANON, ONPREM])
def test_hop_count_exceeded(peer):
    t = trace("received_31.eml", "someone@example.org", "user@contoso.com", peer=peer, expect_rc=1)
    assert t["result"] == "Rejected", t
    assert t["reply"].startswith("554 5.4.14"), t


def test_hop_count_at_limit_accepted():
    t = trace("received_30.eml", "someone@example.org", "user@contoso.com", peer=ANON, expect_rc=0)
    assert_route(t, "user@contoso.com", "onprem", ONPREM_HOP)


def test_hop_count_field_name_case_insensitive():
    t = trace("received_31_mixed_case.eml", "someone@example.org", "user@contoso.com", peer=ANON, expect_rc=1)
    assert t["reply"].startswith("554 5.4.14"), t


def test_hop_count_ignores_the_body():
    t = trace("received_30_more_in_body.eml", "someone@example.org", "user@contoso.com", peer=ANON,
              expect_rc=0)
    assert t.rcpt("user@contoso.com")["rejected"] is None, t


def test_hop_count_counts_fields_not_lines():
    # 30 Received: fields, each folded over three lines
    t = trace("received_30_folded.eml", "someone@example.org", "user@contoso.com", peer=ANON, expect_rc=0)
    assert t.rcpt("user@contoso.com")["rejected"] is None, t


def test_hop_count_follows_max_hops():
    t = trace("received_30.eml", "someone@example.org", "user@contoso.com", peer=ANON,
              rules=fx("rules_max_hops_5.toml"), expect_rc=1)
    assert t["reply"].startswith("554 5.4.14"), t


# ---------------------------------------------------------------------------
# 10. Connector choice by address space
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("rcpt,connector,hop", [
    ("x@fabrikam.com", "fabrikam", FABRIKAM_HOP),
    ("x@eu.fabrikam.com", "fabrikam", FABRIKAM_HOP),
    ("x@a.b.fabrikam.com", "fabrikam", FABRIKAM_HOP),
    ("X@FABRIKAM.COM", "fabrikam", FABRIKAM_HOP),
    ("x@notfabrikam.com", "internet", {"mx": "notfabrikam.com"}),
    ("x@fabrikam.com.example.org", "internet", {"mx": "fabrikam.com.example.org"}),
    ("x@journaling.contoso.com", "journal", JOURNAL_HOP),
    ("x@trend.local", "trend", TREND_HOP),
    ("x@contoso.com", "onprem", ONPREM_HOP),
    ("x@us.contoso.com", "onprem", ONPREM_HOP),
    ("x@eu.contoso.com", "onprem", ONPREM_HOP),
    ("x@sales.contoso.com", "internet", {"mx": "sales.contoso.com"}),
    ("x@example.org", "internet", {"mx": "example.org"}),
])
def test_connector_choice(rcpt, connector, hop):
    t = trace("plain.eml", "alice@contoso.com", rcpt, peer=ONPREM, expect_rc=0)
    assert_route(t, rcpt, connector, hop)
    assert t["result"] == "NoAction", t


@pytest.mark.parametrize("cost", ["1", "1000"])
def test_an_exact_accepted_domain_beats_double_dash_whatever_the_cost(tmp_path, cost):
    # onprem has "--" at cost 1; a connector naming eu.contoso.com, later in
    # the file, at the same or a higher cost, takes eu.contoso.com (and only it).
    text = open(RULES, encoding="utf-8").read() + (
        '\n[[connector]]\nname = "eu-site"\naddress_spaces = ["eu.contoso.com"]\n'
        'smart_hosts = ["eu.contoso.internal"]\ncost = %s\n' % cost)
    p = tmp_path / "rules.toml"
    p.write_text(text, encoding="utf-8")
    t = trace("plain.eml", "alice@contoso.com", ["x@eu.contoso.com", "x@contoso.com", "x@us.contoso.com"],
              peer=ONPREM, rules=str(p), expect_rc=0)
    assert_route(t, "x@eu.contoso.com", "eu-site", {"smart_hosts": ["eu.contoso.internal"]})
    assert_route(t, "x@contoso.com", "onprem", ONPREM_HOP)
    assert_route(t, "x@us.contoso.com", "onprem", ONPREM_HOP)
    chk = run_raw(["rules", "check", str(p)])
    out = (chk.stdout + chk.stderr).decode()
    assert chk.returncode == 0 and "eu-site" not in out, out


# ---------------------------------------------------------------------------
# 11. Several routes for one message
# ---------------------------------------------------------------------------

def test_three_recipients_three_decisions():
    # Rule #1 has no recipient_location condition: with the header, every recipient
    # except secure.com / secure.eu is rerouted -- also an inside one.
    t = trace("rtm_on.eml", "alice@contoso.com", ["a@gmail.com", "b@secure.com", "c@contoso.com"],
              peer=ONPREM, expect_rc=0)
    assert [r["connector"] for r in t["recipients"]] == ["trend", "internet", "trend"], t
    assert_route(t, "a@gmail.com", "trend", TREND_HOP, override="route_to",
                 override_domain="trend.local", rule="Route via Trend")
    assert_route(t, "b@secure.com", "internet", {"mx": "secure.com"})
    assert_route(t, "c@contoso.com", "trend", TREND_HOP, override="route_to",
                 override_domain="trend.local", rule="Route via Trend")


def test_three_recipients_overrides_from_online():
    # exchange-online, header On: rule #1 for a@ and c@ (priority 1 beats rule #3's
    # use_connector for the inside recipient), CMT for the excepted outside b@
    t = trace("rtm_on.eml", "alice@contoso.com", ["a@gmail.com", "b@secure.com", "c@contoso.com"],
              peer=ONLINE, expect_rc=0)
    assert_route(t, "a@gmail.com", "trend", TREND_HOP, override="route_to",
                 override_domain="trend.local", rule="Route via Trend")
    assert_route(t, "b@secure.com", "onprem", ONPREM_HOP, override="cmt", override_domain="contoso.com")
    assert_route(t, "c@contoso.com", "trend", TREND_HOP, override="route_to",
                 override_domain="trend.local", rule="Route via Trend")
    assert len(t.header_added(STAMP)) == 1, t


def test_three_routes_internet_onprem_trend():
    # exchange-onprem, no header, plain sender: internet by "*", onprem by "--",
    # and trend for a recipient in trend.local itself
    t = trace("plain.eml", "alice@contoso.com", ["a@gmail.com", "b@secure.com", "c@contoso.com", "d@trend.local"],
              peer=ONPREM, expect_rc=0)
    assert [r["connector"] for r in t["recipients"]] == ["internet", "internet", "onprem", "trend"], t
    assert_route(t, "a@gmail.com", "internet", {"mx": "gmail.com"})
    assert_route(t, "b@secure.com", "internet", {"mx": "secure.com"})
    assert_route(t, "c@contoso.com", "onprem", ONPREM_HOP)
    assert_route(t, "d@trend.local", "trend", TREND_HOP)


# ---------------------------------------------------------------------------
# 12. Relay
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("peer,rcpt", [(ANON, "x@gmail.com"), (PARTNER, "x@gmail.com"),
                                       (PARTNER, "x@fabrikam.com"), (ANON, "x@sales.contoso.com"),
                                       (ANON, "x@evilcontoso.com"), (ANON, "x@contoso.com.example.org")])
def test_relay_denied_only_recipient(peer, rcpt):
    t = trace("plain.eml", "someone@example.org", rcpt, peer=peer, expect_rc=1)
    r = t.rcpt(rcpt)
    assert r["rejected"] == RELAY_DENIED, t
    assert t["result"] == "Rejected", t


@pytest.mark.parametrize("rcpt", ["user@CONTOSO.COM", "user@Eu.Contoso.Com"])
def test_accepted_domain_any_case(rcpt):
    t = trace("plain.eml", "someone@example.org", rcpt, peer=ANON, expect_rc=0)
    assert t.rcpt(rcpt)["rejected"] is None and t.rcpt(rcpt)["connector"] == "onprem", t


def test_relay_denied_one_of_two():
    t = trace("plain.eml", "someone@example.org", ["x@gmail.com", "user@contoso.com"], peer=ANON, expect_rc=0)
    assert t.rcpt("x@gmail.com")["rejected"] == RELAY_DENIED, t
    assert_route(t, "user@contoso.com", "onprem", ONPREM_HOP)
    assert t["result"] == "NoAction", t


@pytest.mark.parametrize("peer", [ONPREM, ONLINE])
def test_relay_permitted_when_originating(peer):
    t = trace("plain.eml", "alice@contoso.com", "x@example.org", peer=peer, expect_rc=0)
    assert t.rcpt("x@example.org")["rejected"] is None, t


# ---------------------------------------------------------------------------
# Agents and rules switched by the rule file
# ---------------------------------------------------------------------------

def test_disabled_rule_does_nothing():
    t = trace("rtm_on.eml", "alice@contoso.com", "x@gmail.com", peer=ONPREM,
              rules=fx("rules_rule_disabled.toml"), expect_rc=0)
    assert_route(t, "x@gmail.com", "internet", {"mx": "gmail.com"})


def test_rule_priority_decides_which_override(tmp_path):
    # move "Route via Trend" after "Cloud to cloud": the first rule by priority wins
    text = open(RULES, encoding="utf-8").read()
    old = 'name = "Route via Trend"\npriority = 1\n'
    assert text.count(old) == 1
    p = tmp_path / "rules.toml"
    p.write_text(text.replace(old, 'name = "Route via Trend"\npriority = 6\n'), encoding="utf-8")
    t = trace("rtm_on.eml", "alice@contoso.com", ["c@contoso.com", "a@gmail.com"], peer=ONLINE,
              rules=str(p), expect_rc=0)
    assert_route(t, "c@contoso.com", "onprem", ONPREM_HOP, override="use_connector",
                 rule="Cloud to cloud via on-premises")
    assert_route(t, "a@gmail.com", "trend", TREND_HOP, override="route_to",
                 override_domain="trend.local", rule="Route via Trend")


def test_rule_without_priority_runs_after_the_others(tmp_path):
    # priority defaults to file order after the last: a route_to rule written first,
    # without a priority, loses to rule #1 (priority 1)
    text = open(RULES, encoding="utf-8").read()
    marker = "[[rule]]                         # seed 000: the Egress header rule"
    assert text.count(marker) == 1
    early = ('[[rule]]\nname = "Everything via fabrikam"\nif = { recipient_domain = "gmail.com" }\n'
             'then = { route_to = "fabrikam.com" }\n\n')
    p = tmp_path / "rules.toml"
    p.write_text(text.replace(marker, early + marker), encoding="utf-8")
    t = trace("rtm_on.eml", "alice@contoso.com", "a@gmail.com", peer=ONPREM, rules=str(p), expect_rc=0)
    assert_route(t, "a@gmail.com", "trend", TREND_HOP, override="route_to",
                 override_domain="trend.local", rule="Route via Trend")
    t = trace("plain.eml", "alice@contoso.com", "a@gmail.com", peer=ONPREM, rules=str(p), expect_rc=0)
    assert_route(t, "a@gmail.com", "fabrikam", FABRIKAM_HOP, override="route_to",
                 override_domain="fabrikam.com", rule="Everything via fabrikam")


def test_max_recipients_from_the_rule_file():
    # [limits] max_recipients = 200: the 201st recipient is refused (452 4.5.3), the rest go
    to = ["u%d@contoso.com" % i for i in range(201)]
    t = trace("plain.eml", "alice@contoso.com", to, peer=ONPREM, expect_rc=0)
    refused = [r for r in t["recipients"] if r["rejected"]]
    assert [r["original"] for r in refused] == ["u200@contoso.com"], t
    assert refused[0]["rejected"].startswith("452 4.5.3"), t


def test_max_message_size_from_the_rule_file(tmp_path):
    # [limits] max_message_size = "36 MiB": a 37 MiB message would not be accepted (552 5.3.4)
    p = tmp_path / "big.eml"
    with open(fx("plain.eml"), "rb") as f:
        head = f.read()
    line = b"x" * 998 + b"\r\n"
    with open(p, "wb") as f:
        f.write(head)
        for _ in range(37 * 1024 * 1024 // len(line) + 1):
            f.write(line)
    t = trace(str(p), "someone@example.org", "user@contoso.com", peer=ANON, expect_rc=1)
    assert t["reply"].startswith("552 5.3.4"), t


def test_connection_filter_blocked_network():
    t = trace("plain.eml", "someone@example.org", "user@contoso.com", peer="198.51.100.7",
              rules=fx("rules_connection_filter.toml"), expect_rc=1)
    assert t["result"] == "Rejected", t
    ok = trace("plain.eml", "someone@example.org", "user@contoso.com", peer=ANON,
               rules=fx("rules_connection_filter.toml"), expect_rc=0)
    assert ok.rcpt("user@contoso.com")["rejected"] is None, ok


# ---------------------------------------------------------------------------
# The keys docs/INTERFACES.md adds (tests/policy/rules_added_keys.toml)
# ---------------------------------------------------------------------------

ADDED = "rules_added_keys.toml"
ADDED_ONPREM_HOP = {"smart_hosts": ["exch1.contoso.internal:25"]}
QUARANTINE_HOP = {"smart_hosts": ["q.example:25"]}


@pytest.mark.parametrize("peer", ["198.51.100.7", "2001:db8:1::25"])
def test_added_client_network_and_set_header(peer):
    t = trace("plain.eml", "a@example.org", "user@contoso.com", peer=peer, rules=fx(ADDED),
              extra=["--snapshots"], expect_rc=0)
    snaps = [s for s in t.doc.get("snapshots") or [] if "X-Net: dmz\r\n" in s["after"]]
    assert snaps and "X-Net" not in snaps[0]["before"], t


def test_set_header_replaces_every_existing_field_of_that_name():
    t = trace("net_tagged.eml", "a@example.org", "user@contoso.com", peer="198.51.100.7", rules=fx(ADDED),
              extra=["--snapshots"], expect_rc=0)
    assert sorted(h.lower() for h in t["headers_removed"]) == ["x-net", "x-net"], t
    assert [h for h in t["headers_added"] if h["name"] == "X-Net"] == [{"name": "X-Net", "value": "dmz"}], t
    after = [s for s in t.doc["snapshots"] if s["agent"] == "transport_rules"][0]["after"]
    assert re.findall(r"(?im)^x-net:.*$", after) == ["X-Net: dmz\r"], after
    assert "Subject: Net tagged twice\r\n" in after and "To: user@contoso.com\r\n" in after, after


def test_added_client_network_outside_range():
    t = trace("plain.eml", "a@example.org", "user@contoso.com", peer="198.51.101.7", rules=fx(ADDED),
              extra=["--snapshots"], expect_rc=0)
    assert not [s for s in t.doc.get("snapshots") or [] if "X-Net" in s["after"]], t
    assert not t.header_added("X-Net"), t


def test_added_remove_header():
    t = trace("secrets.eml", "strip@example.org", "user@contoso.com", peer=ANON, rules=fx(ADDED), expect_rc=0)
    assert sorted(t["headers_removed"]) == ["X-Other", "X-Secret"], t


def test_added_rewrite_recipient():
    t = trace("plain.eml", "a@example.org", "old@contoso.com", peer=ANON, rules=fx(ADDED), expect_rc=0)
    r = t.rcpt("old@contoso.com")
    assert r["final"] == "new@contoso.com", t
    assert_route(t, r, "onprem", ADDED_ONPREM_HOP)


def test_added_add_recipient_list_and_sender_domain():
    t = trace("plain.eml", "a@copy.example", "user@contoso.com", peer=ANON, rules=fx(ADDED), expect_rc=0)
    added = sorted((r["final"], r["added_by"], r["connector"]) for r in t.added())
    assert added == [("c1@contoso.com", "Copy", "onprem"), ("c2@contoso.com", "Copy", "onprem")], t


def test_added_header_absent_and_sender_pattern():
    t = trace("plain.eml", "x@absent.example", "user@contoso.com", peer=ANON, rules=fx(ADDED), expect_rc=0)
    assert t["headers_added"] == [{"name": "X-Tag", "value": "none"}], t
    t = trace("tagged.eml", "x@absent.example", "user@contoso.com", peer=ANON, rules=fx(ADDED), expect_rc=0)
    assert t["headers_added"] == [], t
    t = trace("plain.eml", "x@present.example", "user@contoso.com", peer=ANON, rules=fx(ADDED), expect_rc=0)
    assert t["headers_added"] == [], t


@pytest.mark.parametrize("eml,quarantined", [("spam_yes.eml", True), ("spam_no.eml", False), ("plain.eml", False)])
def test_added_header_value_matches(eml, quarantined):
    t = trace(eml, "a@example.org", "user@contoso.com", peer=ANON, rules=fx(ADDED), expect_rc=0)
    if quarantined:
        assert_route(t, "user@contoso.com", "quarantine", QUARANTINE_HOP, override="route_to",
                     override_domain="quarantine.test", rule="Quarantine spam")
    else:
        assert_route(t, "user@contoso.com", "onprem", ADDED_ONPREM_HOP)


@pytest.mark.parametrize("peer,special", [(ONPREM, True), (ANON, False)])
def test_added_inbound_condition_and_use_connector(peer, special):
    t = trace("plain.eml", "a@example.org", "special@contoso.com", peer=peer, rules=fx(ADDED), expect_rc=0)
    if special:
        assert_route(t, "special@contoso.com", "quarantine", QUARANTINE_HOP, override="use_connector",
                     rule="Special from onprem")
    else:
        assert_route(t, "special@contoso.com", "onprem", ADDED_ONPREM_HOP)


def test_added_temporary_reject():
    t = trace("plain.eml", "a@example.org", ["busy@contoso.com", "user@contoso.com"], peer=ANON,
              rules=fx(ADDED), expect_rc=0)
    r = t.rcpt("busy@contoso.com")
    assert r["rejected"] == "451 4.3.0 Try again later" and r["rule"] == "Busy", t
    assert_route(t, "user@contoso.com", "onprem", ADDED_ONPREM_HOP)
    t = trace("plain.eml", "a@example.org", "busy@contoso.com", peer=ANON, rules=fx(ADDED), expect_rc=1)
    assert t.rcpt("busy@contoso.com")["rejected"] == "451 4.3.0 Try again later", t


def test_added_stop_and_enabled():
    t = trace("plain.eml", "stop@example.org", "user@contoso.com", peer=ANON, rules=fx(ADDED), expect_rc=0)
    assert t["headers_added"] == [{"name": "X-First", "value": "1"}], t


def test_cost_breaks_a_tie(tmp_path):
    text = open(RULES, encoding="utf-8").read()
    marker = '[[connector]]\nname = "trend"'
    assert text.count(marker) == 1
    extra = '[[connector]]\nname = "internet-cheap"\naddress_spaces = ["*"]\nsmart_hosts = ["relay.example:25"]\ncost = 5\n\n'
    p = tmp_path / "rules.toml"
    p.write_text(text.replace(marker, extra + marker), encoding="utf-8")
    t = trace("plain.eml", "alice@contoso.com", "x@gmail.com", peer=ONPREM, rules=str(p), expect_rc=0)
    assert_route(t, "x@gmail.com", "internet-cheap", {"smart_hosts": ["relay.example:25"]})


def test_specificity_before_cost(tmp_path):
    # "--" (the accepted domains) is more specific than "*": a costlier onprem still wins
    text = open(RULES, encoding="utf-8").read()
    old = 'smart_hosts = ["exch1.contoso.internal:25", "exch2.contoso.internal:25"]\ncost = 1\n'
    assert text.count(old) == 1
    p = tmp_path / "rules.toml"
    p.write_text(text.replace(old, old.replace("cost = 1", "cost = 50")), encoding="utf-8")
    t = trace("plain.eml", "alice@contoso.com", ["x@contoso.com", "y@fabrikam.com"], peer=ONPREM,
              rules=str(p), expect_rc=0)
    assert_route(t, "x@contoso.com", "onprem", ONPREM_HOP)
    assert_route(t, "y@fabrikam.com", "fabrikam", FABRIKAM_HOP)


# ---------------------------------------------------------------------------
# 13. Bad input, text output
# ---------------------------------------------------------------------------

def _bad(args):
    p = run_raw(args)
    assert p.returncode == 2, "sluice %s -> exit %d\nstdout: %s\nstderr: %s" % (
        " ".join(args), p.returncode, p.stdout[:2000], p.stderr[:2000])


def test_bad_input_missing_message_file():
    _bad(["trace", os.path.join(FIX, "no-such-message.eml"), "--from", "a@example.org",
          "--to", "user@contoso.com", "--rules", RULES, "--json"])


def test_bad_input_no_recipient():
    _bad(["trace", fx("plain.eml"), "--from", "a@example.org", "--rules", RULES, "--json"])


def test_bad_input_no_message_argument():
    _bad(["trace", "--from", "a@example.org", "--to", "user@contoso.com", "--rules", RULES, "--json"])


def test_bad_input_rules_file_with_error():
    _bad(["trace", fx("plain.eml"), "--from", "a@example.org", "--to", "user@contoso.com",
          "--rules", fx("rules_syntax_error.toml"), "--json"])


def test_bad_input_missing_rules_file():
    _bad(["trace", fx("plain.eml"), "--from", "a@example.org", "--to", "user@contoso.com",
          "--rules", os.path.join(FIX, "no-such-rules.toml"), "--json"])


def test_bad_input_bad_peer():
    _bad(["trace", fx("plain.eml"), "--from", "a@example.org", "--to", "user@contoso.com",
          "--peer", "999.0.0.1", "--rules", RULES, "--json"])


def test_bad_input_unknown_option():
    _bad(["trace", fx("plain.eml"), "--from", "a@example.org", "--to", "user@contoso.com",
          "--bogus", "--rules", RULES, "--json"])


def test_bad_input_option_without_value():
    _bad(["trace", fx("plain.eml"), "--from", "a@example.org", "--rules", RULES, "--json", "--to"])


@pytest.mark.parametrize("frm,to", [("not an address", "user@contoso.com"),
                                    ("a@example.org", "two words@contoso.com"),
                                    ("a@example.org", "user@@contoso.com")])
def test_bad_input_malformed_address(frm, to):
    # what the daemon would refuse with 501 5.1.7 / 501 5.1.3 is bad input to trace
    _bad(["trace", fx("plain.eml"), "--from", frm, "--to", to, "--peer", ONPREM, "--rules", RULES, "--json"])


@pytest.mark.parametrize("eml,frm,to,peer,rc,word", [
    ("rtm_on.eml", "alice@contoso.com", "x@gmail.com", ONPREM, 0, "trend"),
    ("attach_exe.eml", "bad@example.org", "user@contoso.com", ANON, 1, "550 5.7.1"),
    ("received_31.eml", "someone@example.org", "user@contoso.com", ANON, 1, "5.4.14"),
])
def test_text_output(eml, frm, to, peer, rc, word):
    t = trace(eml, frm, to, peer=peer, as_json=False, expect_rc=rc)
    assert t.stdout.strip(), t
    assert word in t.stdout, t


# ---------------------------------------------------------------------------
# sluice pipeline
# ---------------------------------------------------------------------------

EVENT_ORDER = ["OnConnect", "OnRcpt", "OnEndOfHeaders", "OnEndOfData", "OnDisconnect",
               "OnSubmittedMessage", "OnResolvedMessage", "OnRoutedMessage", "OnCategorizedMessage"]
AGENTS = ["connection_filter", "attribution", "recipient_filter", "header_firewall", "hop_count",
          "inbound_rewrite", "transport_rules", "cmt", "connector_selection", "outbound_rewrite"]


def pipeline(rules):
    args = ["pipeline", "--rules", rules]
    p = run_raw(args)
    out = p.stdout.decode("utf-8", "replace")
    assert p.returncode == 0, "sluice %s -> exit %d\n%s\n%s" % (" ".join(args), p.returncode, out,
                                                              p.stderr.decode(errors="replace"))
    events = []  # [(event line, [(priority, agent, disabled)])]
    for ln in out.splitlines():
        if not ln.strip():
            continue
        if not ln[0].isspace():
            events.append((ln.strip(), []))
            continue
        assert events, "agent line before any event:\n%s" % out
        parts = ln.split()
        assert len(parts) >= 2 and parts[0].isdigit(), "not `  PRIORITY  AGENT  [disabled]`: %r\n%s" % (ln, out)
        disabled = "[disabled]" in parts[2:]
        events[-1][1].append((int(parts[0]), parts[1], disabled))
    return out, events


def event_index(name):
    for i, e in enumerate(EVENT_ORDER):
        if name.startswith(e):
            return i
    return None


def agents_by_event(events):
    return {a: ev for ev, lst in events for (_, a, _) in lst}


def test_pipeline_lists_events_in_order_and_agents_by_priority():
    out, events = pipeline(RULES)
    idx = [event_index(ev) for ev, _ in events]
    assert None not in idx, "unknown event line(s): %r\n%s" % ([ev for ev, _ in events], out)
    assert idx == sorted(idx) and len(set(idx)) == len(idx), "events out of order:\n%s" % out
    for must in ("OnConnect", "OnRcpt", "OnEndOfHeaders", "OnDisconnect", "OnCategorizedMessage"):
        assert any(ev.startswith(must) for ev, _ in events), "%s not listed:\n%s" % (must, out)
    listed = [a for _, lst in events for (_, a, _) in lst]
    assert sorted(listed) == sorted(AGENTS), "agents %r:\n%s" % (listed, out)
    for ev, lst in events:
        prios = [p for p, _, _ in lst]
        assert prios == sorted(prios), "%s: agents not by priority:\n%s" % (ev, out)
    assert not [a for _, lst in events for (_, a, d) in lst if d], "disabled agent(s) by default:\n%s" % out
    where = agents_by_event(events)
    assert where["recipient_filter"].startswith("OnRcpt"), out
    assert where["transport_rules"].startswith("OnResolvedMessage"), out
    assert where["cmt"].startswith("OnResolvedMessage"), out
    assert event_index(where["header_firewall"]) < event_index(where["transport_rules"]), out
    assert event_index(where["attribution"]) < event_index(where["recipient_filter"]), out


def test_pipeline_shows_disabled_agent():
    out, events = pipeline(fx("rules_cmt_disabled.toml"))
    flags = {a: d for _, lst in events for (_, a, d) in lst}
    assert flags.get("cmt") is True, "cmt not shown disabled:\n%s" % out
    assert [a for a, d in flags.items() if d] == ["cmt"], out


def test_pipeline_agent_priority_from_rule_file():
    out, events = pipeline(fx("rules_agent_priority.toml"))
    lst = [lst for ev, lst in events if ev.startswith("OnResolvedMessage")]
    assert len(lst) == 1, out
    order = [(p, a) for p, a, _ in lst[0]]
    names = [a for _, a in order]
    assert names.index("cmt") < names.index("transport_rules"), out
    assert (3, "transport_rules") in order, out


# Agent priorities within an event take effect: rules_agent_priority.toml is the
# sample with transport_rules at priority 3, so cmt (2) runs first on
# OnResolvedMessage, the one event two agents share. The first of them to set
# a recipient's route keeps it.

def resolved_agents(t):
    """The OnResolvedMessage agents in the order their log lines come."""
    seen = []
    for ln in t["log"]:
        m = re.match(r"OnResolvedMessage (\w+): ", ln)
        if m and m.group(1) not in seen:
            seen.append(m.group(1))
    return seen


def test_agent_priority_cmt_before_transport_rules_keeps_the_cmt_route():
    # Built-in order: rule #1's route_to wins over CMT (test_rule_route_to_wins_over_cmt).
    t = trace("rtm_on.eml", "alice@contoso.com", "x@gmail.com", peer=ONLINE,
              rules=fx("rules_agent_priority.toml"), expect_rc=0)
    assert_route(t, "x@gmail.com", "onprem", ONPREM_HOP, override="cmt", override_domain="contoso.com")
    assert len(t.header_added(STAMP)) == 1, t
    assert resolved_agents(t) == ["cmt", "transport_rules"], t
    assert t.log_lines("transport_rules", "Route via Trend", "Found header [x-routethroughtm: On]"), t
    assert t.log_lines("transport_rules", "Route via Trend", "override not applied"), t
    assert not t.log_lines("UseOverrideDomain"), t
    # the same message with the built-in priorities
    t = trace("rtm_on.eml", "alice@contoso.com", "x@gmail.com", peer=ONLINE, expect_rc=0)
    assert_route(t, "x@gmail.com", "trend", TREND_HOP, override="route_to", override_domain="trend.local")
    assert t.header_added(STAMP) == [], t
    assert resolved_agents(t) == ["transport_rules"], t


@pytest.mark.parametrize("rules,order", [
    (RULES, ["transport_rules", "cmt"]),
    (fx("rules_agent_priority.toml"), ["cmt", "transport_rules"]),
])
def test_agent_priority_orders_the_log_the_edits_and_the_snapshots(rules, order):
    # ceo@contoso.com from exchange-online to the Internet: CMT overrides and
    # stamps, the journal rule adds X-Journaled; both agents edit the headers.
    t = trace("plain.eml", "ceo@contoso.com", "x@gmail.com", peer=ONLINE, rules=rules,
              extra=["--snapshots"], expect_rc=0)
    assert_route(t, "x@gmail.com", "onprem", ONPREM_HOP, override="cmt", override_domain="contoso.com")
    assert resolved_agents(t) == order, t
    assert [s["agent"] for s in t.doc["snapshots"]] == order, t
    first, second = t.doc["snapshots"]
    assert second["before"] == first["after"], t
    names = [h["name"] for h in t["headers_added"]]
    want = {"cmt": STAMP, "transport_rules": "X-Journaled"}
    assert names == [want[a] for a in order], t


def test_pipeline_without_rules_file():
    p = run_raw(["pipeline"])
    out = p.stdout.decode("utf-8", "replace")
    assert p.returncode == 0, (p.returncode, out, p.stderr)
    for a in AGENTS:
        assert re.search(r"^\s+\d+\s+%s\b" % a, out, re.M), "%s not listed:\n%s" % (a, out)


def test_pipeline_bad_rules_file_fails():
    p = run_raw(["pipeline", "--rules", fx("rules_syntax_error.toml")])
    assert p.returncode != 0, (p.returncode, p.stdout, p.stderr)


def test_trace_runs_with_a_rules_file_that_only_warns(tmp_path):
    text = open(RULES, encoding="utf-8").read()
    old = 'Executives = ["ceo@contoso.com"]\n'
    p = tmp_path / "rules.toml"
    p.write_text(text.replace(old, old + 'Unused = ["nobody@contoso.com"]\n'), encoding="utf-8")
    t = trace("rtm_on.eml", "alice@contoso.com", "x@gmail.com", peer=ONPREM, rules=str(p), expect_rc=0)
    assert_route(t, "x@gmail.com", "trend", TREND_HOP, override="route_to",
                 override_domain="trend.local", rule="Route via Trend")


# ---------------------------------------------------------------------------
# The daemon takes the decisions trace shows (trace runs the daemon's code path).
# The appliance config names the rule file (`rules = ...`, ../shared/sluice.sample.toml);
# clients bind a loopback source address to be attributed: 127.0.0.1 exchange-onprem,
# 127.0.0.5 anonymous.
# ---------------------------------------------------------------------------

@pytest.fixture
def policy_daemon(sluice_factory):
    d = sluice_factory(start=False)
    with open(d.config, encoding="utf-8") as f:
        cfg = f.read()
    with open(d.config, "w", encoding="utf-8") as f:
        f.write("rules = %s\n" % json.dumps(RULES) + cfg)
    return d.start()


def _eml(name):
    with open(fx(name), "rb") as f:
        return f.read()


def test_daemon_relay_and_attachment_decisions_for_anonymous_client(policy_daemon):
    d = policy_daemon
    with d.connect(source="127.0.0.5") as c:
        c.ehlo()
        c.mail("bad@example.org")
        smtp_check(c.rcpt("x@gmail.com", expect=None), 554, "5.7.1")
        c.rcpt("user@contoso.com")
        smtp_check(c.data(_eml("attach_exe.eml")), 550, "5.7.1", "Executable attachments are refused")
        c.mail("someone@example.org")
        c.rcpt("user@contoso.com")
        smtp_check(c.data(_eml("received_31.eml")), 554, "5.4.14")
        c.mail("someone@example.org")
        c.rcpt("user@contoso.com")
        smtp_check(c.data(_eml("attach_pdf.eml")), 250, "2.0.0")
        smtp_check(c.cmd("QUIT"), 221)


def test_daemon_accepts_executable_from_organization(policy_daemon):
    d = policy_daemon
    with d.connect(source="127.0.0.1") as c:
        c.ehlo()
        qid = queued_id(c.send_mail("alice@contoso.com", ["x@gmail.com"], _eml("attach_exe.eml")))
        smtp_check(c.cmd("QUIT"), 221)
    assert qid in [e["id"] for e in d.queue_list()]
