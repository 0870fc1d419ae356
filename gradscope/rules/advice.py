"""Fix text: what to change, with code for the model's own layers. Pure string builders that the
rules call; nothing here touches a model."""

from __future__ import annotations

import numpy as np

from gradscope.layers import activation_display, is_functional
from gradscope.events import from_json
from gradscope.rules.base import fmt
from gradscope.structure import ModelStructure, WeightLayer


def module_ref(name: str, root: str = "model") -> str:
    """Python expression for a submodule: ``"blocks.0.fc"`` → ``model.blocks[0].fc``."""
    if not name:
        return root
    if is_functional(name):
        return f"{root}  # {name} is a functional call inside a forward"
    expr = root
    for part in name.split("."):
        expr += f"[{part}]" if part.isdigit() else (f".{part}" if part.isidentifier() else f".get_submodule({part!r})")
    return expr


def code(*lines: str) -> str:
    return "\n".join("    " + line for line in lines)


SNIPPET_NAMES = 16
"""Snippets list layer names up to this many; longer lists become a loop over the model."""


def names_list(names: list[str]) -> str:
    """A Python list literal of ``names`` (all of them: snippets must run as printed)."""
    return "[" + ", ".join(repr(n) for n in names) + "]"


def replace_modules(names: list[str], new: str) -> str:
    """Code that puts ``new`` (an expression; ``old`` is the module replaced) in place of each
    named submodule."""
    if len(names) <= 4 and "old" not in new:
        return code(*(f"{module_ref(n)} = {new}" for n in names))
    return code(
        f"for name in {names_list(names)}:",
        '    parent, _, child = name.rpartition(".")',
        "    old = model.get_submodule(name)",
        f"    setattr(model.get_submodule(parent), child, {new})",
    )


def layer_text(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown} and {len(names) - limit} more" if len(names) > limit else shown


REINIT_CALL = "gradscope.fixes.reinit(model, inputs)"
"""Re-initialises every layer for the activation that follows it in a forward on ``inputs`` (an
example batch, as given to ``gradscope.diagnose``)."""


def activation_names(layers: list[WeightLayer]) -> str:
    """The activations that follow ``layers``, named as they ran: ``"GELU"``, ``"ReLU and relu"``
    (a module and a functional call)."""
    names = list(dict.fromkeys(activation_display(w.activation_type) for w in layers if w.activation_type))
    if not names:
        return "ReLU-family"
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def init_text(layers: list[WeightLayer]) -> str:
    """The init of ``layers`` as a message describes it: PyTorch's default only where the weights
    statistically are PyTorch's default (``WeightLayer.default_init``), else by its gain."""
    gains = [w.gain for w in layers]
    spread = fmt(min(gains)) if fmt(min(gains)) == fmt(max(gains)) else f"{fmt(min(gains))}-{fmt(max(gains))}"
    if all(w.default_init for w in layers):
        return f"keep PyTorch's default init (uniform on ±1/sqrt(fan_in), gain {spread})"
    if any(w.default_init for w in layers):
        return f"keep PyTorch's default init or one as small (gain {spread})"
    return f"have an init of gain {spread}"


def init_code(layers: list[str], scheme: str, nonlinearity: str) -> str:
    call = (
        f'nn.init.kaiming_normal_(layer.weight, nonlinearity="{nonlinearity}")' if scheme == "kaiming"
        else f'nn.init.xavier_normal_(layer.weight, gain=nn.init.calculate_gain("{nonlinearity}"))'
    )
    if len(layers) > SNIPPET_NAMES:
        return code(
            f"{REINIT_CALL}  # all {len(layers)} layers: He before ReLU, Xavier before tanh/sigmoid",
        )
    return code(
        f"for name in {names_list(layers)}:",
        "    layer = model.get_submodule(name)",
        f"    {call}",
        "    if layer.bias is not None:",
        "        nn.init.zeros_(layer.bias)",
        f"# or, for every layer at once (inputs: an example batch): {REINIT_CALL}",
    )


def norm_choice(structure: ModelStructure | None) -> str:
    """Normalisation to recommend: LayerNorm for features; for a convolutional model BatchNorm,
    or GroupNorm when its batches are under 8 (BatchNorm's statistics need more samples)."""
    conv = structure is not None and any(w.type.startswith("Conv") for w in structure.weight_layers)
    if not conv:
        return "nn.LayerNorm(width)"
    if structure.batch_size is not None and structure.batch_size < 8:
        return f"nn.GroupNorm(8, C) after each convolution (BatchNorm needs batches of 8+, yours is {structure.batch_size})"
    return "nn.BatchNorm2d(C) after each convolution (nn.GroupNorm(8, C) for batches under 8)"


RESIDUAL_SNIPPET = code(
    "class Residual(nn.Module):",
    "    def __init__(self, block):",
    "        super().__init__()",
    "        self.block = block",
    "    def forward(self, x):",
    "        return x + self.block(x)  # the identity path carries the gradient past the block",
)

PSEUDO_NORM_SNIPPET = code(
    "from gradscope.fixes import insert_pseudo_norm",
    "insert_pseudo_norm(model, every=2)  # divide the backward signal by its RMS every 2 activations",
)


def clip_code(max_norm: float) -> str:
    return code(
        "loss.backward()",
        f"torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm={max_norm:.2g})",
        "optimizer.step()",
    )


ATTENTION_WORDS = ("attn", "attention", "qkv", "query", "key", "q_proj", "k_proj", "c_attn", "wq", "wk")
"""Parts of a parameter's name that place it in an attention block."""
OUTPUT_MODULES = ("lm_head", "head", "classifier", "logits", "output_layer")
"""Names of the module that holds an output layer's parameters."""


def spike_events(records) -> list[dict]:
    """The monitor's spike events (gradscope/events.py) as dicts, each with its one-line ``text``
    and whether it is about a non-finite loss or gradient."""
    out = []
    if records.pulse is None:
        return out
    for event in records.events:
        event = from_json(event)
        event["nonfinite"] = any("non-finite" in a for a in event.get("alarms", []))
        out.append(event)
    return out


def episodes(events: list[dict], shown: int = 3) -> tuple[list[str], str]:
    """The layers the events began in (first seen first) and the first ``shown`` events' lines,
    with how many more there were."""
    layers = list(dict.fromkeys(e["layer"] for e in events if e.get("layer")))
    listed = "; ".join(e["text"] for e in events[:shown])
    more = f" (and {len(events) - shown} more)" if len(events) > shown else ""
    return layers, listed + more


RECOVERY_BEFORE, RECOVERY_AFTER = 50, 10
"""Steps before a spike episode that give the loss's band, and steps after it whose loss is read."""
RECOVERY_SPREAD = 3.0
"""The loss after an episode is back in its band when its median is within this many robust
standard deviations (1.4826 median absolute deviations) above the median before it, …"""
RECOVERY_RATIO = 1.5
"""… and, for a positive loss, at most this many times that median: early in a run the loss's
noise is wide, and a band of 3 deviations let a run that a spike had set back (its loss 0.82 →
1.53 in the next steps, and at chance later) pass for recovered. Or else the loss after stands
above the median before by no more than ``RECOVERY_FALL`` of the fall the run had made to it
(from the median of its first 10 steps): near convergence a small batch's losses are
heavy-tailed, and 0.02 → 0.04 on a run that fell from 2.3 is no setback."""
RECOVERY_FALL = 0.1
RECOVERY_EARLY = 3
"""An episode in the run's first steps is judged against as many steps as came before it, at least
this many (10 later on): a model trained on with a fresh optimizer (a converged checkpoint under a
new AdamW) jolts at step 4, when its loss has 4 steps behind it."""
RECOVERY_LATER = 60
"""Where the ``RECOVERY_AFTER`` steps right after an episode stand above the band, the steps from
there to this many after it are read too: a spike's large update shakes an adaptive optimizer's
moments, and a converged run's loss (median 0.0012) sat at twice that for the ten steps after a
spike and below it in the ten after those. Back in the band there, the episode did no lasting
harm; a run the spike set back stays above it."""


def recovered(event: dict, records) -> bool | None:
    """Whether the loss went on after a spike episode as before it: the median loss of the
    ``RECOVERY_AFTER`` steps after the episode (those without an alarm) is within
    ``RECOVERY_SPREAD`` robust standard deviations above the median of the ``RECOVERY_BEFORE``
    steps before it, and at most ``RECOVERY_RATIO`` times it, or above it by no more than
    ``RECOVERY_FALL`` of the run's fall (one hard batch's loss, whose update did no lasting
    harm); or else the median of the steps from there to ``RECOVERY_LATER`` after it is. None
    where the pulse does not hold enough steps on either side (the run ended, or they left its
    window)."""
    band = _band(event, records)
    if not band:  # None: not known; False: an episode that lasted to the end
        return band
    limit, steps, loss, quiet, last = band
    after = loss[quiet & (steps > last) & (steps <= last + RECOVERY_AFTER)]
    if len(after) < RECOVERY_AFTER // 2:
        return None
    if float(np.median(after)) <= limit:
        return True
    later = loss[quiet & (steps > last + RECOVERY_AFTER) & (steps <= last + RECOVERY_LATER)]
    return len(later) >= (RECOVERY_LATER - RECOVERY_AFTER) // 2 and float(np.median(later)) <= limit


def held_back(event: dict, records) -> bool:
    """The guard skipped every update of an episode, so the weights never took it, and the loss
    went on as before it (:func:`recovered`), or the run ended too soon after to tell (an episode
    that lasted to the run's end is no recovery)."""
    skipped_all = event.get("skipped_steps", 0) >= max(1, event.get("alarm_steps") or 1)
    return bool(skipped_all and recovered(event, records) is not False)


def back_by_the_end(event: dict, records) -> bool | None:
    """Whether the loss was back in the band of :func:`recovered` by the end of the run: the
    median of the run's last ``RECOVERY_AFTER`` steps without an alarm after the episode. A
    warm restart's jolt can keep the loss out of its band for tens of steps; a raise of the
    learning rate that broke the model keeps it out for good. None where that is not known."""
    band = _band(event, records)
    if not band:
        return band
    limit, steps, loss, quiet, last = band
    tail = loss[quiet & (steps > last)][-RECOVERY_AFTER:]
    if len(tail) < RECOVERY_AFTER // 2:
        return None
    return float(np.median(tail)) <= limit


def _band(event: dict, records):
    """(the upper limit of the loss's band before the episode, then the pulse's steps, losses,
    steps without an alarm with a finite loss, and the episode's last step); None where the
    pulse does not hold enough steps before it; False for an episode of ``RECOVERY_AFTER`` steps
    or more that lasted to the run's last step, after which the loss never went on as before (a
    model the guard held still for the rest of the run, a raised learning rate that broke it)."""
    pulse = records.pulse
    if pulse is None or pulse.empty or "step" not in pulse or event.get("step") is None:
        return None
    first, last = int(event["step"]), int(event.get("last_step") or event["step"])
    steps, loss = pulse["step"].to_numpy(), pulse["loss"].to_numpy(dtype=float)
    if last >= int(steps.max()) - 1 and last - first >= RECOVERY_AFTER:
        return False
    quiet = (pulse["alarm"].to_numpy(dtype=float) == 0) & np.isfinite(loss)
    before = loss[quiet & (steps >= first - RECOVERY_BEFORE) & (steps < first)]
    needed = max(RECOVERY_EARLY, min(10, first - int(steps.min())))  # fewer only early in the run
    if len(before) < needed:
        return None
    centre = float(np.median(before))
    spread = 1.4826 * float(np.median(np.abs(before - centre)))
    limit = centre + RECOVERY_SPREAD * spread
    if centre > 0:
        limit = min(limit, RECOVERY_RATIO * centre)
    start = loss[quiet & (steps < first)][:10]
    fall = float(np.median(start)) - centre if len(start) else 0.0
    limit = max(limit, centre + RECOVERY_FALL * max(fall, 0.0))
    return limit, steps, loss, quiet, last


def clip_threshold(records) -> float | None:
    """The 99th percentile of the total gradient norm over the pulse's steps without an alarm:
    a clipping threshold that leaves ordinary steps alone and cuts spikes."""
    pulse = records.pulse
    if pulse is None or pulse.empty:
        return None
    quiet = pulse[(pulse["alarm"] == 0)]["grad_norm"].to_numpy(dtype=float)
    quiet = quiet[np.isfinite(quiet)]
    if len(quiet) < 10:
        return None
    return float(np.percentile(quiet, 99))


def _owner(parameter: str) -> str:
    """The name of the module that holds ``parameter``: ``"lm_head"`` for ``"lm_head.weight"``."""
    parts = parameter.lower().split(".")
    return parts[-2] if len(parts) > 1 else ""


HELD_LONG = 20
"""Updates of one episode the guard skipped in a row from which the fix says that the data, not
the updates, raised the alarm (the model does not change while its updates are held back)."""


def _held_in_a_row(event: dict) -> int:
    """The updates of ``event``'s episode the guard skipped, where it skipped every step of it (an
    episode's alarms may be steps apart, and the updates between them are made); else 0."""
    skipped = int(event.get("skipped_steps") or 0)
    last = event.get("last_step")
    span = 1 if last is None else int(last) - int(event.get("step", last)) + 1
    return skipped if skipped == span else 0


def instability_fix(events: list[dict], records) -> str:
    """What to change after spikes began in the events' layers: the learning rate, clipping at a
    measured threshold, qk-norm or a z-loss by where they began, and the guard."""
    lines = []
    lr = next((e.get("lr") for e in events if e.get("lr")), None)
    if lr:
        lines.append(f"Lower the learning rate (now {lr:.3g}; try {lr / 3:.2g}) or warm it up over the "
                     "first few hundred steps.")
    else:
        lines.append("Lower the learning rate, or warm it up over the first few hundred steps.")
    threshold = clip_threshold(records)
    if threshold is not None:
        lines.append(f"Clip the gradient norm at {threshold:.3g}, the 99th percentile of the measured "
                     "norms on steps without an alarm:\n" + clip_code(threshold))
    layers = [str(e.get("layer") or "") for e in events]
    if any(any(w in name.lower() for w in ATTENTION_WORDS) for name in layers):
        lines.append("The spike began in an attention projection: normalise queries and keys "
                     "(qk-norm, a LayerNorm or RMSNorm on q and k per head) so the attention logits "
                     "cannot grow without bound.")
    if any(_owner(name) in OUTPUT_MODULES for name in layers):
        lines.append("The spike began in the output layer: add a z-loss (1e-4 * logsumexp(logits)**2) "
                     "to keep the output logits from drifting.")
    held = max((_held_in_a_row(e) for e in events), default=0)
    if held >= HELD_LONG:
        lines.append(f"The guard held back {held} updates of one episode in a row, so the model did not change "
                     "while the alarm went on: what raised it is the data, not the updates. A burst of bad "
                     "batches is what the guard is for; if the data changed by design there (a curriculum, a "
                     "new mixture), the guard held back learning it until the detector took the new level in "
                     "(a window of steps): at such a switch stop the monitor and start a new one, whose "
                     "detector warms up on the new data, or train without guard=.")
    if any(e.get("guard") == "could not act" for e in events):
        lines.append('The guard (guard="skip") was on but could not hold back these updates (a warning said why: '
                     "a closure evaluated inside the optimizer's step, or no optimizer given to the monitor).")
    elif not any(e.get("guard") or e.get("skipped") or e.get("skipped_steps") for e in events):
        lines.append('Train with gradscope.monitor(..., guard="skip") to skip the update of a spiking step.')
    return " ".join(lines[:1]) + ("\n" + "\n".join(lines[1:]) if len(lines) > 1 else "")


def rising_fix(events: list[dict], records) -> str:
    """What to change when the loss climbed back: the learning rate, a restart from near the
    lowest point, clipping at a measured threshold; and how to silence a rise made by design."""
    lr = next((e.get("lr") for e in events if e.get("lr")), None)
    first = events[0]
    lines = [f"Lower the learning rate (now {lr:.3g}; try {lr / 3:.2g}) or warm it up over more steps, "
             if lr else "Lower the learning rate or warm it up over more steps, "]
    lines[0] += (f"and restart from a checkpoint taken before step {first['step']}, near where the smoothed "
                 "loss was lowest" + (f" ({first['lowest_loss']:.4g})." if first.get("lowest_loss") is not None
                                      else "."))
    threshold = clip_threshold(records)
    if threshold is not None:
        lines.append(f"Clip the gradient norm at {threshold:.3g}, the 99th percentile of the measured "
                     "norms on steps without an alarm:\n" + clip_code(threshold))
    lines.append("If the loss rises by design (a loss weight ramped up, a new data mixture) or is a surrogate "
                 "whose value is not the objective (a policy-gradient loss, whose value heads for 0 as the "
                 "policy settles), turn this alarm off with monitor(..., detect=gradscope.Detector(trend=0)), "
                 "or give the detector the quantity to watch each step: mon.observe_loss(-mean_reward).")
    return " ".join(lines[:1]) + ("\n" + "\n".join(lines[1:]) if len(lines) > 1 else "")
