"""Dashboards on a real run: a 16-layer tanh MLP (PyTorch's default init) trained on
scikit-learn's digits, watched by gradscope with TensorBoard, a run directory and the HTML report.

Run: python examples/dashboards.py [--steps 400] [--out runs/dashboards]
Then: tensorboard --logdir runs/dashboards/tensorboard   (the "Custom Scalars" tab: one chart per
metric across all layers), open runs/dashboards/report.html, or `gradscope summary
runs/dashboards/run`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits

import gradscope


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--out", type=Path, default=Path("runs/dashboards"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    layers: list[nn.Module] = [nn.Linear(64, 64), nn.Tanh()]
    for _ in range(15):
        layers += [nn.Linear(64, 64), nn.Tanh()]
    model = nn.Sequential(*layers, nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    with gradscope.monitor(model, every=5, optimizer=opt, log_dir=args.out / "run",
                           tensorboard=args.out / "tensorboard", histograms_every=10) as mon:
        for _ in range(args.steps):
            batch = torch.randint(0, len(x), (64,), generator=generator)
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
            opt.zero_grad()
    path = mon.save_html(args.out / "report.html", "16-layer tanh MLP on digits")
    for f in mon.findings():
        print(f.code, f.rule, f.severity, "-", f.message)
    print(f"wrote {path}, {args.out / 'run'}, {args.out / 'tensorboard'}")
    return path


if __name__ == "__main__":
    main()
