"""The rules engine: records in, findings out.

``RULES`` is the one registry: every rule, in the order findings are reported. Each rule lives in
its own module with its data (code, slug, severity) and one pure ``check(records)``; its docstring
is its documentation (``gradscope explain``, docs/rules/).
"""

from __future__ import annotations

from gradscope.errors import UsageError
from gradscope.rules import (
    batchnorm_batch,
    bounded_activations,
    dead_units,
    exploding,
    init_mismatch,
    nonfinite,
    post_ln,
    saturation,
    skip_connections,
    stalled,
    vanishing,
)
from gradscope.rules.base import ERROR, INFO, SEVERITIES, WARNING, Finding, Records, Rule

RULES: tuple[Rule, ...] = (
    vanishing.RULE,
    exploding.RULE,
    nonfinite.RULE,
    dead_units.RULE,
    saturation.RULE,
    stalled.RULE,
    skip_connections.RULE,
    init_mismatch.RULE,
    batchnorm_batch.RULE,
    bounded_activations.RULE,
    post_ln.RULE,
)


def run_rules(records: Records, rules: tuple[Rule, ...] = RULES) -> list[Finding]:
    """Every rule's findings, most severe first, then in registry order."""
    findings = [f for rule in rules for f in rule.check(records)]
    return sorted(findings, key=lambda f: -SEVERITIES.index(f.severity))


def find_rule(key: str) -> Rule:
    """A rule by slug (``vanishing-gradient``) or code (``GS101``), case-insensitive."""
    for rule in RULES:
        if key.lower() in (rule.slug, rule.code.lower()):
            return rule
    known = ", ".join(f"{r.code} {r.slug}" for r in RULES)
    raise UsageError(f"No rule is called {key!r}; the rules are: {known}.")


__all__ = ["ERROR", "INFO", "RULES", "WARNING", "Finding", "Records", "Rule", "find_rule", "run_rules"]
