"""Every step's training loss of the trainability zoo's runs on digits: the runs a loss-trend
detector must stay quiet on (those that train, whose loss falls towards zero with batch-to-batch
noise) and those it should catch before their loss goes non-finite.

    python benchmarks/loss_traces.py --jobs 2      # train, save benchmarks/results/digits_loss_traces.npz
    python benchmarks/loss_traces.py --jobs 2 --seed 1 --out benchmarks/results/digits_loss_traces_seed1.npz

One seed (0 unless given) per architecture under the SGD-with-momentum and Adam recipes of
benchmarks/trainability_zoo.py, 600 steps each, the same loop as the trainability benchmark. The
file holds the losses (a NaN-padded float32 array, a non-finite loss as its last value) and, per
run, the architecture, recipe, test accuracy and the step the loss went non-finite.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

TRACES = Path(__file__).resolve().parent / "results" / "digits_loss_traces.npz"
RECIPES = ("sgd", "adam")
def _train_one(job: tuple[str, str, int]) -> dict:
    import torch

    import trainability_zoo as zoo

    torch.set_num_threads(1)
    name, recipe, seed = job
    arch = next(a for a in zoo.ARCHITECTURES if a.name == name)
    result = zoo.train(arch, zoo.RECIPES[recipe], seed, zoo.digits(), trace=True)
    losses = result.pop("losses")
    if result["nonfinite_at"] is not None and result["nonfinite_at"] == len(losses):
        losses.append(float("nan"))  # the step whose loss went non-finite
    return {"architecture": name, "recipe": recipe, "seed": seed, **result, "losses": losses}


def train(jobs: int, path: Path, seed: int = 0) -> None:
    import trainability_zoo as zoo

    todo = [(a.name, recipe, seed) for recipe in RECIPES for a in zoo.ARCHITECTURES]
    started = time.perf_counter()
    with ProcessPoolExecutor(jobs) as pool:
        rows = list(pool.map(_train_one, todo))
    save(rows, path)
    print(f"{len(rows)} runs in {time.perf_counter() - started:.0f} s, saved to {path}")


def save(rows: list[dict], path: Path) -> None:
    steps = max(len(r["losses"]) for r in rows)
    losses = np.full((len(rows), steps), np.nan, dtype=np.float32)
    for i, row in enumerate(rows):
        losses[i, :len(row["losses"])] = row["losses"]
    meta = [{k: v for k, v in row.items() if k != "losses"} | {"length": len(row["losses"])} for row in rows]
    path.parent.mkdir(exist_ok=True)
    np.savez_compressed(path, losses=losses, meta=np.array(json.dumps(meta)))


def load(path: Path = TRACES) -> list[dict]:
    """The runs, each a dict with ``losses`` (a float64 array) and the outcome."""
    data = np.load(path)
    meta = json.loads(str(data["meta"]))
    return [{**m, "losses": data["losses"][i, :m["length"]].astype(np.float64)} for i, m in enumerate(meta)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=TRACES)
    args = parser.parse_args()
    train(args.jobs, args.out, args.seed)


if __name__ == "__main__":
    main()
