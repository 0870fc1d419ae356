"""The skipped-updates rule: what it reports, and its bad/good training-run pair.

Its code and severity are in the registry, ``gradscope.rules.RULES``."""

from __future__ import annotations

from gradscope.records import Records
from gradscope.rules.advice import instability_fix, spike_events
from gradscope.rules.base import WARNING, Violation
from gradscope.rules.example_models import spiking_run


NOT_TRAINING = 0.5
"""A run whose guard skipped more than this share of its updates is not training."""


def detect(records: Records) -> list[Violation]:
    """What it checks:
        Optimizer updates that ``monitor(..., guard="skip")`` did not take because the step's
        pulse raised an alarm (a spike, a non-finite loss or gradient): how many, at which
        steps, and why. Nothing is skipped silently.

    Why it matters:
        A skipped update keeps one bad batch from wrecking the weights and the optimizer's
        moments, but a run that skips often is not training: many skips say that the learning
        rate or the data, not one batch, is the problem.

    Example:
        One corrupt batch at step 200 under ``guard="skip"``: its update is skipped, the
        parameters and the optimizer state stay bit-identical, and training goes on.

        >>> import gradscope
        >>> # with gradscope.monitor(model, optimizer=opt, guard="skip") as mon: ...train...
        >>> # mon.skipped_steps

        Information; a warning, which makes the verdict ``at-risk``, when the guard skipped more
        than half of the run's updates: the run is not training. (At a learning rate 100x too
        high, AdamW's first update took a digits MLP's loss from 2.29 to 3,525; the guard then
        skipped 149 of the 171 updates, the model stayed at chance, and the verdict was
        ``trains``.)

    Fix:
        Nothing to do for a rare skip; look at the batch of that step. For many skips, lower the
        learning rate or warm it up and clip the gradient norm at the printed threshold.
    """
    events = [e for e in spike_events(records) if e.get("skipped_steps")]
    if not events:
        return []
    skipped = sum(int(e["skipped_steps"]) for e in events)
    steps = [e["step"] for e in events]
    shown = ", ".join(str(s) for s in steps[:8]) + (", …" if len(steps) > 8 else "")
    message = (f"The guard skipped {skipped} optimizer update{'s' if skipped != 1 else ''} "
               f"(episodes at steps {shown}); parameters and optimizer state were left as before each.")
    layers = list(dict.fromkeys(e["layer"] for e in events if e.get("layer")))
    pulse = records.pulse
    total = int(pulse["step"].max() - pulse["step"].min() + 1) if pulse is not None and not pulse.empty else 0
    most = total > 0 and skipped > NOT_TRAINING * total
    if most:
        message += (f" That is {skipped} of the run's {total} updates: the run is not training, whatever "
                    "the skipped batches were.")
    return [Violation(layers or ["(model)"], message, instability_fix(events, records),
                      {"skipped": skipped, "steps": steps, "updates": total}, WARNING if most else None)]


def pair(bad: bool) -> dict:
    """The corrupt-batch MLP run under ``guard="skip"``: the bad run skips the corrupt step's
    update; the good run has no corrupt batch and skips nothing."""
    return spiking_run(corrupt_at=200 if bad else None, guard="skip")
