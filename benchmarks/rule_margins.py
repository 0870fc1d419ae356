"""The margins behind the rules' thresholds: on every healthy and broken model of the test zoo,
the measured depth trend of the backpropagated signal, the worst dead-unit fraction and the worst
saturation, next to the thresholds (3 orders, 50% dead, 30% saturated).

Run from the repository root: python benchmarks/rule_margins.py [--steps 1]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gradscope  # noqa: E402
from gradscope.layers import parent_layer  # noqa: E402
from gradscope.records import Records  # noqa: E402
from gradscope.rules.profile import signal_profile  # noqa: E402
from tests.zoo import BROKEN, HEALTHY  # noqa: E402


def measure(model, inputs, steps: int) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = gradscope.diagnose(model, inputs, steps=steps)
    profile = signal_profile(Records(report.history, _layers(report), report.structure))
    dead = report.layers["dead_fraction"].max()
    saturation = report.layers["saturation"].max()
    return {
        "rise": "n/a (<4 layers)" if profile is None else f"{profile.rise:+.1f}",
        "raw": "" if profile is None else f"{profile.trend:+.1f}",
        "dead": "" if np.isnan(dead) else f"{dead:.0%}",
        "sat": "" if np.isnan(saturation) else f"{saturation:.0%}",
        "findings": ", ".join(f.rule for f in report.findings) or "none",
    }


def _layers(report):
    # the rules read the monitor's layer table; rebuild it from the summary plus parameters
    import pandas as pd
    params = report.history[report.history.metric == "grad_norm"].layer.unique()
    rows = [{"layer": p, "type": report.layers.set_index("layer").type.get(parent_layer(p), ""),
             "kind": "parameter", "trainable": True} for p in params]
    frame = pd.concat([pd.DataFrame(rows), report.layers[["layer", "type", "kind"]]], ignore_index=True)
    frame["order"] = range(len(frame))
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1)
    args = parser.parse_args()
    print("| model | healthy | signal rise (orders, rule's estimate) | Theil–Sen as measured | worst dead | worst saturated | findings |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for healthy, zoo in ((True, HEALTHY), (False, {k: v[0] for k, v in BROKEN.items()})):
        for name, factory in zoo.items():
            torch.manual_seed(0)
            model, inputs = factory()
            m = measure(model, inputs, args.steps)
            print(f"| {name} | {'yes' if healthy else 'no'} | {m['rise']} | {m['raw']} | {m['dead']} | {m['sat']} | {m['findings']} |")


if __name__ == "__main__":
    main()
