"""An independent float64 reference for every statistic, written with plain autograd.

The reference copies the model to float64 (in-place activations made out-of-place, checkpointing
switched off), captures each module's outputs with forward hooks, and gets the gradient with
respect to every output and parameter from ``torch.autograd.grad``. Nothing of gradscope is used.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict

import torch
import torch.nn as nn

DEAD = (nn.ReLU, nn.ReLU6)
BOUNDS = {nn.Tanh: (-1.0, 1.0), nn.Sigmoid: (0.0, 1.0), nn.Softsign: (-1.0, 1.0),
          nn.Hardsigmoid: (0.0, 1.0)}


def tensors_of(out):
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in tensors_of(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in tensors_of(o)]
    return []


def to_double(x):
    if isinstance(x, torch.Tensor):
        return x.double() if x.is_floating_point() else x
    if isinstance(x, (tuple, list)):
        return type(x)(to_double(v) for v in x)
    if isinstance(x, dict):
        return {k: to_double(v) for k, v in x.items()}
    return x


def alive(y: torch.Tensor, unit_dim: int) -> torch.Tensor:
    dims = [d for d in range(y.dim()) if d != unit_dim]
    return (y > 0).any(dim=dims) if dims else y > 0


def reference(
    model: nn.Module,
    micro_batches: list,
    loss_fn,
    lr: float | None = None,
    functional: dict | None = None,
    unit_dims: dict | None = None,
) -> dict[tuple[str, str], float]:
    """Expected {(layer, metric): value} for one step of ``model`` over ``micro_batches``.

    ``functional`` maps a gradscope functional-activation name to (module name, kind, transform):
    its output is ``transform(output of that module)``, for the reference to judge.
    ``lr`` (plain SGD) adds the update ratio. ``unit_dims`` overrides the unit dimension per layer.
    """
    functional = functional or {}
    unit_dims = unit_dims or {}
    ref = copy.deepcopy(model).double()
    for m in ref.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
        if hasattr(m, "use_checkpoint"):
            m.use_checkpoint = False
    names = {m: n for n, m in ref.named_modules()}
    params = dict(ref.named_parameters())
    grads = {n: torch.zeros_like(p) for n, p in params.items()}
    out_sq, act_sq, act_numel = defaultdict(float), defaultdict(float), defaultdict(int)
    used_out = set()
    alive_sites: dict[str, dict[int, torch.Tensor]] = defaultdict(dict)
    flat, flat_numel = defaultdict(int), defaultdict(int)

    for batch in micro_batches:
        captured: list[tuple[str, torch.Tensor]] = []
        calls: dict[str, list] = defaultdict(list)

        def hook(module, args, out):
            ts = tensors_of(out)
            calls[names[module]].append(ts)
            captured.extend((names[module], t) for t in ts)

        handles = [m.register_forward_hook(hook) for m in ref.modules()]
        try:
            x, target = batch
            x = to_double(x)
            out = ref(*x) if isinstance(x, tuple) else ref(**x) if isinstance(x, dict) else ref(x)
            loss = loss_fn(out, target.double() if target is not None and target.is_floating_point() else target)
        finally:
            for h in handles:
                h.remove()
        wrt = [t for _, t in captured if t.requires_grad]
        owners = [n for n, t in captured if t.requires_grad]
        names_p = [n for n, p in params.items() if p.requires_grad]
        got = torch.autograd.grad(loss, wrt + [params[n] for n in names_p], allow_unused=True)
        for owner, g in zip(owners, got[: len(wrt)]):
            if g is not None:
                out_sq[owner] += float(g.pow(2).sum())
                used_out.add(owner)
        for n, g in zip(names_p, got[len(wrt):]):
            if g is not None:
                grads[n] += g
        for name, ts_per_call in calls.items():
            for ts in ts_per_call:
                for t in ts:
                    act_sq[name] += float(t.detach().pow(2).sum())
                    act_numel[name] += t.numel()
        for m, name in names.items():
            for site, ts in enumerate(calls.get(name, [])):
                if not ts:
                    continue
                _judge(m, name, site, ts[0], unit_dims, alive_sites, flat, flat_numel)
        for fname, (source, kind, transform) in functional.items():
            for site, ts in enumerate(calls.get(source, [])):
                y = transform(ts[0].detach())
                _judge_kind(kind, fname, site, y, unit_dims, alive_sites, flat, flat_numel)

    expected: dict[tuple[str, str], float] = {}
    for n, p in params.items():
        if not p.requires_grad:
            continue
        g = grads[n]
        expected[(n, "grad_norm")] = float(g.norm())
        expected[(n, "weight_norm")] = float(p.detach().norm())
        expected[(n, "grad_nonfinite")] = float((~torch.isfinite(g)).sum())
        if lr is not None:
            step, w = lr * float(g.norm()), float(p.detach().norm())
            expected[(n, "update_ratio")] = step / w if w else (math.inf if step else 0.0)
    for name in act_numel:
        expected[(name, "act_rms")] = math.sqrt(act_sq[name] / act_numel[name])
    for name in used_out:
        expected[(name, "out_grad_norm")] = math.sqrt(out_sq[name])
    for name, sites in alive_sites.items():
        units = sum(a.numel() for a in sites.values())
        dead = sum(int((~a).sum()) for a in sites.values())
        expected[(name, "dead_fraction")] = dead / units
    for name in flat_numel:
        expected[(name, "saturation")] = flat[name] / flat_numel[name]
    return expected


def _judge(m, name, site, y, unit_dims, alive_sites, flat, flat_numel):
    if isinstance(m, DEAD):
        _judge_kind("dead", name, site, y, unit_dims, alive_sites, flat, flat_numel)
    elif isinstance(m, nn.Hardtanh):
        _judge_kind((m.min_val, m.max_val), name, site, y, unit_dims, alive_sites, flat, flat_numel)
    elif type(m) in BOUNDS:
        _judge_kind(BOUNDS[type(m)], name, site, y, unit_dims, alive_sites, flat, flat_numel)


def _judge_kind(kind, name, site, y, unit_dims, alive_sites, flat, flat_numel):
    y = y.detach()
    if kind == "dead":
        dim = unit_dims.get(name, 1 if y.dim() >= 4 else y.dim() - 1)
        a = alive(y, dim)
        alive_sites[name][site] = alive_sites[name][site] | a if site in alive_sites[name] else a
    else:
        lo, hi = kind
        margin = 0.01 * max(abs(lo), abs(hi))
        flat[name] += int(((y <= lo + margin) | (y >= hi - margin)).sum())
        flat_numel[name] += y.numel()
