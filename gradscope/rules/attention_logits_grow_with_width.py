"""The attention-logits-grow-with-width rule: what it detects, its fix, and its bad/good model pair.

Its code and severity are in the registry, ``gradscope.rules.RULES``."""

from __future__ import annotations

from gradscope.rules.base import Violation
from gradscope.rules.example_widths import WIDTHS, Attention, MuP, adam, tokens
from gradscope.sweep import ACT_RMS, ATTENTION, GROWS, WidthSweep, slope_list


def detect(sweep: WidthSweep) -> list[Violation]:
    """What it checks:
        In a width sweep (``gradscope.coordcheck``), the size (RMS) of the attention logits
        (``q kᵀ · scale`` of every ``F.scaled_dot_product_attention`` call, causal positions
        only when causal) after the last update against width: a log-log slope of 0.25 or more.

    Why it matters:
        Training aligns queries with keys, so ``q · k`` grows like the head dimension ``d``, not
        like ``sqrt(d)``: with the usual ``1 / sqrt(d)`` scale the logits grow as ``sqrt(d)``,
        the softmax saturates in wide models and the learning rate tuned on a narrow one does
        not transfer. µP scales the logits by ``1 / d`` (Yang et al. 2022, Tensor Programs V).

    Example:
        A GPT whose heads grow with width (fixed number of heads) calling
        ``F.scaled_dot_product_attention(q, k, v, is_causal=True)``: slope about +0.5 after 5
        Adam steps.

    Fix:
        Scale the attention logits by ``1 / d_head`` instead of ``1 / sqrt(d_head)``:
        ``F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1 / q.size(-1))`` (or
        ``8 / d_head`` to match ``1 / sqrt(d_head)`` at ``d_head = 64``); µP also initialises the
        query projection to zero.
    """
    growing = {layer: slope for layer, slope in sweep.off(sweep.of_role(ATTENTION), ACT_RMS).items()
               if slope.trend == GROWS}
    if not growing:
        return []
    message = (f"Attention logits grow with width: after {sweep.steps} updates their RMS has log-log slope "
               f"{slope_list(growing)} against width (under µP, flat: |slope| < 0.25).")
    fix = ("Scale the attention logits by 1/d_head instead of 1/sqrt(d_head): F.scaled_dot_product_attention(q, k, "
           "v, is_causal=True, scale=1 / q.size(-1)) (or 8 / d_head to keep the logits of d_head = 64); µP also "
           "initialises the query projection to zero.")
    return [Violation(list(growing), message, fix, {"slopes": {layer: [s.mean, s.spread] for layer, s in growing.items()}})]


def pair(bad: bool) -> dict:
    # the bad model is a standard transformer: 1/sqrt(d) and one Adam learning rate. With µP's hidden
    # learning rate, queries align with keys more slowly than a few steps show (docs/coordcheck.md)
    mup = MuP(attention=not bad, hidden_lr=not bad)
    return {"build_model": lambda width: Attention(width, mup), "widths": WIDTHS, "inputs": tokens,
            "optimizer": adam(mup), "steps": 5, "seeds": 3}
