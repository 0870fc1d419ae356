"""What every rule works with: the records it reads (:class:`Records`), what its check detects
(:class:`Violation`), what a finding reports (:class:`Finding`), and the rule itself as data
(:class:`Rule`)."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import numpy as np
import pandas as pd

from gradscope.layers import family_of_type, is_weight_type, leaf_layers, weight_spans
from gradscope.structure import ModelStructure

ERROR, WARNING, INFO = "error", "warning", "info"
SEVERITIES = (INFO, WARNING, ERROR)
"""In increasing order; ``SEVERITIES.index`` compares them."""

RECENT_STEPS = 5
"""Rules that judge a run's current state look at this many of its latest logged steps."""

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
class Rule:
    """A row of the registry: code, slug, default severity and summary, the rule module's pure
    ``detect(records) -> list[Violation]`` and its bad/good model ``pair(bad) -> dict`` (the
    keyword arguments of ``gradscope.diagnose``).

    The docstring of ``detect`` (What it checks / Why it matters / Example / Fix) is the rule's
    documentation: ``gradscope explain`` and docs/rules/ are generated from it.
    """

    code: str
    slug: str
    severity: str
    summary: str
    detect: Callable[["Records"], list[Violation]]
    pair: Callable[[bool], dict]

    @property
    def doc(self) -> str:
        return inspect.getdoc(self.detect) or ""

    @property
    def module(self) -> str:
        """The module that holds the rule, named after its slug: ``gradscope.rules.dead_units``."""
        return self.detect.__module__

    def check(self, records: "Records") -> list[Finding]:
        """The rule's findings on ``records``; no side effects."""
        return [
            Finding(self.code, self.slug, v.severity or self.severity, list(v.layers), v.message, v.fix,
                    v.evidence)
            for v in self.detect(records)
        ]


@dataclass(frozen=True)
class Records:
    """The records rules read: the long history table, the layer table and, from
    ``gradscope.diagnose``, the model's structure (None for a monitor's history).

    ``history`` has columns step, layer, metric, value; ``layers`` has layer, type, kind
    (parameter, module, activation), order (forward order) and, for parameters, trainable.
    """

    history: pd.DataFrame
    layers: pd.DataFrame
    structure: ModelStructure | None = None

    @cached_property
    def steps(self) -> list[int]:
        return sorted(int(s) for s in self.history["step"].unique())

    @cached_property
    def recent_steps(self) -> list[int]:
        return self.steps[-RECENT_STEPS:]

    def wide(self, metric: str, recent: bool = False) -> pd.DataFrame:
        """One row per logged step (only the recent ones if ``recent``), one column per layer,
        for ``metric`` (NaN where absent)."""
        steps = self.recent_steps if recent else self.steps
        rows = self.history[self.history["metric"] == metric]
        if recent and len(steps) < len(self.steps):
            rows = rows[rows["step"] >= steps[0]]
        if rows.empty:
            return pd.DataFrame(index=pd.Index(steps, name="step"))
        table = rows.pivot_table(index="step", columns="layer", values="value", aggfunc="last",
                                 dropna=False)
        return table.reindex(steps)

    @cached_property
    def types(self) -> dict[str, str]:
        return dict(zip(self.layers["layer"], self.layers["type"]))

    @cached_property
    def depth_order(self) -> list[str]:
        """Module and activation layers in forward order."""
        frame = self.layers[self.layers["kind"] != "parameter"].sort_values("order")
        return list(frame["layer"])

    @cached_property
    def leaves(self) -> list[str]:
        """Layers in forward order that contain no other module: the chain the signal runs
        through (functional activations are leaves; the root only when it is alone)."""
        return leaf_layers(self.depth_order)

    def preceding_weight_layer(self, layer: str) -> str | None:
        """The last Linear/Conv layer that ran before ``layer`` in forward order."""
        names = self.depth_order
        if layer not in names:
            return None
        for name in reversed(names[:names.index(layer)]):
            if is_weight_type(self.types.get(name, "")):
                return name
        return None

    @cached_property
    def activations_after(self) -> dict[str, str | None]:
        """Each weight layer and the activation layer that follows it in forward order (None where
        the next weight layer comes first), classified by recorded type (``gradscope.layers``)."""
        spans = weight_spans(self.depth_order, lambda n: is_weight_type(self.types.get(n, "")),
                             lambda n: family_of_type(self.types.get(n, "")))
        return {s.weight: s.activation for s in spans}


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
