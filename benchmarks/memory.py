"""RAM of a long run streamed to disk: the monitor's History (the same class the monitor uses),
fed 1,000 layers' values per logged step for 100,000 steps into a run directory, with the
resident set size sampled as it goes. It should level off at the RAM window, not grow with the run.

Run: python benchmarks/memory.py [--steps 100000] [--layers 1000]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time

import numpy as np

from gradscope.history import History
from gradscope.rundir import read_history


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--layers", type=int, default=1000)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--flush-every", type=int, default=100)
    args = parser.parse_args()
    layers = np.array([f"blocks.{i // 4}.fc{i % 4}" for i in range(args.layers)], dtype=object)
    metrics = np.array(["out_grad_norm"] * args.layers, dtype=object)
    ids = np.arange(args.layers)
    rng = np.random.default_rng(0)
    values = rng.random(args.layers)
    run_dir = tempfile.mkdtemp(prefix="gradscope-memory-")
    history = History(lambda: (layers, metrics), run_dir, window=args.window, flush_every=args.flush_every)
    print(f"command: python {' '.join(sys.argv)}; run directory {run_dir}\n")
    print("| logged steps | values on disk | RSS |")
    print("| --- | --- | --- |")
    start = time.perf_counter()
    checkpoints = {int(args.steps * f) for f in (0.01, 0.1, 0.25, 0.5, 0.75, 1.0)}
    for step in range(1, args.steps + 1):
        history.append(step, ids, values)
        if step in checkpoints:
            print(f"| {step:,} | {step * args.layers:,} | {rss_mb():.0f} MB |", flush=True)
    history.flush()
    elapsed = time.perf_counter() - start
    parts = len(list((history.run_dir / "history").glob("part-*.parquet")))
    size = sum(p.stat().st_size for p in (history.run_dir / "history").glob("part-*.parquet")) / 1e6
    print(f"\n{args.steps:,} steps in {elapsed:.0f} s ({elapsed / args.steps * 1e6:.0f} µs a step); "
          f"{parts} Parquet parts, {size:.0f} MB on disk.")
    tail = read_history(run_dir).query(f"step > {args.steps - 10}")
    print(f"read back: last steps {sorted(tail.step.unique())[-3:]}, {len(tail):,} rows")


if __name__ == "__main__":
    main()
