"""gradscope's own detector on the runs of benchmarks/instability.py, scored like the peer rules,
and on the digits runs of benchmarks/loss_traces.py (false alarms on runs that train).

The detector (gradscope.detectors.DetectorState, numpy arithmetic, as the monitor runs it on the
CPU) is replayed over each stored run's every-step loss and exact gradient norms (the monitor
reads a strided sample of each large gradient; the replay reads the stored exact norms), and the
first detection is scored with ``instability.score``: lead time before the run is lost, false
alarms on the runs that are never lost. Two configurations: the spike rule alone (``trend=0``)
and the default (spike rule and loss trend). Replaying takes seconds; no training.

Run: python benchmarks/instability_gradscope.py [--results FILE ...] [--digits FILE ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from instability import PEERS, first_moving, load, score  # noqa: E402

from gradscope.detectors import LOSS_RISING, Detector, DetectorState, alarm_names  # noqa: E402
from gradscope.events import QUIET, attribute  # noqa: E402
from gradscope.pulse import FIRST_PARAMETER  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
GPT_RUNS = {"fit (seeds 0, 1)": RESULTS / "instability_traces.npz",
            "held out (seeds 2, 3)": RESULTS / "instability_traces_heldout.npz"}
DIGITS = [RESULTS / "digits_loss_traces.npz", RESULTS / "digits_loss_traces_seed1.npz"]
CONFIGURATIONS = {"spike rule alone (trend=0)": Detector("zscore", trend=0),
                  "default (spike rule + loss trend)": Detector("zscore")}


def replay(run, detector: Detector) -> tuple[list[tuple[int, int]], tuple]:
    """(step, alarm bits) of the steps with an alarm, and the attribution (parameter, step it left
    its band, ratio) of the first one."""
    steps, params = run.param_grad_norm.shape
    state = DetectorState(detector, 2 + params, np)
    ring = np.full((steps, FIRST_PARAMETER + params), np.nan)
    fired, attributed = [], (None, None, None)
    for t in range(steps):
        ring[t, FIRST_PARAMETER:] = run.param_grad_norm[t]
        with np.errstate(all="ignore"):
            y = np.concatenate([[run.loss[t]], np.log([run.grad_norm[t]]), np.log(run.param_grad_norm[t])])
            alarm, _ = state.update(y)
        if alarm[0]:
            if not fired:
                band = (state.mean[2:].copy(), np.sqrt(state.var[2:]))
                attributed = attribute(t, ring, steps, list(run.names), band, 0)
            fired.append((t, int(alarm[0])))
    return fired, attributed


def loss_alarms(losses: np.ndarray, detector: Detector) -> list[tuple[int, int]]:
    """(step, alarm bits) of a loss trace alone (the gradient norm held at 1)."""
    state = DetectorState(detector, 2, np)
    out = []
    for t, loss in enumerate(losses):
        with np.errstate(all="ignore"):
            alarm, _ = state.update(np.array([loss, 0.0]))
        if alarm[0]:
            out.append((t, int(alarm[0])))
    return out


def _cell(s: dict) -> str:
    if s["lost"] is None:
        return f"{s['detections']} false alarms"
    return "none" if s["first"] is None else f"{s['first']} / {s['lead']:+d}"


def gpt_tables(paths: dict[str, Path]) -> None:
    for part, path in paths.items():
        if not path.exists():
            print(f"\n{part}: {path} not found")
            continue
        runs, _ = load(path)
        print(f"\n### {part}: {path.name}\n")
        print("| lr | seed | lost at | " + " | ".join(f"{name}: first / lead" for name in CONFIGURATIONS)
              + " | first alarm (default) | attributed (left band at) | first-moving (step) | "
              + " | ".join(f"{peer}: first / lead" for peer in PEERS) + " |")
        print("| --- | --- | --- | " + " | ".join("---" for _ in CONFIGURATIONS) + " | --- | --- | --- | "
              + " | ".join("---" for _ in PEERS) + " |")
        totals = {name: [0, 0, 0, 0] for name in [*CONFIGURATIONS, *PEERS]}  # ahead, lost, FA runs, stable runs
        for run in runs:
            cells, first_kind, attributed = [], "–", "–"
            for name, detector in CONFIGURATIONS.items():
                fired, (layer, left_at, _) = replay(run, detector)
                s = score(run, [t for t, _ in fired])
                cells.append(_cell(s))
                _tally(totals[name], s)
                if fired and detector.trend:
                    first_kind = ", ".join(alarm_names(fired[0][1]))
                    attributed = f"{layer or '–'} ({left_at if left_at is not None else '–'})"
            peers = []
            for peer, detect in PEERS.items():
                s = score(run, detect(run))
                peers.append(_cell(s))
                _tally(totals[peer], s)
            truth, truth_step = first_moving(run)
            lost = score(run, [])["lost"]
            print(f"| {run.lr:g} | {run.seed} | {lost if lost is not None else 'never'} | " + " | ".join(cells)
                  + f" | {first_kind} | {attributed} | {truth} ({truth_step}) | " + " | ".join(peers) + " |")
        print("\n| detector | lost runs caught before lost | runs never lost with an alarm |")
        print("| --- | --- | --- |")
        for name, (ahead, lost, false_runs, never) in totals.items():
            print(f"| {name} | {ahead} of {lost} | {false_runs} of {never} |")


def _tally(total: list[int], s: dict) -> None:
    if s["lost"] is None:
        total[3] += 1
        total[2] += s["detections"] > 0
    else:
        total[1] += 1
        total[0] += s["first"] is not None and s["lead"] > 0


def digits_table(path: Path) -> None:
    if not path.exists():
        print(f"\ndigits: {path} not found (python benchmarks/loss_traces.py)")
        return
    import loss_traces
    import trainability_zoo as zoo

    runs = loss_traces.load(path)
    print(f"\n### digits runs ({len(runs)}; {path.name})\n")
    print("| part | detector | trained (acc ≥ 0.8): runs with any alarm / with 'loss rising' / still rising "
          "at the end (a warning) | went non-finite: rising or spike alarm before it (median lead) | "
          "other runs with an alarm |")
    print("| --- | --- | --- | --- | --- |")
    for part in ("fit", "held-out", "fresh"):
        chosen = [r for r in runs if zoo.part(r["architecture"]) == part]
        for name, detector in CONFIGURATIONS.items():
            trained = [r for r in chosen if r["accuracy"] >= 0.8 and r["nonfinite_at"] is None]
            nonfinite = [r for r in chosen if r["nonfinite_at"] is not None]
            other = [r for r in chosen if r not in trained and r not in nonfinite]
            alarms = {id(r): loss_alarms(r["losses"], detector) for r in chosen}
            noisy = sum(bool(alarms[id(r)]) for r in trained)
            rising = sum(any(bits & LOSS_RISING for _, bits in alarms[id(r)]) for r in trained)
            # the rising-loss finding is a warning only while the last QUIET steps still rise
            at_end = sum(any(bits & LOSS_RISING and t >= len(r["losses"]) - QUIET for t, bits in alarms[id(r)])
                         for r in trained)
            leads = [r["nonfinite_at"] - alarms[id(r)][0][0] for r in nonfinite
                     if alarms[id(r)] and alarms[id(r)][0][0] < r["nonfinite_at"]]
            median = f" ({np.median(leads):.0f} steps)" if leads else ""
            print(f"| {part} | {name} | {noisy} / {rising} / {at_end} of {len(trained)} | "
                  f"{len(leads)} of {len(nonfinite)}{median} "
                  f"| {sum(bool(alarms[id(r)]) for r in other)} of {len(other)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, nargs="+", help="instability runs (default: fit and held out)")
    parser.add_argument("--digits", type=Path, nargs="*", default=DIGITS)
    args = parser.parse_args()
    paths = {p.name: p for p in args.results} if args.results else GPT_RUNS
    gpt_tables(paths)
    for path in args.digits:
        digits_table(path)


if __name__ == "__main__":
    main()
