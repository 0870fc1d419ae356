"""The nonfinite-gradient rule: what it detects, its fix, and its bad/good model pair.

Its code and severity are in the registry, ``gradscope.rules.RULES``."""

from __future__ import annotations

import numpy as np
import torch.nn as nn

from gradscope.layers import is_embedding_type, parameter_owner
from gradscope.rules import advice
from gradscope.records import Records
from gradscope.rules.base import WARNING, Violation, fmt
from gradscope.rules.example_models import Sqrt, x64


def detect(records: Records) -> list[Violation]:
    """What it checks:
        NaN or Inf anywhere in a logged step: parameter gradients (``grad_nonfinite``), the
        backpropagated signal or the activations. It names the module where the non-finite value
        is born, not every layer it poisons afterwards: in the forward pass, the first module (in
        forward order) whose output is not finite; in the backward pass, walking from the output
        toward the input, the module just before the first layer whose backpropagated signal
        stops being finite (its own output gradient is still finite, the one it passes on is
        not). If the very first signal is already non-finite, the loss is. Where the guard
        (``guard="skip"``) skipped the update of every such step and the loss went on as before,
        the finding is a warning: the cause is worth finding, the run is whole. When the module is the
        first one the input reaches (not an embedding), the batch itself is the first suspect.

    Why it matters:
        One NaN reaches every parameter through the optimizer step and the run is lost; knowing
        the op that made it (a sqrt or log at 0, a division by a zero norm, an fp16 overflow)
        is what makes it fixable.

    Example:
        ``torch.sqrt`` of a ReLU output: the forward is finite (sqrt(0) = 0), but its derivative
        at 0 is infinite and the ReLU's backward turns inf x 0 into NaN.

        >>> import torch, torch.nn as nn
        >>> class Sqrt(nn.Module):
        ...     def forward(self, x):
        ...         return torch.sqrt(x)
        >>> bad = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), Sqrt(), nn.Linear(8, 1))

    Fix:
        Add an epsilon where the op is singular (``torch.sqrt(x + 1e-12)``, ``log(x + eps)``,
        ``x / (norm + eps)``), run one step under ``torch.autograd.set_detect_anomaly(True)`` to
        get the traceback of the op, clip gradients, lower the learning rate, and use
        ``torch.amp.GradScaler`` with float16.
    """
    checked = ("grad_nonfinite", "out_grad_norm", "act_rms", "grad_norm")
    rows = records.history[records.history["metric"].isin(checked)]
    values = rows["value"].to_numpy(dtype=float)
    bad = np.where(rows["metric"] == "grad_nonfinite", values > 0, ~np.isfinite(values))
    if not bad.any():
        return []
    bad_steps = sorted(int(s) for s in rows.loc[bad, "step"].unique())
    step = bad_steps[0]
    at_step = records.history[records.history["step"] == step]
    act = _by_layer(at_step, "act_rms")
    signal = _by_layer(at_step, "out_grad_norm")
    counts = _by_layer(at_step, "grad_nonfinite")
    poisoned_params = sorted((n for n, c in counts.items() if c > 0), key=_param_order(records))
    order = records.depth_order

    forward_bad = [n for n in order if n in act and not np.isfinite(act[n])]
    evidence: dict = {"step": step, "steps_with_nonfinite": bad_steps[:20],
                      "parameters_with_nonfinite_grad": len(poisoned_params),
                      "nonfinite_grad_elements": float(sum(counts.values()))}
    if forward_bad:
        born, phase = forward_bad[0], "forward"
        message = (
            f"At step {step} the forward pass produced NaN/Inf: the first module whose output is "
            f"not finite is {born or '(model)'} ({records.types.get(born, '?')})"
        )
        if born in records.leaves[:1] and not is_embedding_type(records.types.get(born, "")):
            phase = "input"
            message += (", the first module the input reaches: the batch itself may hold NaN/Inf, "
                        "or the module's own parameters are already non-finite (an update from an "
                        "earlier step that was not logged), or it overflowed")
        evidence.update(phase=phase, born_in=born, nonfinite_outputs=len(forward_bad))
    else:
        walk = [n for n in reversed(order) if n in signal]
        first_bad = next((i for i, n in enumerate(walk) if not np.isfinite(signal[n])), None)
        if not walk:  # no module statistics (a compiled model): where it was born is not known
            born, phase = (parameter_owner(poisoned_params[0]) if poisoned_params else ""), "unknown"
            message = (
                f"At step {step}, {len(poisoned_params)} parameter gradients hold NaN/Inf, first at "
                f"{advice.layer_text(poisoned_params)}; no module statistics were recorded (a "
                "compiled model, or one watched without module hooks), so where the value was born "
                "is not known"
            )
        elif first_bad is None:
            born, phase = (parameter_owner(poisoned_params[0]) if poisoned_params else ""), "parameters"
            message = (
                f"At step {step}, {len(poisoned_params)} parameter gradients hold NaN/Inf while every "
                "backpropagated signal is finite: the value is born in a parameter's own gradient "
                f"path (a weight used through a singular op), first at {advice.layer_text(poisoned_params)}"
            )
        elif first_bad == 0:
            born, phase = walk[0], "loss"
            message = (
                f"At step {step} the gradient reaching the model's output ({walk[0] or '(model)'}) is "
                f"already {_word(signal[walk[0]])}: the loss itself is not finite or not differentiable"
            )
        else:
            born, phase = walk[first_bad - 1], "backward"
            victim = walk[first_bad]
            message = (
                f"At step {step} a non-finite gradient is born in the backward pass of {born} "
                f"({records.types.get(born, '?')}): the signal at its output is finite "
                f"({fmt(signal[born])}) but the gradient it passes to {victim} is "
                f"{_word(signal[victim])}"
            )
            evidence.update(first_nonfinite_signal_at=victim, signal_at_born_output=signal[born])
        evidence.update(phase=phase, born_in=born)
    later = len(bad_steps) - 1
    message += (
        (f"; {len(poisoned_params)} parameter gradients are poisoned" if poisoned_params
         else "; no parameter gradient is non-finite yet")
        + (f", and {later} later logged steps are non-finite too." if later else ".")
    )
    violation = Violation([born], message, _fix(born, phase), evidence)
    held = _held_back(records, bad_steps)
    if held:
        # a batch's NaN whose update never happened: the run is whole, the cause still worth a look
        violation = Violation([born], message + f" The guard skipped the update of {held}, and the "
                              "loss went on as before.", violation.fix, evidence, severity=WARNING)
    return [violation]


def _held_back(records: Records, bad_steps: list[int]) -> str | None:
    """Where the guard skipped the update of every step with non-finite values here and of every
    non-finite episode of the run, each followed by a loss back in its band (``recovered``): which
    steps (words); else None."""
    pulse = records.pulse
    if pulse is None or pulse.empty or "skipped" not in pulse:
        return None
    skipped = set(pulse.loc[pulse["skipped"] > 0, "step"].astype(int))
    lost = [e for e in advice.spike_events(records) if e.get("nonfinite")]
    if not lost or not all(s in skipped for s in bad_steps):
        return None
    if not all(advice.held_back(e, records) for e in lost):
        return None
    return f"step {bad_steps[0]}" if len(bad_steps) == 1 else f"all {len(bad_steps)} such steps"


def _by_layer(frame, metric: str) -> dict[str, float]:
    part = frame[frame["metric"] == metric]
    return dict(zip(part["layer"], part["value"].astype(float)))


def _param_order(records: Records):
    order = {name: i for i, name in enumerate(records.layers["layer"])}
    return lambda name: order.get(name, len(order))


def _word(value: float) -> str:
    return "NaN" if np.isnan(value) else "Inf"


def _fix(born: str, phase: str) -> str:
    if phase == "input":
        return (
            f"Check the step's batch first: torch.isfinite(inputs).all() (a NaN in the data, a "
            f"division by a zero std in its normalisation), and whether the parameters are still "
            f"finite (a NaN update on an unlogged step: the spike events name its step); if both "
            f"are, look in the forward of {born or 'the model'} for an op that overflows or meets 0, "
            "and add an epsilon. To get "
            "the traceback of the op that makes a NaN, run one step with:\n"
            + advice.code("with torch.autograd.set_detect_anomaly(True):",
                          "    loss = loss_fn(model(inputs))",
                          "    loss.backward()")
        )
    where = {
        "unknown": "at the batch first (torch.isfinite(inputs).all()), then at the model's forward",
        "forward": f"in the forward of {born or 'the model'}",
        "backward": f"in {born or 'the model'}'s forward code (its backward made the value)",
        "loss": "in the loss computation",
        "parameters": f"where {born or 'the model'} uses its parameters",
    }[phase]
    return (
        f"Look {where} for a sqrt, log, pow, division or normalisation that meets 0 or a huge "
        "value, and add an epsilon (torch.sqrt(x + 1e-12), torch.log(x.clamp_min(1e-12)), "
        "x / (norm + 1e-6)). To get the traceback of the op that makes a NaN (anomaly mode stops at "
        "NaN, not Inf), run one step with:\n"
        + advice.code("with torch.autograd.set_detect_anomaly(True):",
                      "    loss = loss_fn(model(inputs))",
                      "    loss.backward()")
        + "\nThen clip gradients (torch.nn.utils.clip_grad_norm_), lower the learning rate, and "
        "with float16 use torch.amp.GradScaler, which skips steps with Inf/NaN gradients."
    )


def pair(bad: bool) -> dict:
    # sqrt of a ReLU output: infinite derivative at 0; fixed with an epsilon
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), Sqrt(0.0 if bad else 1e-6), nn.Linear(16, 1))
    return {"model": model, "inputs": x64(8)}
