"""The depth trend: geometric decay counts, one large jump does not."""

from __future__ import annotations

import numpy as np
import pytest

from gradscope.rules import run_rules
from gradscope.rules.profile import signal_profile, theil_sen_change
from tests.rules.records import make_records


def profile_records(log_signal: list[float], type_at: dict[int, str] | None = None):
    type_at = type_at or {}
    types = {f"l{i}": type_at.get(i, "Linear") for i in range(len(log_signal))}
    values = {(0, f"l{i}", "out_grad_norm"): 10.0 ** y for i, y in enumerate(log_signal)}
    return make_records(values, types)


def test_theil_sen_of_a_line_is_its_total_change():
    assert theil_sen_change(np.linspace(-6, 0, 13)) == pytest.approx(6.0)


def test_geometric_decay_is_vanishing():
    records = profile_records(list(np.linspace(-5, 0, 20)))
    assert signal_profile(records).rise == pytest.approx(5.0)
    assert [f.rule for f in run_rules(records)] == ["vanishing-gradient"]


def test_layers_whose_signal_underflowed_to_zero_are_counted_as_vanished():
    """A decay that reaches 0 in float32 leaves exact zeros nearer the input: out of the trend (no
    log of 0), but counted among the layers that receive nothing."""
    log_signal = [-np.inf] * 30 + list(np.linspace(-20, 0, 20))  # 10 ** -inf == 0.0
    records = profile_records(log_signal)
    profile = signal_profile(records)
    assert len(profile.layers) == 20 and profile.zero_input_side == tuple(f"l{i}" for i in range(30))
    finding = run_rules(records)[0]
    assert finding.rule == "vanishing-gradient" and finding.evidence["layers_with_zero_signal"] == 30
    assert "and 30 layers nearer the input receive exactly 0 (it underflowed)" in finding.message
    assert finding.layers[:30] == [f"l{i}" for i in range(30)]


def test_a_single_pooling_jump_of_four_orders_is_not_vanishing():
    # a flat profile with one 4-order step at a pooling layer in the middle
    logs = [-4.0] * 10 + [0.0] * 10
    records = profile_records(logs, {10: "AdaptiveAvgPool2d"})
    profile = signal_profile(records)
    assert profile.trend > 4 and profile.quarters > 4  # as measured, the step looks like a trend
    assert profile.adjusted_trend == 0 and profile.adjusted_quarters == 0  # but a pooling made it
    assert profile.rise == 0
    assert run_rules(records) == []


def test_the_same_jump_at_a_linear_layer_counts():
    logs = [-4.0] * 10 + [0.0] * 10
    assert [f.rule for f in run_rules(profile_records(logs))] == ["vanishing-gradient"]


def test_embedding_and_norm_outliers_at_the_ends_do_not_count():
    rng = np.random.default_rng(0)
    logs = list(rng.normal(0, 0.3, 24))
    logs[0] = -5.0  # the embedding's output
    logs[-1] = 4.0  # a final norm
    assert run_rules(profile_records(logs)) == []


def test_alternating_norm_and_weight_layers_are_flat():
    logs = [(-1.5 if i % 2 else 0.5) for i in range(30)]
    assert run_rules(profile_records(logs)) == []


def test_growth_toward_the_input_is_exploding():
    records = profile_records(list(np.linspace(6, 0, 12)))
    assert [f.rule for f in run_rules(records)] == ["exploding-gradient"]


def test_too_few_layers_make_no_trend():
    assert signal_profile(profile_records([-9.0, -6.0, 0.0])) is None
