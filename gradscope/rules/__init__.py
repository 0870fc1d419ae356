"""The rules engine: records in, findings out.

``RULES`` is the one registry: a row per rule with its code, slug, default severity and summary,
the ``detect`` and the bad/good model ``pair`` of the module named after the slug, the
evidence it needs to judge (``gradscope.rules.coverage``) and the front whose records it reads
(``diagnose``, or ``coordcheck`` for the width rules GS3xx), in the order findings are reported. The printed ``GS204 deep-bounded-activations`` lives in
``gradscope/rules/deep_bounded_activations.py``; its ``detect`` docstring is its documentation
(``gradscope explain``, docs/rules/).

>>> import gradscope
>>> rule = find_rule("dead-units")
>>> [f.rule for f in gradscope.diagnose(**rule.pair(bad=True)).findings]  # report_of(pair) for run rules
['dead-units']
"""

from __future__ import annotations

from gradscope.errors import UsageError
from gradscope.rules import (
    batchnorm_small_batch,
    collapsed_representations,
    dead_network,
    dead_units,
    deep_bounded_activations,
    attention_logits_grow_with_width,
    deep_narrow_relu,
    exploding_gradient,
    hidden_updates_scale_with_width,
    init_mismatch,
    init_scales_with_width,
    input_updates_scale_with_width,
    layernorm_stack,
    no_skip_connections,
    nonfinite_gradient,
    post_ln_transformer,
    readout_grows_with_width,
    rising_loss,
    saturated_activations,
    skipped_updates,
    stalled_updates,
    training_divergence,
    training_spike,
    unstable_learning_rate,
    updates_off_band,
    vanishing_gradient,
)
from gradscope.records import Records
from gradscope.rules.base import (COORDCHECK, DIAGNOSE, ERROR, INFO, SEVERITIES, WARNING, Finding, Need, Rule,
                                  Violation)
from gradscope.rules.coverage import DEPTH_PROFILE, RECIPE_PROBE, STRUCTURE, TRAINING_RUN, Coverage


def _rule(code: str, slug: str, severity: str, summary: str, module, decides: bool = False,
          needs: tuple[Need, ...] = (), front: str = DIAGNOSE) -> Rule:
    return Rule(code, slug, severity, summary, module.detect, module.pair, decides, needs, front)


RULES: tuple[Rule, ...] = (
    _rule("GS101", "vanishing-gradient", ERROR,
          "The backpropagated signal shrinks by 3+ orders of magnitude toward the input.", vanishing_gradient, decides=True,
          needs=(DEPTH_PROFILE,)),
    _rule("GS102", "exploding-gradient", ERROR,
          "The signal grows by 3+ orders toward the input, or the gradient norm jumps 100x.", exploding_gradient, decides=True,
          needs=(DEPTH_PROFILE,)),
    _rule("GS103", "nonfinite-gradient", ERROR,
          "NaN/Inf gradients or activations, named by the module where they are born.", nonfinite_gradient, decides=True),
    _rule("GS104", "dead-units", WARNING,
          "More than half of a ReLU layer's units never fire (90%+: error).", dead_units),
    _rule("GS105", "saturated-activations", WARNING,
          "Over 30% of a tanh/sigmoid layer's outputs sit at the bounds.", saturated_activations),
    _rule("GS106", "stalled-updates", WARNING,
          "Parameters whose updates are 1000x below the rest, or that get no gradient.", stalled_updates),
    _rule("GS107", "unstable-learning-rate", ERROR,
          "The learning rate is above the stability limit the loss's curvature sets, or the probe diverged.",
          unstable_learning_rate, decides=True, needs=(RECIPE_PROBE,)),
    _rule("GS108", "updates-off-band", ERROR,
          "The recipe's updates are far from ~1e-3 of the weights per step (below 1e-4: stalled).",
          updates_off_band, decides=True, needs=(RECIPE_PROBE,)),
    _rule("GS109", "collapsed-representations", ERROR,
          "The samples' representations become nearly identical with depth (correlation 0.999+).",
          collapsed_representations, decides=True, needs=(RECIPE_PROBE, STRUCTURE)),
    _rule("GS110", "training-divergence", ERROR,
          "The loss or gradient norm became NaN/Inf during training; the alarms before it and where they began.",
          training_divergence, decides=True, needs=(TRAINING_RUN,)),
    _rule("GS111", "training-spike", WARNING,
          "Loss or gradient-norm spikes during training, with the layer where each began.", training_spike,
          needs=(TRAINING_RUN,)),
    _rule("GS112", "skipped-updates", INFO,
          "Optimizer updates the guard (guard=\"skip\") skipped, and why (most of a run's: warning).", skipped_updates,
          decides=True, needs=(TRAINING_RUN,)),
    _rule("GS113", "rising-loss", WARNING,
          "The smoothed training loss climbs back 30%+ of its fall: the run is diverging slowly.", rising_loss,
          decides=True, needs=(TRAINING_RUN,)),
    _rule("GS114", "dead-network", ERROR,
          "A ReLU layer with every unit dead and nothing before it getting a gradient: the output is constant.",
          dead_network, decides=True),
    _rule("GS201", "no-skip-connections", INFO,
          "A stack of 10+ weight layers with no skip connection around them.", no_skip_connections,
          needs=(STRUCTURE,)),
    _rule("GS202", "init-mismatch", INFO,
          "Init scale that does not match the activation (default init under deep ReLU, N(0, 1)).", init_mismatch,
          needs=(STRUCTURE,)),
    _rule("GS203", "batchnorm-small-batch", WARNING,
          "BatchNorm with fewer than 8 samples per batch.", batchnorm_small_batch, needs=(STRUCTURE,)),
    _rule("GS204", "deep-bounded-activations", INFO,
          "8+ tanh/sigmoid hidden layers in a deep stack without skips.", deep_bounded_activations,
          needs=(STRUCTURE,)),
    _rule("GS205", "post-ln-transformer", INFO,
          "LayerNorm after the residual sum (post-LN): needs warm-up; pre-LN is more stable.", post_ln_transformer,
          needs=(STRUCTURE,)),
    _rule("GS206", "deep-narrow-relu", WARNING,
          "A deep ReLU stack whose sum of 1/width reaches 1 (Hanin & Rolnick 2018).", deep_narrow_relu,
          decides=True, needs=(STRUCTURE,)),
    _rule("GS207", "layernorm-stack", WARNING,
          "16+ layers each followed by LayerNorm/RMSNorm, no skips or BatchNorm (30+ under Adam).",
          layernorm_stack, decides=True, needs=(STRUCTURE,)),
    _rule("GS301", "readout-grows-with-width", ERROR,
          "The model's output (logits) grows with width after a few updates: readout multiplier or init.",
          readout_grows_with_width, front=COORDCHECK),
    _rule("GS302", "attention-logits-grow-with-width", ERROR,
          "Attention logits grow with width: scale them by 1/d_head, not 1/sqrt(d_head).",
          attention_logits_grow_with_width, front=COORDCHECK),
    _rule("GS303", "hidden-updates-scale-with-width", WARNING,
          "Hidden layers' change per update grows or shrinks with width: hidden learning rate.",
          hidden_updates_scale_with_width, front=COORDCHECK),
    _rule("GS304", "input-updates-scale-with-width", WARNING,
          "Input layers' (embeddings') change per update grows or shrinks with width: their learning rate.",
          input_updates_scale_with_width, front=COORDCHECK),
    _rule("GS305", "init-scales-with-width", WARNING,
          "Activations at initialisation grow or shrink with width: init variance not 1/fan_in.",
          init_scales_with_width, front=COORDCHECK),
)
DIAGNOSE_RULES = tuple(rule for rule in RULES if rule.front == DIAGNOSE)
"""The rules ``gradscope.diagnose``, a monitor's and a run directory's reports apply."""
COORDCHECK_RULES = tuple(rule for rule in RULES if rule.front == COORDCHECK)
"""The rules ``gradscope.coordcheck`` applies to a width sweep."""


def run_rules(records: Records, rules: tuple[Rule, ...] = DIAGNOSE_RULES) -> list[Finding]:
    """Every rule's findings, most severe first, then in registry order."""
    findings = [f for rule in rules for f in rule.check(records)]
    return sorted(findings, key=lambda f: -SEVERITIES.index(f.severity))


def rule_coverage(records: Records, rules: tuple[Rule, ...] = DIAGNOSE_RULES) -> Coverage:
    """Which rules judged ``records`` and which could not for lack of what they need."""
    checked, not_checked = [], {}
    for rule in rules:
        if rule.needs_training_run and records.pulse is None:
            continue  # about training runs: not a question gradscope.diagnose's probe answers
        reason = rule.missing(records)
        if reason is None:
            checked.append(rule.slug)
        else:
            not_checked[rule.slug] = reason
    return Coverage(checked, not_checked)


def find_rule(key: str) -> Rule:
    """A rule by slug (``vanishing-gradient``) or code (``GS101``), case-insensitive."""
    for rule in RULES:
        if key.lower() in (rule.slug, rule.code.lower()):
            return rule
    known = ", ".join(f"{r.code} {r.slug}" for r in RULES)
    raise UsageError(f"No rule is called {key!r}; the rules are: {known}.")


__all__ = [
    "COORDCHECK", "COORDCHECK_RULES", "DIAGNOSE", "DIAGNOSE_RULES", "ERROR", "INFO", "RULES", "SEVERITIES",
    "WARNING", "Coverage", "Finding", "Need", "Records", "Rule", "Violation", "find_rule", "rule_coverage", "run_rules",
]
