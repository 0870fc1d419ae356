"""Per-step overhead of gradscope.monitor against a plain training loop.

Interleaved blocks (plain, every=1, plain, every=10, …) in one process; the figure is the median
block time per step, reported as a ratio to the median plain step. Prints a markdown table with
the machine, torch version and command.

Run: python benchmarks/overhead.py [--blocks 7] [--steps 30]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import gradscope


def mlp() -> nn.Module:
    """784-512x6-10 with ReLU, batch 128."""
    layers: list[nn.Module] = [nn.Linear(784, 512), nn.ReLU()]
    for _ in range(5):
        layers += [nn.Linear(512, 512), nn.ReLU()]
    layers.append(nn.Linear(512, 10))
    return nn.Sequential(*layers)


def main() -> None:
    parser = argparse.ArgumentParser(description="gradscope per-step overhead")
    parser.add_argument("--blocks", type=int, default=7)
    parser.add_argument("--steps", type=int, default=30, help="steps per block")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(128, 784), torch.randint(0, 10, (128,))

    def block() -> float:
        start = time.perf_counter()
        for _ in range(args.steps):
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
        return (time.perf_counter() - start) / args.steps

    configs = {"plain": None, "gradscope every=1": 1, "gradscope every=10": 10,
               "gradscope every=100": 100}
    times: dict[str, list[float]] = {name: [] for name in configs}
    block()  # warm-up
    for _ in range(args.blocks):
        for name, every in configs.items():
            if every is None:
                times[name].append(block())
            else:
                with gradscope.monitor(model, every=every, optimizer=opt):
                    times[name].append(block())
    plain = statistics.median(times["plain"])
    print(f"MLP 784-512x6-10, batch 128, SGD, CPU threads {torch.get_num_threads()}; "
          f"torch {torch.__version__}, gradscope {gradscope.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"command: python {' '.join(sys.argv)}\n")
    print("| configuration | median step | ratio to plain |")
    print("| --- | --- | --- |")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median * 1e3:.2f} ms | {median / plain:.3f}x |")


if __name__ == "__main__":
    main()
