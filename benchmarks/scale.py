"""How the cost of a logged step grows with the number of layers: GPT-style transformers of 12,
48 and 96 blocks (8 parameter tensors and 12 leaf modules per block), gradscope at every=1 against
plain steps, interleaved; the added time per parameter tensor should stay flat.

Run: python benchmarks/scale.py [--blocks 12,48,96] [--rounds 5] [--steps 5]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gradscope  # noqa: E402
from models import GPT  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", default="12,48,96")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--gc-freeze", action="store_true",
                        help="gc.freeze() after building each model (keeps the cyclic GC off its objects)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, gradscope {gradscope.__version__}, CPU threads {torch.get_num_threads()}")
    print(f"command: python {' '.join(sys.argv)}\n")
    print("| blocks | parameter tensors | leaf modules | plain step | every=1 step | added | added per parameter tensor |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for blocks in (int(b) for b in args.blocks.split(",")):
        torch.manual_seed(0)
        model = GPT(vocab=256, d=32, layers=blocks, heads=2, context=16)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        ids = torch.randint(0, 256, (4, 16))
        if args.gc_freeze:
            gc.freeze()

        def step():
            F.cross_entropy(model(ids).reshape(-1, 256), ids.reshape(-1)).backward()
            opt.step()
            opt.zero_grad()

        def block() -> float:
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            return (time.perf_counter() - start) / args.steps

        plain, watched = [], []
        step()
        for _ in range(args.rounds):
            plain.append(block())
            with gradscope.monitor(model, every=1, optimizer=opt, weights_every=1):
                step()  # the first logged step builds the layout; not counted
                watched.append(block())
        p, w = statistics.median(plain), statistics.median(watched)
        tensors = len(list(model.parameters()))
        leaves = sum(1 for m in model.modules() if not list(m.children()))
        print(f"| {blocks} | {tensors} | {leaves} | {p * 1e3:.1f} ms | {w * 1e3:.1f} ms | {(w - p) * 1e3:.1f} ms | "
              f"{(w - p) * 1e6 / tensors:.1f} µs |")


if __name__ == "__main__":
    main()
