"""gradscope's own detector on the runs of benchmarks/instability.py, scored like the peer rules.

The detector (gradscope.detectors.DetectorState, numpy arithmetic, as the monitor runs it on the
CPU) is replayed over each stored run's every-step loss and exact gradient norms (the monitor
reads a strided sample of each large gradient; the replay reads the stored exact norms), and the
first detection is scored with ``instability.score``: lead time before the run is lost, false
alarms on the runs that are never lost. Replaying takes seconds; no training.

Run: python benchmarks/instability_gradscope.py [--thresholds 6 8 10]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from instability import first_moving, load, score  # noqa: E402

from gradscope.detectors import Detector, DetectorState  # noqa: E402
from gradscope.events import attribute  # noqa: E402
from gradscope.pulse import FIRST_PARAMETER  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "instability_traces.npz"


def replay(run, detector: Detector) -> tuple[list[int], tuple]:
    """Steps with an alarm, and the attribution (parameter, step it left its band, ratio) of the
    first one."""
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
            fired.append(t)
    return fired, attributed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[6.0, 8.0, 10.0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    runs, _ = load(args.results)
    for threshold in args.thresholds:
        print(f"\n### zscore, threshold {threshold:g} (window 100, warmup 50)\n")
        print("| lr | seed | lost at | first alarm | lead | alarms | attributed (left band at) | first-moving (step) |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for run in runs:
            fired, (layer, left_at, _) = replay(run, Detector("zscore", threshold=threshold))
            s = score(run, fired)
            truth, truth_step = first_moving(run)
            print(f"| {run.lr:g} | {run.seed} | {s['lost'] if s['lost'] is not None else 'never'} | "
                  f"{s['first'] if s['first'] is not None else 'none'} | "
                  f"{s['lead'] if s['lead'] is not None else '–'} | {len(fired)} | "
                  f"{layer or '–'} ({left_at if left_at is not None else '–'}) | {truth} ({truth_step}) |")


if __name__ == "__main__":
    main()
