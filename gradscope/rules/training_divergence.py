"""The training-divergence rule: what it detects, its fix, and its bad/good training-run pair.

Its code and severity are in the registry, ``gradscope.rules.RULES``."""

from __future__ import annotations

from gradscope.records import Records
from gradscope.rules.advice import held_back, instability_fix, spike_events
from gradscope.rules.base import Violation
from gradscope.rules.example_models import spiking_run


def detect(records: Records) -> list[Violation]:
    """What it checks:
        A loss or a total gradient norm that became NaN or Inf during training, on any step (the
        monitor's pulse reads every step, not only the logged ones), with the spike episodes that
        came before it: how many steps of warning there were, and the layer where the first one
        began. An episode whose every update the guard (``guard="skip"``) skipped, after which
        the loss went on as before (or the run ended too soon after to tell), is no divergence:
        the weights never took it (skipped-updates reports the skips). One of 10 steps or more
        that lasted to the run's end is.

    Why it matters:
        A non-finite loss or gradient reaches every weight through the next update: the run is
        lost from that step on, and every step trained after it is wasted compute. The steps
        between the first spike and the loss becoming non-finite are the window in which a
        guard, a checkpoint reload or a lower learning rate could have saved it.

    Example:
        An MLP fed one batch of inputs 30x too large under SGD with momentum: the gradient
        explodes, the weights follow, and two steps later the loss is Inf.

        >>> import gradscope
        >>> # with gradscope.monitor(model, optimizer=opt) as mon: ...train...
        >>> # [f.message for f in mon.findings() if f.rule == "training-divergence"]

    Fix:
        Restart from the last checkpoint before the first spike with a lower learning rate or a
        warm-up, clip the gradient norm (the printed ``max_norm`` comes from the measured norms),
        add qk-norm or a z-loss where attention or output logits grow, and train with
        ``monitor(..., guard="skip")``, which skips an update whose gradient is non-finite or
        spiking, so that one bad batch cannot end the run. A run that is non-finite from its
        first step, before any update, is not the learning rate's doing: check the batch, the
        parameters and the forward's ops instead.
    """
    events = spike_events(records)
    lost = [e for e in events if e.get("nonfinite") and not held_back(e, records)]
    if not lost:
        return []
    first_lost = lost[0]
    before = [e for e in events if e["step"] < first_lost["step"]]
    warning = ""
    if before:
        lead = first_lost["step"] - before[0]["step"]
        warning = (f" The first alarm came {lead} step{'s' if lead != 1 else ''} earlier: "
                   f"{before[0]['text']}.")
    layer = (before[0] if before else first_lost).get("layer")
    pulse = records.pulse
    first_step = int(pulse["step"].min()) if pulse is not None and not pulse.empty else 0
    if first_lost["step"] <= first_step:
        # non-finite before any update was made: the batch or the model, not the learning rate
        message = (f"The run was non-finite from its first step, before any update: {first_lost['text']}. "
                   "The learning rate played no part yet.")
        fix = ("Check the first batch (torch.isfinite(inputs).all()) and the model's parameters "
               "(torch.isfinite(p).all() for each), then the forward for an op that overflows or "
               "meets 0 (log, division, sqrt): run one step under "
               "torch.autograd.set_detect_anomaly(True) to get the op's traceback.")
        return [Violation([layer] if layer else ["(model)"], message, fix,
                          {"step": first_lost["step"], "first_alarm": first_lost["step"],
                           "skipped": first_lost.get("skipped_steps", 0)})]
    message = f"The run diverged: {first_lost['text']}.{warning}"
    return [Violation([layer] if layer else ["(model)"], message, instability_fix(before or lost, records),
                      {"step": first_lost["step"], "first_alarm": (before or lost)[0]["step"],
                       "skipped": first_lost.get("skipped_steps", 0)})]


def pair(bad: bool) -> dict:
    """A small MLP trained with SGD and momentum; the bad run gets a corrupt batch at step 200
    and diverges, the good run does not."""
    return spiking_run(corrupt_at=200 if bad else None, momentum=0.9)
