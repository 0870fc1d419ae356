"""Hand-made records for rule tests: a history in the monitor's long format."""

from __future__ import annotations

import pandas as pd

from gradscope.records import Records


def make_records(values: dict[tuple[int, str, str], float], types: dict[str, str], structure=None,
                 dynamics=None) -> Records:
    """``values``: {(step, layer, metric): value}; ``types``: layer → type, in forward order
    (parameter layers are those with a "." suffix of weight/bias)."""
    history = pd.DataFrame(
        [(s, layer, metric, v) for (s, layer, metric), v in values.items()],
        columns=["step", "layer", "metric", "value"],
    )
    rows = []
    for i, (layer, type_name) in enumerate(types.items()):
        is_param = layer.endswith((".weight", ".bias"))
        kind = "parameter" if is_param else ("activation" if type_name in ("ReLU", "Tanh", "Sigmoid") else "module")
        rows.append({"layer": layer, "type": type_name, "kind": kind, "trainable": is_param, "order": i})
    return Records(history, pd.DataFrame(rows), structure, dynamics)
