"""The little models that the rules' bad/good pairs are built from (each rule's ``pair`` sits in
its own module): a plain stack of Linear layers, the inits, a residual wrapper, a singular op, a
fixed batch of inputs and a classification loss on it.

>>> model = stack(2, nn.ReLU, width=8, init=he, out=1)
>>> model(x64(width=8, batch=3)).shape
torch.Size([3, 1])
"""

from __future__ import annotations

import torch
import torch.nn as nn


def stack(depth: int, activation, width: int = 64, init=None, bias=None, out: int = 10) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        linear = nn.Linear(width, width)
        if init is not None:
            init(linear.weight)
        if bias is not None:
            nn.init.constant_(linear.bias, bias)
        layers += [linear] + ([activation()] if activation is not None else [])
    return nn.Sequential(*layers, nn.Linear(width, out))


def he(w):
    nn.init.kaiming_normal_(w, nonlinearity="relu")


def xavier_tanh(w):
    nn.init.xavier_normal_(w, gain=nn.init.calculate_gain("tanh"))


class Residual(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x):
        return x + self.block(x)


class Sqrt(nn.Module):
    def __init__(self, eps: float = 0.0) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x):
        return torch.sqrt(x + self.eps)


def x64(width: int = 64, batch: int = 64):
    return torch.randn(batch, width, generator=torch.Generator().manual_seed(0))


def cross_entropy(classes: int = 10, batch: int = 64):
    """A cross-entropy on fixed labels for :func:`x64`'s batch: a real loss, for the rules whose
    findings scale with the loss (gradscope's default loss gets a margin for its scale)."""
    labels = torch.randint(0, classes, (batch,), generator=torch.Generator().manual_seed(1))
    return lambda output: nn.functional.cross_entropy(output, labels)


def spiking_run(corrupt_at: int | None, momentum: float = 0.0, guard: str | None = None,
                steps: int = 300, grow_from: int | None = None) -> dict:
    """The training-run pair of the instability rules: a small ReLU MLP learning a linear map
    with SGD (lr 0.01), ``gradscope.monitor(every=100)`` around the loop; at step ``corrupt_at``
    one batch comes with inputs 30x too large (a corrupt batch); from step ``grow_from`` the
    learning rate grows 2% a step. ``run()`` trains a fresh copy and returns the monitor's
    report; ``model`` and ``inputs`` are the model and a batch."""
    def build() -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))

    def run():
        import gradscope

        model = build()
        generator = torch.Generator().manual_seed(1)
        x_all = torch.randn(2000, 20, generator=generator)
        y_all = x_all[:, :1] * 2
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=momentum)
        with gradscope.monitor(model, every=100, optimizer=opt, guard=guard) as mon:
            for step in range(steps):
                if grow_from is not None and step >= grow_from:
                    opt.param_groups[0]["lr"] *= 1.02
                index = torch.randint(0, 2000, (32,), generator=generator)
                x = x_all[index] * (30.0 if step == corrupt_at else 1.0)
                loss = nn.functional.mse_loss(model(x), y_all[index])
                loss.backward()
                opt.step()
                opt.zero_grad()
        return mon.report()

    return {"model": build(), "inputs": torch.randn(32, 20, generator=torch.Generator().manual_seed(2)),
            "run": run}


def rising_run(growing: bool, steps: int = 400) -> dict:
    """The pair of the rising-loss rule: the run of :func:`spiking_run` without a corrupt batch;
    with ``growing`` the learning rate grows 2% a step from step 200, so the loss climbs back
    over tens of steps."""
    return spiking_run(None, steps=steps, grow_from=200 if growing else None)


def report_of(pair: dict):
    """The report a rule's pair yields: its training ``run()`` for the rules that judge a
    training run, else ``gradscope.diagnose(**pair)``."""
    import gradscope

    if "run" in pair:
        return pair["run"]()
    return gradscope.diagnose(**pair)
