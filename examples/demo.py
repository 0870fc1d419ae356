"""gradscope demo: a deep sigmoid MLP on scikit-learn's digits, whose gradients vanish.

Trains the same 12-layer MLP twice on the 8x8 digits shipped with scikit-learn: once with sigmoid
activations and PyTorch's default init (the classic vanishing-gradient setup), once with ReLU and
He init. gradscope records every layer on every 10th step; the table shows the backpropagated
signal (``out_grad_norm``, "signal" in the table) from the output back to the input, where the sigmoid net loses orders of
magnitude, and what else was recorded.

Run: python examples/demo.py [--steps 300] [--log-dir runs/demo]
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from sklearn.datasets import load_digits

import gradscope

DEPTH, WIDTH = 12, 64


def deep_mlp(activation: type[nn.Module], he_init: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    width_in = 64
    for _ in range(DEPTH):
        linear = nn.Linear(width_in, WIDTH)
        if he_init:
            nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
            nn.init.zeros_(linear.bias)
        layers += [linear, activation()]
        width_in = WIDTH
    layers.append(nn.Linear(WIDTH, 10))
    return nn.Sequential(*layers)


def train(model: nn.Module, data, steps: int, log_dir: str | None) -> tuple[gradscope.Monitor, float]:
    x_train, y_train, x_test, y_test = data
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    with gradscope.monitor(model, every=10, optimizer=opt, log_dir=log_dir) as mon:
        for _ in range(steps):
            batch = torch.randint(0, len(x_train), (64,), generator=generator)
            F.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
            opt.step()
            opt.zero_grad()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    return mon, accuracy


def bar(value: float, low: float = -12.0, high: float = 1.0, width: int = 20) -> str:
    """A bar whose length is log10(value) between ``low`` and ``high``."""
    if not value > 0 or not math.isfinite(value):
        return ""
    filled = round((min(max(math.log10(value), low), high) - low) / (high - low) * width)
    return "█" * filled


def show(console: Console, title: str, mon: gradscope.Monitor, accuracy: float) -> None:
    df = mon.to_dataframe()
    first = df[df.step == 0].set_index(["layer", "metric"]).value
    last_step = int(df.step.max())
    last = df[df.step == last_step].set_index(["layer", "metric"]).value
    table = Table(title=f"{title}: test accuracy {accuracy:.1%}", title_justify="left")
    table.add_column("layer\n(out → in)")
    table.add_column("signal\nstep 0", justify="right")
    table.add_column("log10 signal\n1e-12 … 1e1", no_wrap=True)
    table.add_column(f"signal\nstep {last_step}", justify="right")
    table.add_column("weight grad\nstep 0", justify="right")
    table.add_column("dead/sat\nstep 0", justify="right")
    linears = [str(i) for i in range(0, 2 * DEPTH + 1, 2)]
    for name in reversed(linears):
        activation = str(int(name) + 1)
        dead = first.get((activation, "dead_fraction"))
        saturated = first.get((activation, "saturation"))
        health = f"{100 * dead:.0f}% dead" if dead is not None else (
            f"{100 * saturated:.0f}% sat" if saturated is not None else "")
        table.add_row(
            f"{name} Linear",
            f"{first[(name, 'out_grad_norm')]:.2e}",
            bar(first[(name, "out_grad_norm")]),
            f"{last[(name, 'out_grad_norm')]:.2e}",
            f"{first[(name + '.weight', 'grad_norm')]:.2e}",
            health,
        )
    console.print(table)
    top, bottom = first[(linears[-1], "out_grad_norm")], first[(linears[0], "out_grad_norm")]
    console.print(
        f"backpropagated signal, output layer → first layer: {top:.2e} → {bottom:.2e} "
        f"({math.log10(bottom / top):+.1f} orders of magnitude); "
        f"{len(df)} values recorded over {df.step.nunique()} logged steps.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--log-dir", default=None, help="also stream the sigmoid run's history here")
    args = parser.parse_args()

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train_idx, test_idx = order[:1400], order[1400:]
    data = (x[train_idx], y[train_idx], x[test_idx], y[test_idx])

    console = Console()
    torch.manual_seed(0)
    sigmoid_mon, sigmoid_acc = train(deep_mlp(nn.Sigmoid, he_init=False), data, args.steps, args.log_dir)
    show(console, f"{DEPTH}-layer sigmoid MLP, default init", sigmoid_mon, sigmoid_acc)
    torch.manual_seed(0)
    relu_mon, relu_acc = train(deep_mlp(nn.ReLU, he_init=True), data, args.steps, None)
    show(console, f"{DEPTH}-layer ReLU MLP, He init", relu_mon, relu_acc)
    if args.log_dir:
        console.print(f"history of the sigmoid run streamed to {args.log_dir}/ (docs/run-directory.md)")


if __name__ == "__main__":
    main()
