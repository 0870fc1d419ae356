"""The training-spike rule: what it detects, its fix, and its bad/good training-run pair.

Its code and severity are in the registry, ``gradscope.rules.RULES``."""

from __future__ import annotations

from gradscope.records import Records
from gradscope.events import lr_raised
from gradscope.rules.advice import (RECOVERY_AFTER, RECOVERY_LATER, back_by_the_end, episodes, instability_fix,
                                    recovered, spike_events)
from gradscope.rules.base import INFO, Violation
from gradscope.rules.example_models import spiking_run


def detect(records: Records) -> list[Violation]:
    """What it checks:
        Spikes of the loss or of the total gradient norm during training, caught on the step they
        happen whatever ``every`` is: the monitor's pulse (gradscope/pulse.py) keeps every step's
        loss and gradient norms on the device, and its detector (by default a running z-score
        of the loss and of the log gradient norm, 8 standard deviations) raises an alarm. Each
        episode names the step, the numbers, and the layer where the spike began: the parameter
        whose gradient norm left its own running band first (of those that left on the same step,
        the one nearest the loss), and the micro-batch under gradient accumulation. A warning;
        information when after every episode the loss went on as before (the median loss of the
        10 steps after it within 3 robust standard deviations and 1.5x of the median of the 50
        before it, or above it by no more than a tenth of the fall the run had made; or else that
        of the steps 11 to 60 after it): one hard batch's loss in a small batch, or a spike the
        guard skipped, did no lasting harm. An episode that began right after the schedule
        raised the learning rate 1.5x or more (over the 50 steps before it: a warm restart, a
        warm-up) counts as explained too, unless the loss was still out of its band at the end of
        the run (a raise that broke the model is no jolt).

    Why it matters:
        A spike is where a run starts to go wrong: the loss jumps, the optimizer's moments fill
        with one huge gradient, and the run either recovers slowly or diverges a few steps later.
        Lightning's SpikeDetection and llm-foundry's kill-loss-spike rule say that the loss
        spiked; knowing which layer moved first (the attention's query/key projection whose
        logits grow, the output layer) says what to fix.

    Example:
        A pre-LN GPT trained with AdamW at a learning rate ten times too high: the attention
        logits grow, the gradient norm of a query/key projection leaves its band, and the loss
        spikes a few steps later.

        >>> import gradscope
        >>> # with gradscope.monitor(model, every=100, optimizer=opt) as mon: ...train...
        >>> # [f.message for f in mon.findings() if f.rule == "training-spike"]

    Fix:
        Lower the learning rate (or warm it up), clip the gradient norm at a threshold taken from
        the measured gradient norms (the printed ``max_norm`` is their 99th percentile on the
        steps without an alarm), add qk-norm when the spike begins in an attention projection and
        a z-loss when it begins in the output layer; ``monitor(..., guard="skip")`` skips the
        update of a spiking step, leaving the parameters and the optimizer's state untouched.
    """
    events = [e for e in spike_events(records) if not e.get("nonfinite")
              and any("spike" in a for a in e.get("alarms", ()))]
    if not events:
        return []
    layers, listed = episodes(events)
    message = f"{len(events)} spike episode{'s' if len(events) > 1 else ''} during training: {listed}."
    went_on = [recovered(e, records) for e in events]
    scheduled = [lr_raised(e.get("lr"), e.get("lr_before")) for e in events]
    # None (not known) or False in an episode not explained by the schedule keeps the warning; a
    # raise of the learning rate explains one whose loss is not known to have stayed out of its
    # band to the end of the run (a warm restart's jolt can last tens of steps)
    for_good = [raised and back_by_the_end(e, records) is False for e, raised in zip(events, scheduled)]
    transient = all(back or (raised and not lost) for back, raised, lost in zip(went_on, scheduled, for_good))
    if any(scheduled):
        raised = [e for e, s in zip(events, scheduled) if s]
        lasting = any(for_good)
        message += ((" It began" if len(events) == 1 else f" {len(raised)} of them began")
                    + " right after the schedule raised the learning rate "
                    + f"(from {raised[0]['lr_before']:.3g} to {raised[0]['lr']:.3g} before step "
                    f"{raised[0]['step']})"
                    + (": the loss did not come back to its band after it, so the raised rate is too "
                       "high for this model, not a warm restart's or warm-up's expected jolt."
                       if lasting else ": a warm restart's or warm-up's expected jolt."))
    if transient:
        if not all(scheduled):
            others = sum(not raised for raised in scheduled)
            which = "it" if len(events) == 1 else "each of the others" if any(scheduled) else "each"
            message += (f" After {which} the loss went on as before (the median of the next {RECOVERY_AFTER} "
                        f"steps, or of those up to {RECOVERY_LATER} after, back within its band): "
                        + ("one batch's loss or gradient" if others == 1 else "single batches' losses or gradients")
                        + ", not an instability.")
        message += " So this is informational."
    return [Violation(layers or ["(model)"], message, instability_fix(events, records),
                      {"episodes": len(events), "steps": [e["step"] for e in events],
                       "layers": layers, "recovered": went_on}, INFO if transient else None)]


def pair(bad: bool) -> dict:
    """A small MLP trained for 300 steps with SGD; the bad run gets a corrupt batch (inputs 30x
    too large) at step 200, the good run does not."""
    return spiking_run(corrupt_at=200 if bad else None)
