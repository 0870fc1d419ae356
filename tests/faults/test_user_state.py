"""``gradscope.diagnose`` hands the user's objects back as it found them: the gradient tensors are
the same Python objects with the same values, and the Python and numpy global random states are
where they were, even when the model draws from them."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn as nn

import gradscope


class Jittery(nn.Module):
    """Draws from Python's and numpy's global generators in forward, as augmentation code does."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))

    def forward(self, x):
        scale = 1.0 + 0.01 * random.random() + 0.01 * float(np.random.rand())
        return self.body(x) * scale


@pytest.mark.parametrize("steps", [1, 3])
def test_diagnose_restores_the_gradient_objects_and_values(steps):
    model = Jittery()
    model(torch.randn(4, 6)).sum().backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    values = {name: g.clone() for name, g in grads.items()}
    model.body[2].bias.grad = None  # a parameter without a gradient stays without one
    gradscope.diagnose(model, torch.randn(8, 6), steps=steps)
    for name, p in model.named_parameters():
        if name == "body.2.bias":
            assert p.grad is None
            continue
        assert p.grad is grads[name]
        torch.testing.assert_close(p.grad, values[name], rtol=0, atol=0)


def test_diagnose_restores_python_and_numpy_random_states():
    random.seed(5)
    np.random.seed(5)
    expected = (random.random(), float(np.random.rand()))
    random.seed(5)
    np.random.seed(5)
    gradscope.diagnose(Jittery(), torch.randn(8, 6), steps=2)
    assert (random.random(), float(np.random.rand())) == expected


def test_diagnose_restores_the_random_states_when_the_model_raises():
    class Failing(Jittery):
        def forward(self, x):
            random.random()
            np.random.rand()
            raise RuntimeError("boom")

    random.seed(7)
    np.random.seed(7)
    expected = (random.random(), float(np.random.rand()))
    random.seed(7)
    np.random.seed(7)
    with pytest.raises(gradscope.UsageError, match="RuntimeError: boom"):
        gradscope.diagnose(Failing(), torch.randn(8, 6))
    assert (random.random(), float(np.random.rand())) == expected
