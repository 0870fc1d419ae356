"""The trainability benchmark: does ``gradscope.diagnose``'s verdict match what training does?

Three stages, each writing a committed results file under benchmarks/results/, so that the last
one reruns in seconds:

    python benchmarks/trainability.py train    # ground truth: 600 steps per (architecture, recipe, seed)
    python benchmarks/trainability.py probe    # diagnose's verdict and evidence per (architecture, recipe)
    python benchmarks/trainability.py score    # the tables of docs/trainability.md

``train`` and ``probe`` resume where they stopped (rows already in the file are kept); ``--jobs``
runs that many processes of one thread each. The architectures and recipes are in
benchmarks/trainability_zoo.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"
OUTCOMES = RESULTS / "trainability_outcomes.jsonl"
PROBES = RESULTS / "trainability_probes.jsonl"
SEEDS = (0, 1)


def _read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _train_one(job: tuple[str, str, int]) -> dict:
    import torch

    import trainability_zoo as zoo

    torch.set_num_threads(1)
    name, recipe, seed = job
    arch = next(a for a in zoo.ARCHITECTURES if a.name == name)
    result = zoo.train(arch, zoo.RECIPES[recipe], seed, zoo.digits())
    return {"architecture": name, "recipe": recipe, "seed": seed, **result}


def train(jobs: int, recipes: list[str]) -> None:
    import trainability_zoo as zoo

    RESULTS.mkdir(exist_ok=True)
    done = {(r["architecture"], r["recipe"], r["seed"]) for r in _read(OUTCOMES)}
    todo = [(a.name, recipe, seed) for recipe in recipes for seed in SEEDS for a in zoo.ARCHITECTURES
            if (a.name, recipe, seed) not in done]
    print(f"{len(todo)} training runs to do ({len(done)} done)", flush=True)
    with ProcessPoolExecutor(jobs) as pool, OUTCOMES.open("a") as out:
        for row in pool.map(_train_one, todo):
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(f"{row['architecture']:36s} {row['recipe']:10s} seed {row['seed']}: "
                  f"accuracy {row['accuracy']:.3f} non-finite at {row['nonfinite_at']}", flush=True)


def _probe_one(job: tuple[str, str]) -> dict:
    import warnings

    import torch
    import torch.nn.functional as F

    import gradscope
    import trainability_zoo as zoo

    torch.set_num_threads(1)
    name, recipe_name = job
    arch = next(a for a in zoo.ARCHITECTURES if a.name == name)
    recipe = zoo.RECIPES[recipe_name]
    model = zoo.build(arch, 0)
    x, y = zoo.probe_batch(arch, zoo.digits(), 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = gradscope.diagnose(model, x, lambda out: F.cross_entropy(out, y),
                                    optimizer=recipe.build(model))
    return {
        "architecture": name, "recipe": recipe_name,
        "verdict": report.verdict.label if getattr(report, "verdict", None) else None,
        "reasons": list(report.verdict.reasons) if getattr(report, "verdict", None) else [],
        "findings": [[f.code, f.rule, f.severity] for f in report.findings],
        "by_eye": by_eye(report),
        "dynamics": report.dynamics.to_dict() if report.dynamics is not None else None,
        "probe_error": report.options.get("probe_error"),
    }


def by_eye(report) -> dict:
    """The check a wandb or TensorBoard user applies by eye to the first logged step: the first and
    last weight-gradient norms differ by more than 10^3.5, more than half of a ReLU layer's units
    are dead, or a gradient is non-finite."""
    import math

    history = report.history
    first = history[history["step"] == history["step"].min()]
    grads = first[(first["metric"] == "grad_norm") & first["layer"].str.endswith("weight")]
    values = grads["value"].tolist()
    nonfinite = any(not math.isfinite(v) for v in values) or bool(
        (first[first["metric"] == "grad_nonfinite"]["value"] > 0).any())
    finite = [v for v in values if math.isfinite(v)]
    spread = (math.log10(max(finite[0], 1e-30)) - math.log10(max(finite[-1], 1e-30))) if len(finite) >= 2 else 0.0
    dead = report.layers["dead_fraction"].max() if "dead_fraction" in report.layers else float("nan")
    fails = nonfinite or abs(spread) > 3.5 or (dead == dead and dead > 0.5)
    return {"fails": bool(fails), "spread_orders": spread, "dead": None if dead != dead else float(dead),
            "nonfinite": nonfinite}


def probe(jobs: int, recipes: list[str], fresh: bool) -> None:
    import trainability_zoo as zoo

    RESULTS.mkdir(exist_ok=True)
    if fresh and PROBES.exists():
        PROBES.unlink()
    done = {(r["architecture"], r["recipe"]) for r in _read(PROBES)}
    todo = [(a.name, recipe) for recipe in recipes for a in zoo.ARCHITECTURES if (a.name, recipe) not in done]
    print(f"{len(todo)} probes to do ({len(done)} done)", flush=True)
    with ProcessPoolExecutor(jobs) as pool, PROBES.open("a") as out:
        for row in pool.map(_probe_one, todo):
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(f"{row['architecture']:36s} {row['recipe']:10s}: {row['verdict']} "
                  f"{[f[1] for f in row['findings']]}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["train", "probe", "score"])
    parser.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2)))
    parser.add_argument("--recipes", nargs="*", default=None)
    parser.add_argument("--fresh", action="store_true", help="probe: start the results file anew")
    args = parser.parse_args()
    import trainability_zoo as zoo

    recipes = args.recipes or list(zoo.RECIPES)
    if args.stage == "train":
        train(args.jobs, recipes)
    elif args.stage == "probe":
        probe(args.jobs, recipes, args.fresh)


if __name__ == "__main__":
    main()
