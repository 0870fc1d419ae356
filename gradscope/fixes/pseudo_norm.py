"""Pseudo-normalization: identity in the forward pass; in the backward pass the incoming gradient
is divided by its root mean square, after Bu et al., "Mitigating the Vanishing Gradient Problem
Using a Pseudo-Normalizing Method", Entropy 2026, 28(1), 57.

Dividing by the RMS every few layers brings the backpropagated signal back to unit scale per
element, so it cannot shrink (or grow) geometrically across a deep stack of bounded activations.

Defaults, and why (the paper's text was not available to check them):

- ``per_sample=False``: one RMS over the whole tensor. This rescales the layer's gradient as a
  whole and keeps the relative weight of the samples in the batch; per-sample division would
  re-weight samples by the inverse of their own gradient size, changing the objective.
- ``eps=1e-12``, added to the mean square: a gradient that is exactly zero stays zero instead of
  becoming NaN; anything physically meaningful in float32 is far above it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from gradscope.errors import UsageError, UsageTypeError
from gradscope.layers import ActivationKind, module_activation


class _PseudoNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, per_sample: bool, eps: float) -> torch.Tensor:
        ctx.per_sample = per_sample
        ctx.eps = eps
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        g = grad.float() if grad.dtype in (torch.float16, torch.bfloat16) else grad
        if ctx.per_sample and g.dim() > 1:
            mean_sq = g.pow(2).mean(dim=tuple(range(1, g.dim())), keepdim=True)
        else:
            mean_sq = g.pow(2).mean()
        return (g * torch.rsqrt(mean_sq + ctx.eps)).to(grad.dtype), None, None


def pseudo_norm(x: torch.Tensor, per_sample: bool = False, eps: float = 1e-12) -> torch.Tensor:
    """Return ``x`` unchanged; its gradient is divided by the gradient's RMS on the way back.

    >>> import torch
    >>> x = torch.ones(2, 2, requires_grad=True)
    >>> (pseudo_norm(x) * torch.tensor([[3.0, 4.0], [0.0, 0.0]])).sum().backward()
    >>> x.grad  # [[3, 4], [0, 0]] / sqrt((9 + 16) / 4)
    tensor([[1.2000, 1.6000],
            [0.0000, 0.0000]])
    """
    if not isinstance(x, torch.Tensor):
        raise UsageTypeError(f"Expected a torch.Tensor but got {type(x).__name__}.")
    if not x.is_floating_point():
        raise UsageError(
            f"pseudo_norm needs a floating-point tensor to carry a gradient, but got dtype "
            f"{x.dtype}; apply it to activations, not to integer ids."
        )
    return _PseudoNormFunction.apply(x, per_sample, eps)


class PseudoNorm(nn.Module):
    """Module form of :func:`pseudo_norm`, to put after an activation.

    >>> import torch.nn as nn
    >>> nn.Sequential(nn.Linear(4, 4), nn.Tanh(), PseudoNorm())[2]
    PseudoNorm(per_sample=False, eps=1e-12)
    """

    def __init__(self, per_sample: bool = False, eps: float = 1e-12) -> None:
        super().__init__()
        if not isinstance(per_sample, bool):
            raise UsageTypeError(f"Expected `per_sample` to be a bool but got {per_sample!r}.")
        if not eps > 0:
            raise UsageError(f"Expected `eps` > 0 but got {eps!r}; the default is 1e-12.")
        self.per_sample = per_sample
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pseudo_norm(x, self.per_sample, self.eps)

    def extra_repr(self) -> str:
        return f"per_sample={self.per_sample}, eps={self.eps:g}"


def insert_pseudo_norm(
    model: nn.Module, every: int = 2, per_sample: bool = False, eps: float = 1e-12
) -> list[str]:
    """Put a :class:`PseudoNorm` after every ``every``-th bounded activation module (tanh,
    sigmoid, hardtanh, softsign …), counted in registration order; returns their names.

    Each chosen activation ``act`` is replaced in its parent by ``nn.Sequential(act,
    PseudoNorm())``, so no other parameter name changes and ``state_dict`` keys stay the same.
    Activations called as functions (``torch.tanh`` in a forward) cannot be reached this way: call
    :func:`pseudo_norm` on their output instead.

    >>> import torch.nn as nn
    >>> model = nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(8, 8), nn.Tanh())])
    >>> insert_pseudo_norm(model, every=2)
    ['3', '7']
    >>> model[3]
    Sequential(
      (0): Tanh()
      (1): PseudoNorm(per_sample=False, eps=1e-12)
    )
    """
    if not isinstance(model, nn.Module):
        raise UsageTypeError(f"Expected `model` to be a torch.nn.Module but got {type(model).__name__}.")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise UsageError(f"Expected `every` to be a positive int but got {every!r}; try every=2.")
    bounded = [
        (name, module) for name, module in model.named_modules()
        if name and _is_bounded(module_activation(module))
    ]
    chosen = [(name, m) for i, (name, m) in enumerate(bounded, start=1) if i % every == 0]
    for name, module in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, nn.Sequential(module, PseudoNorm(per_sample, eps)))
    return [name for name, _ in chosen]


def _is_bounded(kind: ActivationKind | None) -> bool:
    return kind is not None and not kind.dead_units
