"""Every rule is documented where it lives, and docs/rules/ is generated from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradscope.rules import RULES, find_rule
from gradscope.rules.docs import SECTIONS, pages, sections

DOCS = Path(__file__).resolve().parents[2] / "docs" / "rules"


@pytest.mark.parametrize("rule", RULES, ids=[r.slug for r in RULES])
def test_docstring_has_every_section(rule):
    found = sections(rule)
    assert list(found) == list(SECTIONS)
    assert all(found.values())


def test_codes_and_slugs_are_unique():
    assert len({r.code for r in RULES}) == len({r.slug for r in RULES}) == len(RULES)


def test_docs_rules_is_up_to_date():
    for name, text in pages().items():
        path = DOCS / name
        assert path.exists() and path.read_text(encoding="utf-8") == text, (
            f"{path} is stale: run `python -m gradscope.rules.docs docs/rules`"
        )


def test_find_rule_by_slug_or_code():
    assert find_rule("GS101").slug == "vanishing-gradient"
    assert find_rule("dead-units").code == "GS104"
    with pytest.raises(ValueError, match="No rule is called 'vanish'; the rules are: GS101 vanishing-gradient"):
        find_rule("vanish")
