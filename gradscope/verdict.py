"""The trainability verdict of a report: ``trains``, ``at-risk`` or ``fails`` under the recipe the
probe ran, decided by the findings of the rules whose registry row says they decide it
(``Rule.decides``): an error finding of such a rule makes the verdict ``fails``, a warning makes
it ``at-risk``; anything else leaves ``trains`` (with its findings, if any). The verdict carries
the findings that decided it, the recipe, and the numbers the probe measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gradscope.errors import first_line
from gradscope.probe import Dynamics
from gradscope.rules import RULES, Finding
from gradscope.rules.base import ERROR, WARNING, fmt, json_safe

TRAINS, AT_RISK, FAILS = "trains", "at-risk", "fails"
VERDICTS = (TRAINS, AT_RISK, FAILS)
"""In increasing order of trouble; ``VERDICTS.index`` compares them."""

_DECIDING = {rule.code for rule in RULES if rule.decides}


@dataclass(frozen=True)
class Verdict:
    """``label`` (trains / at-risk / fails), the findings that decided it (``reasons``, as
    ``"GS101 vanishing-gradient"``), the recipe it assumed (None where no probe ran) and the
    numbers behind it (``evidence``); ``message`` says it in one sentence."""

    label: str
    reasons: list[str]
    recipe: dict | None
    evidence: dict = field(default_factory=dict)
    message: str = ""

    def to_dict(self) -> dict:
        return json_safe({"label": self.label, "reasons": list(self.reasons), "recipe": self.recipe,
                          "evidence": self.evidence, "message": self.message})

    @classmethod
    def from_dict(cls, data: dict) -> "Verdict":
        return cls(str(data.get("label")), list(data.get("reasons") or []), data.get("recipe"),
                   dict(data.get("evidence") or {}), str(data.get("message") or ""))


def decide(findings: list[Finding], dynamics: Dynamics | None, probe_error: str | None = None) -> Verdict:
    """The verdict of ``findings`` (and the probe's numbers, as evidence; ``probe_error``: why the
    probe did not finish, said in the message)."""
    deciding = [f for f in findings if f.code in _DECIDING and f.severity in (ERROR, WARNING)]
    errors = [f for f in deciding if f.severity == ERROR]
    label = FAILS if errors else AT_RISK if deciding else TRAINS
    decided_by = errors or deciding
    reasons = list(dict.fromkeys(f"{f.code} {f.rule}" for f in decided_by))
    evidence = _evidence(dynamics)
    recipe = dynamics.recipe.to_dict() if dynamics is not None else None
    return Verdict(label, reasons, recipe, evidence, _message(label, decided_by, dynamics, evidence, probe_error))


def _evidence(dynamics: Dynamics | None) -> dict:
    if dynamics is None:
        return {}
    losses = dynamics.losses
    evidence = {
        "probe_steps": dynamics.steps,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "loss_finite": not dynamics.nonfinite,
        "curvature": dynamics.curvature,
        "stability_threshold": dynamics.threshold,
        "stability_ratio": dynamics.stability_ratio,
        "largest_stable_lr": dynamics.largest_stable_lr,
        "median_update_ratio": dynamics.median_update_ratio,
        "constant_loss": dynamics.constant_loss,
        "fit": dynamics.fit,
        # why not, where the curvature was not measured: a missing number is not a healthy one
        "curvature_not_measured": dynamics.curvature_note if dynamics.curvature is None else None,
    }
    return {k: v for k, v in evidence.items() if v is not None}


def _message(label: str, decided_by: list[Finding], dynamics: Dynamics | None, evidence: dict,
             probe_error: str | None = None) -> str:
    recipe = f" under {dynamics.recipe.text()}" + (" (assumed)" if dynamics.recipe.assumed else "") \
        if dynamics is not None else ""
    measured = []
    if dynamics is not None:
        if "loss_first" in evidence and "loss_last" in evidence:
            measured.append(f"loss {fmt(evidence['loss_first'])} -> {fmt(evidence['loss_last'])} over "
                            f"{len(dynamics.losses) - 1} probe steps" if evidence["loss_finite"] else
                            f"loss non-finite after {max(len(dynamics.losses) - 1, 0)} probe steps")
        if dynamics.fitted:
            measured.append(f"the model already fits the batch (its loss is {fmt(evidence['fit'])} of a "
                            f"constant prediction's, {fmt(evidence['constant_loss'])})")
        if "stability_ratio" in evidence:
            measured.append(f"curvature {fmt(evidence['curvature'])} = {fmt(evidence['stability_ratio'])} x "
                            "the recipe's stability limit")
        if "curvature_not_measured" in evidence:
            measured.append(f"curvature not measured ({evidence['curvature_not_measured']})")
        if "median_update_ratio" in evidence:
            measured.append(f"median update ratio {fmt(evidence['median_update_ratio'])}")
    raised = f"it raised {first_line(probe_error)}; " if probe_error else ""
    what = "; ".join(measured) if measured else f"no recipe probe ran ({raised}the verdict rests on the findings alone)"
    if label == TRAINS:
        because = "no finding that predicts failure"
    else:
        because = ", ".join(dict.fromkeys(f"{f.code} {f.rule}" for f in decided_by))
    return f"{label}{recipe}: {because}. Measured: {what}."
