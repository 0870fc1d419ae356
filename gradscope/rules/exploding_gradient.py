"""The exploding-gradient rule: what it detects, its fix, and its bad/good model pair.

Its code and severity are in the registry, ``gradscope.rules.RULES``."""

from __future__ import annotations

import numpy as np
import torch.nn as nn

from gradscope.rules import advice
from gradscope.events import covers
from gradscope.records import Records
from gradscope.rules.base import WARNING, Violation, fmt, log10
from gradscope.rules.example_models import stack, x64
from gradscope.rules.profile import SignalProfile, signal_profile

ORDERS = 3.0
"""Orders of magnitude the signal must gain across depth toward the input."""

JUMP_ORDERS = 2.0
"""Orders of magnitude by which the total gradient norm of a step must exceed the median of the
steps before it."""

JUMP_WINDOW = 5
"""Earlier logged steps whose median is the reference for a jump."""


def detect(records: Records) -> list[Violation]:
    """What it checks:
        Two patterns. Across depth: the backpropagated signal (``out_grad_norm``) grows by 3 or
        more orders of magnitude from the output side to the input side (the same robust trend
        as vanishing-gradient, in the other direction). Across steps: the total gradient norm of
        a logged step is 100x or more the median of the up to 5 logged steps before it and above
        every earlier logged step's (a converged model's gradient norm rises 100x on a hard batch
        back to the level of its first steps); in a monitored run whose every-step detector saw
        that step, the detector judges it instead: a spike it caught is reported as such
        (training-spike, and training-divergence if the run was lost), a jump it did not flag is
        within the run's own spread. When
        ``diagnose``'s recipe is an adaptive optimizer (Adam …), whose step size does not scale
        with the gradient, the finding is a warning. In a normalised model without skip
        connections, where the trend's other estimates take out the steps the normalisation
        layers make, a warning when the profile as measured grows by 3 orders toward the input,
        spread over the depth (no one layer makes half of it) and made by those layers: the
        gradient explosion of deep BatchNorm stacks (Yang et al. 2019).

    Why it matters:
        Gradients that grow toward the input make the first layers take huge steps and the loss
        diverge; a sudden jump between steps is the usual prelude to a loss spike or NaNs. In a
        deep normalised stack the first layers' steps are orders of magnitude larger than the
        last ones' relative to their weights: those layers churn while the rest barely move, and
        such stacks sit near chance (on digits, 50-60 Linear/Conv-BatchNorm-ReLU blocks without
        skips fail under SGD with momentum, the 60-block MLP under Adam too; with skips such
        blocks train).

    Example:
        A 10-layer tanh-free linear stack with N(0, 1) weights of width 64: each layer multiplies
        the signal by about 8.

        >>> import torch, torch.nn as nn
        >>> bad = nn.Sequential(*[nn.Linear(64, 64) for _ in range(10)])
        >>> for layer in bad:
        ...     _ = nn.init.normal_(layer.weight, std=1.0)

    Fix:
        Clip the gradient norm (``torch.nn.utils.clip_grad_norm_``) at a value derived from the
        norms observed, lower the learning rate, initialise for the activation
        (``gradscope.fixes.reinit``) and add normalisation.
    """
    findings = []
    # an adaptive optimizer's steps do not scale with the gradient: at risk, not failing
    severity = WARNING if records.dynamics is not None and records.dynamics.recipe.adaptive else None
    profile = signal_profile(records)
    totals = _total_grad_norms(records)
    typical = float(np.median(totals[np.isfinite(totals)])) if np.isfinite(totals).any() else float("nan")
    if profile is not None and profile.rise <= -ORDERS:
        in_log = profile.log_signal[: profile.quarter]
        threshold = float(np.median(profile.log_signal[-profile.quarter:])) + ORDERS
        strong = [n for n, y in zip(profile.layers, profile.log_signal) if y >= threshold]
        message = (
            f"The backpropagated signal grows by {-profile.rise:.1f} orders of magnitude from the "
            f"output side ({fmt(profile.output_side)}) to the input side "
            f"({fmt(float(10 ** np.median(in_log)))}) across {len(profile.layers)} layers, about "
            f"x{fmt(profile.per_layer_factor)} per layer"
            + (f"; above 1e3 times the output side at {advice.layer_text(strong)}." if strong else ".")
        )
        findings.append(Violation(strong or profile.layers[: profile.quarter], message,
                                     _fix(records, typical), {
            "orders": -profile.rise,
            "trend_orders": -profile.trend,
            "adjusted_trend_orders": -profile.adjusted_trend,
            "signal_output_side": profile.output_side,
            "signal_input_side": profile.input_side,
            "per_layer_factor": profile.per_layer_factor,
            "layers_in_profile": len(profile.layers),
            "steps": profile.steps,
        }, severity))
    elif profile is not None and _normalised_stack(records, profile):
        findings.append(_normalised_stack_violation(records, profile))
    jump = _first_jump(records.steps, totals)
    if jump is not None and not _caught_by_the_pulse(records, jump[0]):
        step, norm, before = jump
        grads = records.wide("grad_norm")
        row = grads.loc[step]
        top = [str(n) for n in row[np.isfinite(row)].sort_values(ascending=False).index[:5]]
        message = (
            f"The total gradient norm jumped to {fmt(norm)} at step {step}, "
            f"{fmt(norm / before)} times the median of the logged steps before it ({fmt(before)}); "
            f"largest at {advice.layer_text(top)}."
        )
        findings.append(Violation(top, message, _fix(records, before), {
            "step": step, "total_grad_norm": norm, "median_before": before,
            "ratio": norm / before,
        }, severity))
    return findings


def _normalised_stack(records: Records, profile: SignalProfile) -> bool:
    """The growth of a deep normalised stack without skips: the profile as measured grows by
    ``ORDERS`` toward the input, spread over the depth (no one layer makes half of it), while the
    normalisation-adjusted profile, which takes out the steps those layers make, does not."""
    structure = records.structure
    if structure is None or not structure.normalized or structure.skips:
        return False
    rise = profile.measured_rise
    return (rise <= -ORDERS and profile.largest_step < -rise / 2
            and profile.adjusted_trend > -ORDERS)


def _normalised_stack_violation(records: Records, profile: SignalProfile) -> Violation:
    orders = -profile.measured_rise
    message = (
        f"The backpropagated signal grows by {orders:.1f} orders of magnitude from the output side "
        f"({fmt(profile.output_side)}) to the input side ({fmt(profile.input_side)}) across "
        f"{len(profile.layers)} layers, about x{fmt(profile.per_layer_factor)} per layer, and the "
        "normalisation layers' backward makes the growth: a deep normalised stack without skip "
        "connections, whose first layers take steps orders of magnitude larger than its last.")
    fix = ("Add skip connections around the blocks (the gradient then reaches each layer through the "
           "identity path as well), or make the stack shallower; lower the learning rate:\n"
           + advice.RESIDUAL_SNIPPET)
    return Violation(profile.layers[: profile.quarter], message, fix, {
        "orders": orders,
        "trend_orders": -profile.trend,
        "adjusted_trend_orders": -profile.adjusted_trend,
        "largest_step_orders": profile.largest_step,
        "signal_output_side": profile.output_side,
        "signal_input_side": profile.input_side,
        "per_layer_factor": profile.per_layer_factor,
        "layers_in_profile": len(profile.layers),
        "steps": profile.steps,
    }, WARNING)


def _total_grad_norms(records: Records) -> np.ndarray:
    grads = records.wide("grad_norm")
    if grads.empty or grads.shape[1] == 0:
        return np.array([])
    values = grads.to_numpy(dtype=float)
    with np.errstate(all="ignore"):
        return np.sqrt(np.nansum(values ** 2, axis=1))


def _caught_by_the_pulse(records: Records, step: int) -> bool:
    """Whether a monitored run's every-step detector judged ``step``: then a jump there is its
    business. If it raised an event covering the step, the jump is a spike (training-spike, and
    training-divergence if the run was lost), reported there with its layer and whether the run
    recovered; if it saw the step and raised none, the jump is within the run's own spread of
    gradient norms (a converged classifier's norm rises 100x on one hard batch), no explosion."""
    if records.pulse is None:
        return False
    if any(covers(event, step) for event in records.events):
        return True
    return "step" in records.pulse.columns and bool((records.pulse["step"] == step).any())


def _first_jump(steps: list[int], totals: np.ndarray) -> tuple[int, float, float] | None:
    for i in range(1, len(totals)):
        before = totals[max(0, i - JUMP_WINDOW):i]
        before = before[np.isfinite(before) & (before > 0)]
        if len(before) == 0 or not np.isfinite(totals[i]):
            continue
        reference = float(np.median(before))
        earlier = totals[:i][np.isfinite(totals[:i])]
        # a jump back to a level the run already had (its first steps' norms) is no explosion
        if log10(totals[i]) - log10(reference) >= JUMP_ORDERS and (len(earlier) == 0 or totals[i] > earlier.max()):
            return steps[i], float(totals[i]), reference
    return None


def _fix(records: Records, typical_norm: float) -> str:
    parts = []
    if np.isfinite(typical_norm) and typical_norm > 0:
        parts.append(
            f"Clip the gradient norm near its typical value ({fmt(typical_norm)} here):\n"
            + advice.clip_code(typical_norm)
        )
    structure = records.structure
    if structure is not None:
        large = [w.name for w in structure.weight_layers if w.gain > 3.0]
        if large:
            parts.append(
                f"{len(large)} layers have weights far larger than any standard init (std x "
                f"sqrt(fan_in) up to {fmt(max(w.gain for w in structure.weight_layers))}); "
                "initialise them for their activation:\n"
                + advice.init_code(large, "xavier", "linear")
            )
    parts.append("Lower the learning rate, and add normalisation "
                 f"({advice.norm_choice(structure)}) between the layers.")
    return "\n".join(parts)


def pair(bad: bool) -> dict:
    # a linear stack with N(0, 1) weights multiplies the signal by ~sqrt(64) per layer
    model = stack(10, None, init=nn.init.normal_ if bad else nn.init.orthogonal_)
    return {"model": model, "inputs": x64()}
