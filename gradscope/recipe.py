"""The training recipe a verdict assumes: the optimizer's class and hyperparameters (of its first
parameter group), gradient clipping, and whether the user gave it or gradscope assumed it; with the
stability threshold it implies for the curvature of the loss.

>>> import torch
>>> w = torch.nn.Parameter(torch.zeros(3))
>>> recipe = Recipe.of(torch.optim.SGD([w], lr=0.05, momentum=0.9))
>>> recipe.text(), round(recipe.stability_threshold(), 1)
('SGD lr 0.05 momentum 0.9', 76.0)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

ADAPTIVE = ("Adam", "AdamW", "NAdam", "RAdam", "Adamax", "RMSprop", "Adagrad", "Adadelta")
"""Optimizers that divide the gradient by a running scale per parameter: their curvature is read
preconditioned by that scale."""


@dataclass(frozen=True)
class Recipe:
    optimizer: str
    """The optimizer's class name: ``SGD``, ``Adam``, ``AdamW`` …"""
    lr: float | None
    momentum: float = 0.0
    """SGD's momentum, or the first beta of Adam-like optimizers (their momentum)."""
    beta2: float | None = None
    weight_decay: float = 0.0
    nesterov: bool = False
    clip_grad_norm: float | None = None
    assumed: bool = False
    """True when the user gave no optimizer and gradscope assumed this default."""
    lr_smallest: float | None = None
    """With parameter groups at different learning rates, the smallest (``lr`` is the largest,
    and the other settings are that group's)."""
    scheduled_from: float | None = None
    """Where an LR scheduler held the learning rate below its peak (a warm-up), the rate the
    optimizer held; ``lr`` is then the schedule's peak, which the probe ran at."""

    @classmethod
    def of(cls, optimizer: torch.optim.Optimizer, clip_grad_norm: float | None = None,
           assumed: bool = False) -> "Recipe":
        groups = optimizer.param_groups or [{}]
        rates = [cls.number(g.get("lr")) for g in groups]
        known = [lr for lr in rates if lr is not None]
        group = groups[rates.index(max(known))] if known else groups[0]
        betas = group.get("betas")
        momentum = float(betas[0]) if betas is not None else float(group.get("momentum", 0.0) or 0.0)
        return cls(
            optimizer=type(optimizer).__name__,
            lr=cls.number(group.get("lr")),
            lr_smallest=min(known) if known and min(known) < max(known) else None,
            momentum=momentum,
            beta2=float(betas[1]) if betas is not None else None,
            weight_decay=float(group.get("weight_decay", 0.0) or 0.0),
            nesterov=bool(group.get("nesterov", False)),
            clip_grad_norm=clip_grad_norm,
            assumed=assumed,
        )

    @staticmethod
    def number(value: object) -> float | None:
        """A learning rate (or any setting) as a float: a tensor's value, None where it is not a number."""
        if isinstance(value, torch.Tensor):
            value = value.item()
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    @property
    def adaptive(self) -> bool:
        return self.optimizer in ADAPTIVE

    def stability_threshold(self) -> float | None:
        """The largest curvature (top eigenvalue of the loss Hessian, preconditioned for adaptive
        optimizers) at which the recipe's iteration on a quadratic does not diverge:
        ``2 / lr`` for plain SGD, ``2 (1 + β) / lr`` with heavy-ball momentum β,
        ``2 (1 + β) / ((1 + 2β) lr)`` with Nesterov, ``2 (1 + β1) / ((1 - β1) lr)`` for Adam-like
        optimizers (momentum as an average: Cohen et al. 2022), ``2 / lr`` for RMSprop/Adagrad."""
        if self.lr is None or self.lr <= 0:
            return None
        beta = self.momentum
        if self.adaptive:
            if beta > 0 and self.optimizer not in ("RMSprop", "Adagrad", "Adadelta"):
                return 2 * (1 + beta) / ((1 - beta) * self.lr)
            return 2 / self.lr
        if self.nesterov and beta > 0:
            return 2 * (1 + beta) / ((1 + 2 * beta) * self.lr)
        return 2 * (1 + beta) / self.lr

    def largest_stable_lr(self, curvature: float) -> float | None:
        """The learning rate at which ``curvature`` sits exactly at the stability threshold."""
        threshold = self.stability_threshold()
        if threshold is None or not math.isfinite(curvature) or curvature <= 0:
            return None
        return self.lr * threshold / curvature

    def text(self) -> str:
        parts = [self.optimizer]
        if self.lr is not None:
            parts.append(f"lr {self.lr:g}" + (f" (down to {self.lr_smallest:g} in other parameter groups)"
                                              if self.lr_smallest is not None else "")
                         + (f" (its schedule's peak; {self.scheduled_from:g} now)"
                            if self.scheduled_from is not None else ""))
        if self.adaptive and self.beta2 is not None:
            parts.append(f"betas ({self.momentum:g}, {self.beta2:g})")
        elif self.momentum:
            parts.append(f"momentum {self.momentum:g}" + (" nesterov" if self.nesterov else ""))
        if self.weight_decay:
            parts.append(f"weight decay {self.weight_decay:g}")
        if self.clip_grad_norm is not None:
            parts.append(f"clip {self.clip_grad_norm:g}")
        return " ".join(parts)

    def to_dict(self) -> dict:
        return {**asdict(self), "text": self.text()}


def lr_by_parameter(optimizer: torch.optim.Optimizer) -> dict:
    """Each parameter ``optimizer`` holds, to its group's learning rate (None where that is not
    a number); a parameter in two groups counts by the first."""
    rates: dict = {}
    for group in optimizer.param_groups:
        lr = Recipe.number(group.get("lr"))
        for p in group["params"]:
            rates.setdefault(p, lr)
    return rates


def unwrap_optimizer(optimizer: object) -> object:
    """The torch optimizer inside a framework's wrapper: Lightning's ``LightningOptimizer``
    (``self.optimizers()``, holding it as ``_optimizer``) and accelerate's
    ``AcceleratedOptimizer`` (the Hugging Face Trainer's ``trainer.optimizer``, as ``optimizer``).
    The wrapper's step calls the inner one's, so hooks and the guard on the inner optimizer see
    every step, and its class name is the real optimizer's. Anything else is returned as it is."""
    for _ in range(4):  # a wrapper of a wrapper
        inner = getattr(optimizer, "_optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer):
            inner = getattr(optimizer, "optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer) or inner is optimizer:
            return optimizer
        optimizer = inner
    return optimizer
