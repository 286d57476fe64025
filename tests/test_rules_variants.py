"""The rule-file variants of tests/helpers/rules.py: each one applies to
config/rules.toml and changes it, and an edit whose anchor is gone fails
loudly instead of yielding the unchanged sample."""

import pytest

from helpers.rules import VARIANTS, VariantError, append, insert_after, replace, sample_text, variant_text


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_applies_and_changes_the_sample(name):
    assert variant_text(name) != sample_text()


@pytest.mark.parametrize("edit", [replace("no such text in the sample", "x"),
                                  insert_after("no such text in the sample", "x")])
def test_a_missing_anchor_fails_loudly(edit):
    with pytest.raises(VariantError, match="occurs 0 times"):
        variant_text(None, edit)


def test_an_anchor_found_twice_fails_loudly():
    with pytest.raises(VariantError, match="occurs [2-9]"):
        variant_text(None, replace("[[connector]]", "[[connector]]"))


def test_append_adds_a_section_after_a_blank_line():
    assert variant_text(None, append("[x]\n")).endswith("\n\n[x]\n")
