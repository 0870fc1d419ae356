"""``diagnose`` on trained models: does its verdict hold for a model that has already learned?

A checkpoint to resume or a model to fine-tune is diagnosed too. For a third of the (architecture,
recipe) pairs of the trainability benchmark that trained under both seeds (benchmarks/results/
trainability_outcomes.jsonl, outside ``HEAVY``; the third whose CRC32 of "architecture recipe" is
divisible by 3, chosen before any was run): train seed 0 for 600 steps as the benchmark does,
then ``diagnose`` it with a fresh optimizer of the same recipe on the first batch of seed 2, then
train on from there with that fresh optimizer for 600 more steps (batches of seed 2). The outcome
is the test accuracy at the end, scored as in the benchmark (trains at 0.8 or more; fails at 0.3
or less or a non-finite loss).

    python benchmarks/trained_verdicts.py run [--jobs 2]   # appends to results/trained_verdicts.jsonl
    python benchmarks/trained_verdicts.py score            # the table of docs/trainability.md
"""

from __future__ import annotations

import argparse
import collections
import sys
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainability import OUTCOMES, RESULTS, _append_results, _read  # noqa: E402

ROWS = RESULTS / "trained_verdicts.jsonl"
RECIPES = ("sgd", "adam", "sgd-plain")
TRAINED_SEED, ON_SEED = 0, 2


def _one(job: tuple[str, str]) -> dict:
    import warnings

    import torch
    import torch.nn.functional as F

    import gradscope
    import trainability_zoo as zoo
    from gradscope import probe

    torch.set_num_threads(1)
    name, recipe_name = job
    arch = next(a for a in zoo.ARCHITECTURES if a.name == name)
    recipe, data = zoo.RECIPES[recipe_name], zoo.digits()
    model = zoo.build(arch, TRAINED_SEED)
    first = zoo.train(arch, recipe, TRAINED_SEED, data, model=model)
    x, y = zoo.probe_batch(arch, data, ON_SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = gradscope.diagnose(model, x, lambda out: F.cross_entropy(out, y), optimizer=recipe.build(model))
        # the verdict as it was before fitted models were told apart
        thresholds = probe.FITTED, probe.DEEPLY_FITTED
        probe.FITTED = probe.DEEPLY_FITTED = 0.0
        try:
            before = gradscope.diagnose(model, x, lambda out: F.cross_entropy(out, y), optimizer=recipe.build(model))
        finally:
            probe.FITTED, probe.DEEPLY_FITTED = thresholds
    on = zoo.train(arch, recipe, ON_SEED, data, model=model)
    dynamics = report.dynamics
    return {
        "architecture": name, "recipe": recipe_name, "trained_accuracy": first["accuracy"],
        "verdict": report.verdict.label, "reasons": list(report.verdict.reasons),
        "findings": [[f.code, f.rule, f.severity] for f in report.findings],
        "fit": dynamics.fit if dynamics is not None else None,
        "verdict_without_fit": before.verdict.label, "reasons_without_fit": list(before.verdict.reasons),
        "accuracy": on["accuracy"], "nonfinite_at": on["nonfinite_at"],
    }


def _jobs() -> list[tuple[str, str]]:
    import trainability_zoo as zoo

    accuracies = collections.defaultdict(list)
    for row in _read(OUTCOMES):
        accuracies[(row["architecture"], row["recipe"])].append(row["accuracy"])
    return [(a.name, r) for r in RECIPES for a in zoo.ARCHITECTURES if a.name not in zoo.HEAVY
            and len(accuracies[(a.name, r)]) == 2 and min(accuracies[(a.name, r)]) >= 0.8
            and zlib.crc32(f"{a.name} {r}".encode()) % 3 == 0]


def run(jobs: int) -> None:
    done = {(r["architecture"], r["recipe"]) for r in _read(ROWS)}
    todo = [job for job in _jobs() if job not in done]
    print(f"{len(todo)} trained models to diagnose ({len(done)} done)", flush=True)
    _append_results(jobs, _one, todo, ROWS, lambda row: (
        f"fit {row['fit']:.2g} {row['verdict']} {row['reasons']} -> {row['accuracy']:.3f}"))


def _outcome(row: dict) -> str:
    if row["nonfinite_at"] is not None or row["accuracy"] <= 0.3:
        return "fails"
    return "trains" if row["accuracy"] >= 0.8 else "in between"


def score() -> None:
    chosen = set(_jobs())
    rows = [r for r in _read(ROWS) if (r["architecture"], r["recipe"]) in chosen]
    print("| recipe | trained models | fit ≤ 0.25 | trained on to ≥ 0.8 | verdict trains | at-risk | fails "
          "| wrong | before: trains / at-risk / fails | before: wrong |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for recipe in (*RECIPES, "all"):
        part = [r for r in rows if recipe in ("all", r["recipe"])]
        if not part:
            continue
        now = collections.Counter(r["verdict"] for r in part)
        before = collections.Counter(r["verdict_without_fit"] for r in part)
        outcomes = collections.Counter(_outcome(r) for r in part)
        fitted = sum(r["fit"] is not None and r["fit"] <= 0.25 for r in part)
        print(f"| {recipe} | {len(part)} | {fitted} | {outcomes['trains']} | {now['trains']} | {now['at-risk']} | "
              f"{now['fails']} | {_wrong(part, 'verdict')} | {before['trains']} / {before['at-risk']} / "
              f"{before['fails']} | {_wrong(part, 'verdict_without_fit')} |")
    flagged = collections.Counter(f[1] for r in rows for f in r["findings"] if f[2] != "info")
    print(f"\nFindings above information: {', '.join(f'{k} {v}' for k, v in flagged.most_common()) or 'none'}.")
    for r in rows:
        if "trains" not in (r["verdict"], r["verdict_without_fit"]) or r["verdict"] != r["verdict_without_fit"] \
                or _outcome(r) != "trains":
            print(f"- {r['architecture']} {r['recipe']}: {r['verdict']} {r['reasons']} (before: "
                  f"{r['verdict_without_fit']} {r['reasons_without_fit']}), fit {r['fit']:.3g}, trained on to "
                  f"{r['accuracy']:.2f}")


def _wrong(rows: list[dict], key: str) -> int:
    """Verdicts that disagree with a scored outcome (at-risk and fails both predict failure)."""
    return sum((r[key] == "trains") != (_outcome(r) == "trains") for r in rows if _outcome(r) != "in between")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=("run", "score"))
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    run(args.jobs) if args.stage == "run" else score()


if __name__ == "__main__":
    main()
