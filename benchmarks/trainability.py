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
    RESULTS.mkdir(exist_ok=True)
    done = {(r["architecture"], r["recipe"], r["seed"]) for r in _read(OUTCOMES)}
    todo = _todo(recipes, done, SEEDS)
    print(f"{len(todo)} training runs to do ({len(done)} done)", flush=True)
    _append_results(jobs, _train_one, todo, OUTCOMES, lambda row: (
        f"seed {row['seed']}: accuracy {row['accuracy']:.3f} non-finite at {row['nonfinite_at']}"))


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
    RESULTS.mkdir(exist_ok=True)
    if fresh and PROBES.exists():
        PROBES.unlink()
    done = {(r["architecture"], r["recipe"]) for r in _read(PROBES)}
    todo = _todo(recipes, done)
    print(f"{len(todo)} probes to do ({len(done)} done)", flush=True)
    _append_results(jobs, _probe_one, todo, PROBES,
                    lambda row: f"{row['verdict']} {[f[1] for f in row['findings']]}")


def _todo(recipes: list[str], done: set, seeds: tuple[int, ...] | None = None) -> list[tuple]:
    """(architecture, recipe[, seed]) jobs not in ``done``; the extra recipes skip the heavy ones."""
    import trainability_zoo as zoo

    jobs = [(a.name, recipe) for recipe in recipes for a in zoo.ARCHITECTURES
            if not (recipe in zoo.EXTRA_RECIPES and a.name in zoo.HEAVY)]
    if seeds is not None:
        jobs = [(*job, seed) for job in jobs for seed in seeds]
    return [job for job in jobs if job not in done]


def _append_results(jobs: int, work, todo: list, path: Path, describe) -> None:
    """Run ``work`` over ``todo`` in ``jobs`` processes, appending each row to ``path`` as it comes
    (so that a stopped run resumes where it was)."""
    with ProcessPoolExecutor(jobs) as pool, path.open("a") as out:
        for row in pool.map(work, todo):
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(f"{row['architecture']:36s} {row['recipe']:10s} {describe(row)}", flush=True)


TRAINS_AT, FAILS_AT = 0.8, 0.3
"""Outcome of one training run: "trains" at test accuracy 0.8 or more, "fails" at 0.3 or less or a
non-finite loss, "in-between" otherwise."""


def run_outcome(row: dict) -> str:
    if row["nonfinite_at"] is not None or row["accuracy"] <= FAILS_AT:
        return "fails"
    return "trains" if row["accuracy"] >= TRAINS_AT else "in-between"


def outcomes() -> dict[tuple[str, str], dict]:
    """Per (architecture, recipe): the seeds' outcomes and the outcome they agree on ("seeds
    disagree" where they do not)."""
    runs: dict[tuple[str, str], list[dict]] = {}
    for row in _read(OUTCOMES):
        runs.setdefault((row["architecture"], row["recipe"]), []).append(row)
    table = {}
    for key, rows in runs.items():
        if len(rows) < len(SEEDS):
            continue
        seen = [run_outcome(r) for r in sorted(rows, key=lambda r: r["seed"])]
        table[key] = {"seeds": seen, "accuracy": [r["accuracy"] for r in rows],
                      "outcome": seen[0] if len(set(seen)) == 1 else "seeds disagree"}
    return table


def _scores(pairs: list[tuple[str, str]]) -> dict:
    """``pairs``: (predicted, outcome) with predicted "trains" or "fails" (at-risk counts as
    predicting failure) over runs whose outcome is trains or fails."""
    decided = [(p, o) for p, o in pairs if o in ("trains", "fails")]
    right = sum((p == "trains") == (o == "trains") for p, o in decided)
    called = [o for p, o in decided if p == "fails"]
    return {"n": len(decided), "agreement": right / len(decided) if decided else float("nan"),
            "fails_called": len(called),
            "fails_precision": sum(o == "fails" for o in called) / len(called) if called else float("nan"),
            "missed": sum(p == "trains" and o == "fails" for p, o in decided)}


def score() -> None:
    import trainability_zoo as zoo

    truth = outcomes()
    probes = {(r["architecture"], r["recipe"]): r for r in _read(PROBES)}
    keys = sorted(k for k in truth if k in probes)
    recipes = [r for r in zoo.RECIPES if any(k[1] == r for k in keys)]
    print(f"{len({k[0] for k in keys})} architectures, {len(keys)} (architecture, recipe) pairs with "
          f"{len(SEEDS)} seeds each and a probe.\n")
    print("| recipe | part | runs scored | gradscope agreement | precision of \"fails\" (verdict fails) | "
          "precision of \"fails\" (at-risk or fails) | failures missed | by-eye agreement | by-eye precision | "
          "in-between / seeds disagree |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for recipe in recipes:
        for part in ("fresh-5", "fresh-4", "fresh-3", "fresh-2", "fresh", "held-out", "fit", "all"):
            rows = [k for k in keys if k[1] == recipe and part in ("all", zoo.part(k[0]))]
            if not rows:
                continue
            verdicts = [(probes[k]["verdict"], truth[k]["outcome"]) for k in rows]
            ours = _scores([("trains" if v == "trains" else "fails", o) for v, o in verdicts])
            strict = [o for v, o in verdicts if v == "fails" and o in ("trains", "fails")]
            eye = _scores([("fails" if probes[k]["by_eye"]["fails"] else "trains", truth[k]["outcome"]) for k in rows])
            other = sum(truth[k]["outcome"] not in ("trains", "fails") for k in rows)
            print(f"| {recipe} | {part} | {ours['n']} | {ours['agreement']:.0%} | "
                  f"{_ratio(sum(o == 'fails' for o in strict), len(strict))} | "
                  f"{_ratio(round(ours['fails_precision'] * ours['fails_called']) if ours['fails_called'] else 0, ours['fails_called'])} | "
                  f"{ours['missed']} | {eye['agreement']:.0%} | {_ratio(round(eye['fails_precision'] * eye['fails_called']) if eye['fails_called'] else 0, eye['fails_called'])} | {other} |")
    disagree = sum(t["outcome"] == "seeds disagree" for t in truth.values())
    print(f"\nSeeds disagree on the outcome class of {disagree} of {len(truth)} (architecture, recipe) pairs "
          f"({disagree / max(len(truth), 1):.0%}).")
    _recipe_changes(truth, probes)
    print("\n| architecture | part | " + " | ".join(recipes) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in recipes) + " |")
    for arch in zoo.ARCHITECTURES:
        cells = []
        for recipe in recipes:
            k = (arch.name, recipe)
            if k not in truth or k not in probes:
                cells.append("")
                continue
            t, p = truth[k], probes[k]
            mark = "" if t["outcome"] not in ("trains", "fails") or (p["verdict"] == "trains") == (t["outcome"] == "trains") else " **x**"
            accuracy = "/".join(f"{a:.2f}" for a in t["accuracy"])
            cells.append(f"{p['verdict']}{mark} ({accuracy}) {' '.join(p['reasons'])}")
        print(f"| {arch.name} | {zoo.part(arch.name)} | " + " | ".join(cells) + " |")


def _recipe_changes(truth: dict, probes: dict) -> None:
    by_arch: dict[str, dict[str, str]] = {}
    for (arch, recipe), t in truth.items():
        if t["outcome"] in ("trains", "fails") and (arch, recipe) in probes:
            by_arch.setdefault(arch, {})[recipe] = recipe
    changed = followed = 0
    for arch, recipes in by_arch.items():
        names = sorted(recipes)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                if truth[(arch, a)]["outcome"] != truth[(arch, b)]["outcome"]:
                    changed += 1
                    va = probes[(arch, a)]["verdict"] == "trains"
                    vb = probes[(arch, b)]["verdict"] == "trains"
                    followed += (va == (truth[(arch, a)]["outcome"] == "trains")) and (vb == (truth[(arch, b)]["outcome"] == "trains"))
    print(f"\nOf {changed} (architecture, recipe pair)s where the outcome changes with the recipe, the verdict "
          f"follows the change (right under both recipes) in {followed} ({followed / max(changed, 1):.0%}).")


def _ratio(a: int, b: int) -> str:
    return f"{a / b:.0%} ({a}/{b})" if b else "n/a (0 called)"


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
    else:
        score()


if __name__ == "__main__":
    main()
