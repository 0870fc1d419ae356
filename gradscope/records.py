"""The records the rules read: a history (the long table of ``gradscope.history``), the layer
table and, from ``gradscope.diagnose``, the model's structure; with the views rules share (one
column per layer, forward order, leaf layers, the activation after each weight layer)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import pandas as pd

from gradscope.layers import family_of_type, is_weight_type, leaf_layers, weight_spans
from gradscope.probe import Dynamics
from gradscope.structure import ModelStructure

RECENT_STEPS = 5
"""Rules that judge a run's current state look at this many of its latest logged steps."""


@dataclass(frozen=True)
class Records:
    """The records rules read: the long history table, the layer table and, from
    ``gradscope.diagnose``, the model's structure (None for a monitor's history).

    ``history`` has columns step, layer, metric, value; ``layers`` has layer, type, kind
    (parameter, module, activation), order (forward order) and, for parameters, trainable.
    """

    history: pd.DataFrame
    layers: pd.DataFrame
    structure: ModelStructure | None = None
    dynamics: Dynamics | None = None
    """What ``diagnose``'s recipe probe measured (None without one)."""
    pulse: pd.DataFrame | None = None
    """A monitored training run's every-step loss and gradient norm (``Recorder.pulse_history``:
    step, loss, grad_norm, z_loss, z_grad, alarm, skipped, …); None outside a training run."""
    events: tuple = ()
    """A monitored run's spike events as dicts (``SpikeEvent.to_dict()`` plus its ``text``)."""

    @cached_property
    def steps(self) -> list[int]:
        return sorted(int(s) for s in self.history["step"].unique())

    @cached_property
    def recent_steps(self) -> list[int]:
        return self.steps[-RECENT_STEPS:]

    def wide(self, metric: str, recent: bool = False) -> pd.DataFrame:
        """One row per logged step (only the recent ones if ``recent``), one column per layer,
        for ``metric`` (NaN where absent)."""
        steps = self.recent_steps if recent else self.steps
        rows = self.history[self.history["metric"] == metric]
        if recent and len(steps) < len(self.steps):
            rows = rows[rows["step"] >= steps[0]]
        if rows.empty:
            return pd.DataFrame(index=pd.Index(steps, name="step"))
        table = rows.pivot_table(index="step", columns="layer", values="value", aggfunc="last",
                                 dropna=False)
        return table.reindex(steps)

    @cached_property
    def types(self) -> dict[str, str]:
        return dict(zip(self.layers["layer"], self.layers["type"]))

    @cached_property
    def depth_order(self) -> list[str]:
        """Module and activation layers in forward order."""
        frame = self.layers[self.layers["kind"] != "parameter"].sort_values("order")
        return list(frame["layer"])

    @cached_property
    def leaves(self) -> list[str]:
        """Layers in forward order that contain no other module: the chain the signal runs
        through (functional activations are leaves; the root only when it is alone)."""
        return leaf_layers(self.depth_order)

    def preceding_weight_layer(self, layer: str) -> str | None:
        """The last Linear/Conv layer that ran before ``layer`` in forward order."""
        names = self.depth_order
        if layer not in names:
            return None
        for name in reversed(names[:names.index(layer)]):
            if is_weight_type(self.types.get(name, "")):
                return name
        return None

    @cached_property
    def activations_after(self) -> dict[str, str | None]:
        """Each weight layer and the activation layer that follows it in forward order (None where
        the next weight layer comes first), classified by recorded type (``gradscope.layers``)."""
        spans = weight_spans(self.depth_order, lambda n: is_weight_type(self.types.get(n, "")),
                             lambda n: family_of_type(self.types.get(n, "")))
        return {s.weight: s.activation for s in spans}
