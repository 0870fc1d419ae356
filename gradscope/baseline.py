"""Baselines for ``gradscope check``: what a model's gradient flow looked like when it was known
good (its verdict, findings and per-layer backpropagated signal), as versioned JSON, and the
comparison that gates a change. Baselines written before verdicts existed have no ``verdict`` key;
they still load, and their verdict is not compared."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from gradscope.atomic import write_atomic
from gradscope.report import Report
from gradscope.errors import UsageError
from gradscope.rules import SEVERITIES, Finding
from gradscope.verdict import VERDICTS

FORMAT = "gradscope-baseline"
VERSION = 1


def baseline_dict(report: Report) -> dict:
    signal = report.layers.set_index("layer")["out_grad_norm"]
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": report.model,
        "options": report.options,
        "verdict": None if report.verdict is None else {
            "label": report.verdict.label, "reasons": list(report.verdict.reasons), "recipe": report.verdict.recipe},
        "findings": [{"code": f.code, "rule": f.rule, "severity": f.severity, "layers": f.layers}
                     for f in report.findings],
        "signal": {name: float(v) for name, v in signal.items() if v is not None and math.isfinite(v) and v > 0},
    }


def write_baseline(report: Report, path: str | Path) -> None:
    write_atomic(path, json.dumps(baseline_dict(report), indent=2, sort_keys=True) + "\n")


def read_baseline(path: str | Path) -> dict:
    """The baseline at ``path``, validated; a ``UsageError`` saying how to fix it otherwise."""
    path = Path(path)
    redo = "write a new one with --update-baseline"
    if not path.exists():
        raise UsageError(f"No baseline at {path}; create it with `gradscope check FILE --baseline {path} --update-baseline`.")
    try:
        text = path.read_text(encoding="utf-8-sig")  # an editor's byte-order mark is no damage
    except OSError as e:
        raise UsageError(f"Cannot read the baseline {path}: {e.strerror or e}; give the path of a baseline JSON file.") from e
    except UnicodeDecodeError as e:
        raise UsageError(f"The baseline {path} is not valid JSON ({e}); {redo}.") from e
    try:
        data = json.loads(text)
    except ValueError as e:  # (a JSONDecodeError, or an integer past Python's 4,300 digits)
        raise UsageError(f"The baseline {path} is not valid JSON ({e}); {redo}.") from e
    except RecursionError as e:  # arrays nested thousands deep
        raise UsageError(f"The baseline {path} nests its JSON too deep to read; {redo}.") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UsageError(f"{path} is not a gradscope baseline (no \"format\": \"{FORMAT}\"); {redo}.")
    if type(data.get("version")) is not int or data.get("version") != VERSION:  # not true, not 1.0
        raise UsageError(
            f"The baseline {path} has version {data.get('version')!r}; this gradscope reads version "
            f"{VERSION}. {redo[0].upper() + redo[1:]}."
        )
    findings, signal = data.get("findings"), data.get("signal")
    if not isinstance(findings, list) or not all(isinstance(f, dict) and isinstance(f.get("rule"), str) for f in findings):
        raise UsageError(f"The baseline {path} has a malformed \"findings\" list; {redo}.")
    if not isinstance(signal, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and _finite(v) and v > 0
        for v in signal.values()
    ):
        raise UsageError(f"The baseline {path} has a malformed \"signal\" table (layer → positive number); {redo}.")
    verdict = data.get("verdict")
    if verdict is not None and not (
        isinstance(verdict, dict) and verdict.get("label") in VERDICTS
        and (verdict.get("recipe") is None or isinstance(verdict["recipe"], dict))
    ):
        raise UsageError(f"The baseline {path} has a malformed \"verdict\" (a label, one of "
                         f"{', '.join(VERDICTS)}, and the recipe or null); {redo}.")
    return data


def _finite(v: int | float) -> bool:
    """``math.isfinite`` for JSON numbers: an integer of hundreds of digits is no float."""
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


@dataclass
class Comparison:
    new_findings: list[Finding]
    """Findings at or above the fail level whose rule the baseline did not have."""
    moved: dict[str, tuple[float, float]]
    """Layers whose signal moved by more than the tolerance: layer → (baseline, now)."""
    missing_layers: list[str]
    added_layers: list[str]
    verdict_now: str | None = None
    verdict_before: str | None = None
    """The baseline's verdict label; None when it records none."""
    recipe_now: dict | None = None
    recipe_before: dict | None = None
    """The recipes the two verdicts were reached under (``Verdict.recipe``; None: no probe ran)."""
    predates_verdicts: bool = False
    """The baseline was written before verdicts were recorded: its verdict is not compared."""
    verdict_limit: str | None = None
    """``--fail-on`` given as a verdict (at-risk, fails): a verdict at or past it fails."""
    baseline_layers: int | None = None
    """Layers with a signal in the baseline (None: no baseline)."""
    compared_layers: int = 0
    """Of those, the layers the model still has, whose signal was compared."""
    renamed: tuple[str, str] | None = None
    """(prefix in the baseline, prefix now) when the names were compared with one for the other:
    the model wrapped in a container (``("", "model.")``) or taken out of one."""

    @property
    def no_layer_in_common(self) -> bool:
        """The baseline has a signal, but on none of the model's layers: nothing was compared (a
        baseline of another model, or every layer renamed), which must not pass as unchanged."""
        return bool(self.baseline_layers) and self.compared_layers == 0

    @property
    def verdict_regressed(self) -> bool:
        """The verdict is worse than the baseline's (``VERDICTS`` order)."""
        return self._known() and VERDICTS.index(self.verdict_now) > VERDICTS.index(self.verdict_before)

    @property
    def verdict_improved(self) -> bool:
        return self._known() and VERDICTS.index(self.verdict_now) < VERDICTS.index(self.verdict_before)

    @property
    def verdict_over_limit(self) -> bool:
        return (self.verdict_limit is not None and self.verdict_now in VERDICTS
                and VERDICTS.index(self.verdict_now) >= VERDICTS.index(self.verdict_limit))

    def _known(self) -> bool:
        return self.verdict_now in VERDICTS and self.verdict_before in VERDICTS

    @property
    def failed(self) -> bool:
        return bool(self.new_findings or self.moved or self.verdict_regressed or self.verdict_over_limit
                    or self.no_layer_in_common)


def _unreached_layers(report: Report) -> set[str]:
    """Layers with a parameter no gradient reached on any step (stalled-updates' evidence): one
    that also has no signal now is a layer the forward stopped calling, still in the model, its
    signal gone (a layer that has one, with an unused parameter such as a ViT's mask token, is
    not). Never the root, which every report measures."""
    layers = set()
    for finding in report.findings:
        if finding.rule == "stalled-updates":
            for name, why in (finding.evidence or {}).get("parameters", {}).items():
                if str(why).startswith("no gradient reached"):
                    layers.add(name.rpartition(".")[0])
    return layers - {""}


def compare(report: Report, baseline: dict | None, fail_on: str, tolerance: float) -> Comparison:
    """Gate ``report`` against ``baseline`` (or against nothing: findings alone).

    ``fail_on`` is a severity (info, warning, error), a verdict (at-risk, fails) or ``never``.
    A finding fails when its severity is at or above a severity ``fail_on`` and the baseline had
    no finding of the same rule. The verdict fails when it is at or past a verdict ``fail_on``, or
    worse than the baseline's. A layer fails when its backpropagated signal moved by more than
    ``tolerance`` orders of magnitude from the baseline's."""
    known = {f["rule"] for f in baseline["findings"]} if baseline else set()
    level = SEVERITIES.index(fail_on) if fail_on in SEVERITIES else len(SEVERITIES)
    new = [f for f in report.findings if SEVERITIES.index(f.severity) >= level and f.rule not in known]
    moved: dict[str, tuple[float, float]] = {}
    missing: list[str] = []
    added: list[str] = []
    renamed, compared = None, 0
    if baseline:
        now = baseline_dict(report)["signal"]
        measured = dict(zip(report.layers["layer"], report.layers["out_grad_norm"].astype(float)))
        before = baseline["signal"]
        renamed = _wrapped(list(before), list(measured))
        outside: list[str] = []
        if renamed is not None:
            outside = [layer for layer in before if _renamed(layer, *renamed) is None]
            before = {_renamed(layer, *renamed): value for layer, value in before.items() if layer not in outside}
        unreached = _unreached_layers(report)
        for layer, old in before.items():
            if layer not in measured:
                if layer in unreached:  # still in the model, but the forward no longer reaches it
                    moved[layer] = (old, 0.0)
                else:
                    missing.append(layer)
            elif layer not in now:  # the signal became zero or non-finite
                moved[layer] = (old, measured[layer])
            elif abs(math.log10(now[layer]) - math.log10(old)) > tolerance:
                moved[layer] = (old, now[layer])
        added = [layer for layer in now if layer not in before and layer]  # (the root is in every model)
        align = renamed or ("", "")
        compared = len([n for n in baseline["signal"]
                        if n and n not in outside and _renamed(n, *align) not in missing])
        missing += outside
    recorded = (baseline or {}).get("verdict") or {}
    return Comparison(
        new, moved, missing, added,
        verdict_now=report.verdict.label if report.verdict is not None else None,
        verdict_before=recorded.get("label"),
        recipe_now=report.verdict.recipe if report.verdict is not None else None,
        recipe_before=recorded.get("recipe"),
        predates_verdicts=baseline is not None and "verdict" not in baseline,
        verdict_limit=fail_on if fail_on in VERDICTS else None,
        # the root ("") is in every model: sharing it alone is sharing nothing
        baseline_layers=len([n for n in baseline["signal"] if n]) if baseline else None,
        compared_layers=compared if baseline else 0,
        renamed=renamed,
    )


def _renamed(layer: str, old: str, new: str) -> str | None:
    """``layer``'s name with the prefix ``old`` (ending in a dot, or empty) made ``new``: the root
    of a wrapped model is the module its prefix names, and the module a prefix names is the root
    of an unwrapped one. None for a layer outside ``old`` (a sibling of the module taken out of
    its container: gone from the model)."""
    if not layer:
        return new[:-1] if new else ""
    if old and layer == old[:-1]:
        return new[:-1] if new else ""
    if not layer.startswith(old):
        return None
    return new + layer[len(old):]


def _wrapped(before: list[str], now: list[str]) -> tuple[str, str] | None:
    """(old prefix, new prefix) under which more than half of the baseline's layer names and more
    than half of the model's meet, one for one, where as they are fewer than half of the
    baseline's do: the model put into a container (every name now begins with ``model.``) or
    taken out of one. None otherwise."""
    names, current = [n for n in before if n], {n for n in now if n}
    if not names or not current:
        return None
    shared = len([n for n in names if n in current])
    if shared * 2 > len(names):
        return None
    candidates = {("", n[:i + 1]) for n in current for i, ch in enumerate(n) if ch == "."}
    candidates |= {(n[:i + 1], "") for n in names for i, ch in enumerate(n) if ch == "."}
    best, count = None, shared
    for old, new in sorted(candidates):
        mapped = [m for m in (_renamed(n, old, new) for n in names) if m]
        if len(set(mapped)) < len(mapped):
            continue  # two layers would be compared with one
        met = len([m for m in mapped if m in current])
        if met > count:
            best, count = (old, new), met
    return best if best is not None and count * 2 > len(names) and count * 2 > len(current) else None
