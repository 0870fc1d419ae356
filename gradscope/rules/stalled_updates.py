"""The stalled-updates rule: what it detects, its fix, and its bad/good model pair.

Its code and severity are in the registry, ``gradscope.rules.RULES``."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from gradscope.rules import advice
from gradscope.layers import is_embedding_type, is_norm_type, parameter_kind
from gradscope.records import RECENT_STEPS, Records
from gradscope.rules.base import INFO, Violation, fmt
from gradscope.rules.example_models import x64

ORDERS_BELOW = 3.0
"""A parameter's update ratio this many orders below the model's median …"""

ABSOLUTE = 1e-3
"""… and below this absolute value is stalled."""

UNUSED = "no gradient reached it on any logged step"


def detect(records: Records) -> list[Violation]:
    """What it checks:
        Trainable parameters that do not learn: (a) weights whose update ratio
        ``||Δw|| / ||w||`` (recorded when the monitor has the optimizer) is both 1000x below the
        model's median and below 1e-3, as the median of the latest 5 steps that recorded it; (b) their
        gradient is exactly zero on every recent logged step (two or more); (c) parameters that no
        gradient reaches at all on any logged step. Biases, normalisation scales and embeddings are exempt
        from (a) and (b): a bias just before a normalisation legitimately gets a zero gradient, a
        norm's scale starts at 1 and moves slowly, an embedding updates only the rows in the
        batch. A warning; information when every parameter found is of (c): a parameter the loss
        does not reach is by design in many standard models (Hugging Face models' unused poolers,
        mask tokens and segment embeddings: XLNet, Funnel, Longformer, BigBird, LED, DINOv2, ESM
        and Reformer train to 0.92-0.98 with them), as in a multi-task model or a mixture of
        experts.

    Why it matters:
        A layer that does not move is dead weight: a parameter left out of the optimizer or
        given lr=0, a ``.detach()`` or ``torch.no_grad()`` in the forward, an unused branch, or a
        gradient that vanished before reaching it.

    Example:
        The first layer put in a parameter group with a learning rate of zero:

        >>> import torch, torch.nn as nn
        >>> model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
        >>> bad = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.0},
        ...                        {"params": model[2].parameters()}], lr=0.1)

    Fix:
        Check the optimizer's param groups and learning rates, look for ``.detach()``,
        ``torch.no_grad()`` or ``requires_grad_(False)`` on the path, and see vanishing-gradient
        if the gradient is merely tiny.
    """
    stalled: dict[str, str] = {}
    evidence: dict = {}
    steps = records.recent_steps
    # update ratios are recorded on one logged step in several (weights_every): the latest ones
    ratios = records.wide("update_ratio").dropna(how="all")
    weights = records.wide("weight_norm")
    if not ratios.empty and ratios.shape[1] > 1:
        usable = ratios.iloc[-RECENT_STEPS:]
        median_ratio = usable.median(axis=0, skipna=True)
        nonzero_weight = weights.reindex(usable.index).min(axis=0) > 0
        median_ratio = median_ratio[np.isfinite(median_ratio) & nonzero_weight.reindex(median_ratio.index, fill_value=False)]
        if len(median_ratio) > 1:
            typical = float(np.median(median_ratio))
            limit = min(ABSOLUTE, typical * 10 ** -ORDERS_BELOW)
            for name, r in median_ratio.items():
                if r < limit and not _exempt(records, name):
                    stalled[name] = f"update ratio {fmt(float(r))} (model median {fmt(typical)})"
            evidence["median_update_ratio"] = typical
    grads = records.wide("grad_norm", recent=True)
    grad_steps = [s for s in steps if s in grads.index]
    if len(grad_steps) >= 2:
        recent = grads.loc[grad_steps]
        for name in recent.columns:
            values = recent[name].to_numpy(dtype=float)
            if len(values) and (values == 0).all() and not _exempt(records, name):
                stalled.setdefault(name, f"gradient exactly 0 on {len(values)} logged steps")
    if "trainable" in records.layers.columns and not grads.empty and grads.shape[1] > 0:
        params = records.layers[records.layers["kind"] == "parameter"]
        for name, trainable in zip(params["layer"], params["trainable"]):
            if bool(trainable) and name not in grads.columns:
                stalled.setdefault(name, UNUSED)
    if not stalled:
        return []
    order = {n: i for i, n in enumerate(records.layers["layer"])}
    names = sorted(stalled, key=lambda n: order.get(n, len(order)))
    listed = "; ".join(f"{n}: {stalled[n]}" for n in names[:8])
    message = f"{len(names)} parameter{'s do' if len(names) > 1 else ' does'} not learn: {listed}{' …' if len(names) > 8 else ''}."
    evidence["parameters"] = {n: stalled[n] for n in names}
    unused = all(stalled[n] == UNUSED for n in names)
    if unused:
        message += (" No gradient reaches them: they take no part in this loss. That is by design for an "
                    "unused head or pooler, a stop-gradient branch or experts no sample was routed to, "
                    "and a bug for a layer the forward forgot to call, so this is informational.")
    fix = (
        "Check that the optimizer holds these parameters with a non-zero learning rate:\n"
        + advice.code(
            "owned = {id(p) for g in optimizer.param_groups for p in g['params']}",
            f"missing = [n for n, p in model.named_parameters() if n in {advice.names_list(names)} and id(p) not in owned]",
            "print(missing, [g['lr'] for g in optimizer.param_groups])")
        + "\nLook for .detach(), torch.no_grad() or an unused branch on their path; if their "
        "gradients are tiny rather than zero, see vanishing-gradient."
    )
    return [Violation(names, message, fix, evidence, INFO if unused else None)]


def _exempt(records: Records, name: str) -> bool:
    # a bias right before a normalisation gets an exactly zero gradient (the norm removes the
    # mean): harmless redundancy. Norm scales start at 1 and move slowly; an embedding updates
    # only the rows of the tokens in the batch. None of these is a stalled layer.
    owner_type = records.types.get(name, "")
    return parameter_kind(name) == "bias" or is_norm_type(owner_type) or is_embedding_type(owner_type)


def pair(bad: bool) -> dict:
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
    groups = [{"params": model[0].parameters(), "lr": 0.0 if bad else 0.05},
              {"params": list(model[2].parameters()) + list(model[4].parameters())}]
    return {"model": model, "inputs": x64(16), "steps": 3,
            "optimizer": torch.optim.SGD(groups, lr=0.05)}
