"""The verdict as every reporter shows it, first: a headline (``Verdict: FAILS under SGD lr 0.05
momentum 0.9 (assumed)``), the findings that decided it, what the recipe probe measured, and where
the recipe came from, with how to give the real one when it was assumed. Plain text; each reporter
escapes and styles it for its output (terminal, markdown, HTML, CI).

Where the recipe came from is ``report.options["recipe_from"]``, written by the command line (one
of :data:`RECIPE_SOURCES`); a report without it comes from the Python API, where the recipe is
``diagnose(..., optimizer=)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gradscope.probe import DEFAULT_LOSS, DEFAULT_LOSS_MARGIN, FITTED, GIVEN_LOSS
from gradscope.report import Report
from gradscope.rules.base import fmt
from gradscope.verdict import TRAINS, VERDICTS

if TYPE_CHECKING:
    from gradscope.baseline import Comparison

FROM_DEFAULT = "default"
FROM_FILE = "build_optimizer()"
FROM_OPTIONS = "command line"
FROM_OPTIONS_OVER_FILE = "command line, over build_optimizer()"
RECIPE_SOURCES = {
    FROM_DEFAULT: "Recipe assumed: {recipe} (gradscope's default), as the model file has no "
                  "build_optimizer(model) and no recipe option was given; give the real one with --optimizer, "
                  "--lr, --momentum and --weight-decay, or define build_optimizer(model) in the model file.",
    FROM_FILE: "Recipe from build_optimizer(model) in the model file.",
    FROM_OPTIONS: "Recipe from the command line.",
    FROM_OPTIONS_OVER_FILE: "Recipe from the command line, which overrides build_optimizer(model) in the model "
                            "file (not called); drop --optimizer, --lr, --momentum and --weight-decay to use it.",
}
"""What each value of ``report.options["recipe_from"]`` (set by the command line) tells the reader."""
ASSUMED_IN_PYTHON = ("Recipe assumed: {recipe} (gradscope's default), as no optimizer was given; give the "
                     "real one: gradscope.diagnose(..., optimizer=torch.optim.AdamW(model.parameters(), lr=3e-4)).")


@dataclass(frozen=True)
class VerdictText:
    """One verdict in plain text, in the order reporters show it."""

    label: str
    """``trains``, ``at-risk`` or ``fails``: reporters pick the colour from it."""
    verdict: str
    """``Verdict: FAILS``."""
    under: str
    """``under SGD lr 0.05 momentum 0.9 (assumed)``, or ``from the findings alone``."""
    details: list[str] = field(default_factory=list)
    """The reasons, the measured numbers, then notes on the recipe, one sentence each."""

    @property
    def headline(self) -> str:
        return f"{self.verdict} {self.under}"


def recipe_text(recipe: dict | None) -> str | None:
    """``SGD lr 0.05 momentum 0.9 (assumed)`` from ``Verdict.recipe`` (None: no probe ran)."""
    if recipe is None:
        return None
    text = recipe.get("text") or "a recipe it does not name"  # (a hand-edited baseline's)
    return str(text) + (" (assumed)" if recipe.get("assumed") else "")


def verdict_text(report: Report) -> VerdictText | None:
    """The report's verdict as text, or None for a report without one."""
    verdict = report.verdict
    if verdict is None:
        return None
    recipe = recipe_text(verdict.recipe)
    under = f"under {recipe}" if recipe is not None else "from the findings alone"
    details = [f"Decided by: {', '.join(verdict.reasons)}." if verdict.reasons else
               "No finding predicts failure." if verdict.label == TRAINS else "Decided by: the findings."]
    details += _measured(verdict.evidence)
    details += _loss_note(report.options.get("loss"))
    details += _recipe_notes(verdict.recipe, report.options)
    return VerdictText(verdict.label, f"Verdict: {verdict.label.upper()}", under, details)


def _number(value) -> str:
    return fmt(float(value))  # a JSON round trip leaves non-finite numbers as "nan", "inf"


def _measured(evidence: dict) -> list[str]:
    lines = []
    steps = evidence.get("probe_steps")
    if "loss_first" in evidence and "loss_last" in evidence:
        over = f" over {steps} probe steps" if steps is not None else ""
        if evidence.get("loss_finite", True):
            lines.append(f"Loss: {_number(evidence['loss_first'])} -> {_number(evidence['loss_last'])}{over}.")
        else:
            lines.append(f"Loss: {_number(evidence['loss_first'])} -> non-finite within {steps} probe steps.")
    if "fit" in evidence and "constant_loss" in evidence:
        fitted = float(evidence["fit"]) <= FITTED
        lines.append(f"Against a constant prediction (the same output for every sample, loss "
                     f"{_number(evidence['constant_loss'])}): {_number(evidence['fit'])}x."
                     + (" The model already fits the batch, so the findings that predict it cannot learn "
                        "are information." if fitted else ""))
    if "curvature" in evidence:
        line = f"Curvature: {_number(evidence['curvature'])}"
        if "stability_threshold" in evidence:
            line += f" against the recipe's stability limit {_number(evidence['stability_threshold'])}"
            if "stability_ratio" in evidence:
                line += f" ({_number(evidence['stability_ratio'])}x)"
        if "largest_stable_lr" in evidence:
            line += f"; largest stable lr {_number(evidence['largest_stable_lr'])}"
        lines.append(line + ".")
    elif "curvature_not_measured" in evidence:
        lines.append(f"Curvature: not measured: {evidence['curvature_not_measured']}.")
    if "median_update_ratio" in evidence:
        lines.append(f"Median update ratio ‖Δw‖ / ‖w‖: {_number(evidence['median_update_ratio'])}.")
    return lines


def _loss_note(kind: str | None) -> list[str]:
    """Which loss the steps and the probe used (``report.options["loss"]``, from ``diagnose``)."""
    if kind is None:
        return []
    if kind == DEFAULT_LOSS:
        return [f"Loss assumed: gradscope's default, 0.5 ‖y - r‖² / (P √K) toward a fixed random target, as the "
                f"model returns no loss and none was given; findings that scale with the loss are judged with a "
                f"{fmt(DEFAULT_LOSS_MARGIN)}x margin. Give the real one: loss_fn(output, inputs) in the model file, "
                "or gradscope.diagnose(..., loss_fn=...)."]
    if kind == GIVEN_LOSS:
        return ["Loss: the given loss_fn."]
    return [f"Loss: the model's own ({kind})."]


def _recipe_notes(recipe: dict | None, options: dict) -> list[str]:
    if recipe is None:
        if options.get("probe_error"):
            return [f"The recipe probe failed ({options['probe_error']}), so the verdict rests on the findings alone."]
        if options.get("probe_steps") == 0:
            return ["No recipe probe ran (0 probe steps), so the verdict rests on the findings alone."]
        return ["No recipe probe ran, so the verdict rests on the findings alone."]
    source = options.get("recipe_from")
    if source in RECIPE_SOURCES:
        return [RECIPE_SOURCES[source].format(recipe=recipe.get("text"))]
    if recipe.get("assumed"):
        return [ASSUMED_IN_PYTHON.format(recipe=recipe.get("text"))]
    return []


def comparison_lines(comparison: "Comparison") -> list[tuple[bool, str]]:
    """The verdict against the baseline and ``--fail-on``, as (fails the check, sentence): a
    regression or a verdict past the limit fails; an improvement or a baseline that predates
    verdicts is said."""
    now, before = comparison.verdict_now, comparison.verdict_before
    lines = []
    if comparison.verdict_regressed:
        lines.append((True, f"Verdict regressed against the baseline: {before} -> {now}{_recipes(comparison)}."))
    if comparison.verdict_over_limit:
        lines.append((True, f"Verdict {now}: --fail-on {comparison.verdict_limit} fails the check on "
                            f"{_and_worse(comparison.verdict_limit)}."))
    if comparison.verdict_improved:
        lines.append((False, f"Verdict improved against the baseline: {before} -> {now}{_recipes(comparison)}. "
                             f"Refresh the baseline with --update-baseline, so that going back to {before} fails."))
    if not (comparison.verdict_regressed or comparison.verdict_improved) and comparison.recipe_before is not None \
            and _recipes(comparison):
        lines.append((False, f"Verdict {now} as in the baseline, but under another recipe{_recipes(comparison)}; "
                             "refresh the baseline with --update-baseline if the new recipe is meant."))
    if comparison.baseline_layers is not None and comparison.verdict_before is None \
            and not comparison.predates_verdicts and comparison.verdict_now is not None:
        lines.append((False, "The baseline records no verdict (nothing could be judged when it was written), so "
                             "the verdict is not compared; refresh it with --update-baseline to record one."))
    if comparison.predates_verdicts:
        lines.append((False, "The baseline predates verdicts (it records none), so the verdict is not compared; "
                             "refresh it with --update-baseline to record one."))
    if comparison.renamed is not None:
        old, new = comparison.renamed
        lines.append((False, f"The model's layer names {'begin with ' + repr(new) if new else 'no longer begin with ' + repr(old)} "
                             f"where the baseline's {'did not' if new else 'did'} (the model "
                             f"{'put into' if new else 'taken out of'} a container): compared name for name "
                             "with that prefix; refresh the baseline with --update-baseline to record the new names."))
    if comparison.no_layer_in_common:
        lines.append((True, f"The baseline shares none of its {comparison.baseline_layers} layers with the model "
                            "(a baseline of another model, or every layer renamed), so the gradient flow was not "
                            "compared; if the change is meant, rewrite it with --update-baseline."))
    elif comparison.baseline_layers == 0:
        lines.append((False, "The baseline records no per-layer signal (no module hook ran when it was written: a "
                             "compiled model, or a backward that reached no module), so only the verdict and "
                             "findings are compared."))
    return lines


def _recipes(comparison: "Comparison") -> str:
    before, now = recipe_text(comparison.recipe_before), recipe_text(comparison.recipe_now)
    if before == now:
        return ""
    return f" (baseline under {before or 'no recipe probe'}; now under {now or 'no recipe probe'})"


def _and_worse(limit: str) -> str:
    return " or ".join(VERDICTS[VERDICTS.index(limit):])
