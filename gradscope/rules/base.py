"""What every rule works with besides the records it reads (gradscope/records.py): what its check
detects (:class:`Violation`), what a finding reports (:class:`Finding`), the evidence it needs
before it can judge (:class:`Need`), and the rule itself as data (:class:`Rule`)."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from gradscope.records import Records

ERROR, WARNING, INFO = "error", "warning", "info"
DIAGNOSE, COORDCHECK = "diagnose", "coordcheck"
"""The fronts whose records rules read: ``gradscope.diagnose`` (and a monitor's history) give
:class:`Records`, ``gradscope.coordcheck`` a width sweep (``gradscope.sweep.WidthSweep``)."""
SEVERITIES = (INFO, WARNING, ERROR)
"""In increasing order; ``SEVERITIES.index`` compares them."""

TINY = 1e-30
"""Signals at or below this (exact zeros included) count as this value on log scales."""


@dataclass(frozen=True)
class Finding:
    """One problem found: where (``layers``, in depth order), how bad, the numbers, and the fix."""

    code: str
    rule: str
    severity: str
    layers: list[str]
    message: str
    fix: str
    evidence: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "code": self.code, "rule": self.rule, "severity": self.severity,
            "layers": list(self.layers), "message": self.message, "fix": self.fix,
            "evidence": json_safe(self.evidence),
        }


@dataclass(frozen=True)
class Violation:
    """What a rule's ``detect`` found, before the registry names it: where (``layers``, in depth
    order), the message, the fix, the numbers, and a severity where it differs from the rule's."""

    layers: list[str]
    message: str
    fix: str
    evidence: dict = field(default_factory=dict)
    severity: str | None = None


@dataclass(frozen=True)
class Need:
    """Evidence a rule needs before it can judge: ``name`` as reports print it (``"depth
    profile"``), and ``missing(records)``, which says why the records lack it (None when they
    have it). The ones rules declare are in ``gradscope.rules.coverage``."""

    name: str
    missing: Callable[["Records"], str | None]


@dataclass(frozen=True)
class Rule:
    """A row of the registry: code, slug, default severity and summary, the rule module's pure
    ``detect(records) -> list[Violation]``, its bad/good model ``pair(bad) -> dict`` (the
    keyword arguments of ``gradscope.<front>``: ``gradscope.diagnose`` for most rules,
    ``gradscope.coordcheck`` for the width rules) and the evidence it ``needs`` to judge at all.

    The docstring of ``detect`` (What it checks / Why it matters / Example / Fix) is the rule's
    documentation: ``gradscope explain`` and docs/rules/ are generated from it.
    """

    code: str
    slug: str
    severity: str
    summary: str
    detect: Callable[["Records"], list[Violation]]
    pair: Callable[[bool], dict]
    decides: bool = False
    """Whether its findings decide the trainability verdict (``gradscope.verdict``): an error
    finding makes it ``fails``, a warning ``at-risk``."""
    needs: tuple[Need, ...] = ()
    """What the records must hold for ``detect`` to judge them; where one is missing, no finding
    means "not checked", not "fine"."""
    front: str = DIAGNOSE
    """The front whose records ``detect`` reads and whose keyword arguments ``pair`` returns:
    ``DIAGNOSE`` (Records) or ``COORDCHECK`` (a width sweep)."""

    @property
    def needs_training_run(self) -> bool:
        """Whether it judges a monitored training run (its ``pair`` has a ``run()``), not
        ``gradscope.diagnose``'s probe."""
        return any(need.name == "training run" for need in self.needs)

    @property
    def doc(self) -> str:
        return inspect.getdoc(self.detect) or ""

    @property
    def module(self) -> str:
        """The module that holds the rule, named after its slug: ``gradscope.rules.dead_units``."""
        return self.detect.__module__

    def missing(self, records: "Records") -> str | None:
        """The first of its needs that ``records`` lack, with why (``"depth profile: fewer than 4
        layers carry a backpropagated signal"``), or None when it can judge them."""
        for need in self.needs:
            reason = need.missing(records)
            if reason is not None:
                return f"{need.name}: {reason}"
        return None

    def check(self, records: "Records") -> list[Finding]:
        """The rule's findings on ``records``; no side effects."""
        return [
            Finding(self.code, self.slug, v.severity or self.severity, list(v.layers), v.message, v.fix,
                    v.evidence)
            for v in self.detect(records)
        ]


def about_assumed_recipe(violations: list[Violation], records: Records) -> list[Violation]:
    """A finding about the recipe that gradscope assumed (the user gave no optimizer) is information,
    never a warning or an error: an assumed default must not make a finding. The model's own
    problems behind it (a vanishing or exploding gradient) have rules of their own."""
    dynamics = records.dynamics
    if dynamics is None or not dynamics.recipe.assumed:
        return violations
    note = (f" The recipe was assumed ({dynamics.recipe.text()}, as no optimizer was given), so this is "
            "informational: give the real optimizer to judge it.")
    return [replace(v, message=v.message + note, severity=INFO) for v in violations]


def about_fitted_model(violations: list[Violation], records: Records, deep: bool = False) -> list[Violation]:
    """A prediction that the model will not train, made of a model that already fits the probe
    batch (a trained model, a resumed checkpoint: :attr:`Dynamics.fitted`), is information:
    training got past it. With ``deep`` (the predictions read from small gradients or updates),
    only a model that fits it far better (:attr:`Dynamics.deeply_fitted`), whose gradients are
    small because its loss is."""
    dynamics = records.dynamics
    if dynamics is None or not (dynamics.deeply_fitted if deep else dynamics.fitted):
        return violations
    note = (f" But the model already fits the probe batch: its loss ({fmt(dynamics.losses[0])}) is "
            f"{fmt(dynamics.fit)} of a constant prediction's ({fmt(dynamics.constant_loss)}), so training "
            "got past this (a trained model or a resumed checkpoint); informational.")
    return [replace(v, message=v.message + note, severity=INFO) if v.severity != INFO else v
            for v in violations]


def log10(values: np.ndarray | float) -> np.ndarray:
    return np.log10(np.maximum(np.asarray(values, dtype=float), TINY))


def json_safe(value: object) -> object:
    """Plain JSON types; non-finite floats become the strings "nan", "inf", "-inf"."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def fmt(value: float) -> str:
    """A number for a message: 3 significant digits, scientific when far from 1."""
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
        return f"{value:.2e}"
    return f"{value:.3g}"


def pct(value: float) -> str:
    return f"{100 * value:.0f}%"
