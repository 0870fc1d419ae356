"""reinit's weight statistics against the He and Xavier formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from gradscope import UsageError
from gradscope.fixes import reinit


def test_auto_picks_he_before_relu_and_xavier_before_tanh_sigmoid_and_output():
    model = nn.Sequential(
        nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 384), nn.Tanh(),
        nn.Linear(384, 256), nn.Sigmoid(), nn.Conv1d(256, 128, 3), nn.LeakyReLU(0.2), nn.Linear(128, 64),
    )
    chosen = reinit(model, generator=torch.Generator().manual_seed(0))
    assert chosen == {"0": "kaiming(relu)", "2": "xavier(tanh)", "4": "xavier(sigmoid)",
                      "6": "kaiming(leaky_relu)", "8": "xavier(linear)"}
    expected_std = {
        "0": math.sqrt(2 / 512),
        "2": 5 / 3 * math.sqrt(2 / (512 + 384)),
        "4": math.sqrt(2 / (384 + 256)),
        "6": math.sqrt(2 / (1 + 0.2 ** 2)) / math.sqrt(256 * 3),
        "8": math.sqrt(2 / (128 + 64)),
    }
    for name, std in expected_std.items():
        layer = model.get_submodule(name)
        w = layer.weight.detach().double()
        assert w.std().item() == pytest.approx(std, rel=0.03), name
        assert abs(w.mean().item()) < 0.1 * std
        assert torch.count_nonzero(layer.bias) == 0


def test_forced_scheme():
    model = nn.Sequential(nn.Linear(400, 400), nn.Tanh(), nn.Linear(400, 2))
    assert reinit(model, "kaiming") == {"0": "kaiming(relu)", "2": "kaiming(relu)"}
    assert model[0].weight.std().item() == pytest.approx(math.sqrt(2 / 400), rel=0.03)


def test_unknown_scheme():
    with pytest.raises(UsageError, match="Expected `scheme` to be one of auto, kaiming, xavier but got 'he'"):
        reinit(nn.Linear(2, 2), "he")
