"""A profiler table of one logged step: the MLP of benchmarks/overhead.py at every=1, the ops of a
logged step averaged over 20 steps (torch.profiler, CPU), and the same for plain steps.

Run: python benchmarks/profile_step.py [--rows 15]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gradscope  # noqa: E402
from models import setup  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, x, y, loss = setup("mlp", "cpu")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step():
        loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()

    for _ in range(5):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as plain:
        for _ in range(args.steps):
            step()
    with gradscope.monitor(model, every=1, optimizer=opt, weights_every=1):
        step()
        with profile(activities=[ProfilerActivity.CPU]) as watched:
            for _ in range(args.steps):
                step()
    for title, prof in (("plain steps", plain), ("logged steps (every=1, weights_every=1)", watched)):
        print(f"\n{title}, {args.steps} steps:\n")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
