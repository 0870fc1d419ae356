"""PseudoNorm's backward against a hand computation, and insert_pseudo_norm."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from gradscope import UsageError
from gradscope.fixes import PseudoNorm, insert_pseudo_norm, pseudo_norm


def test_forward_is_the_identity():
    x = torch.randn(3, 4, dtype=torch.float64)
    assert torch.equal(PseudoNorm()(x), x)


def test_backward_divides_by_the_rms_of_the_whole_gradient():
    x = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    upstream = torch.tensor([[1.0, -2.0, 2.0], [0.0, 4.0, -4.0]], dtype=torch.float64)
    (pseudo_norm(x) * upstream).sum().backward()
    rms = math.sqrt((1 + 4 + 4 + 0 + 16 + 16) / 6 + 1e-12)
    assert torch.allclose(x.grad, upstream / rms, rtol=0, atol=1e-15)
    assert x.grad.pow(2).mean().item() == pytest.approx(1.0, rel=1e-9)


def test_per_sample_divides_each_sample_by_its_own_rms():
    x = torch.zeros(2, 2, dtype=torch.float64, requires_grad=True)
    upstream = torch.tensor([[3.0, 4.0], [0.1, 0.0]], dtype=torch.float64)
    (PseudoNorm(per_sample=True, eps=1e-30)(x) * upstream).sum().backward()
    rows = [math.sqrt((9 + 16) / 2), math.sqrt(0.01 / 2)]
    expected = torch.stack([upstream[0] / rows[0], upstream[1] / rows[1]])
    assert torch.allclose(x.grad, expected, rtol=1e-12, atol=0)


def test_zero_gradient_stays_zero_and_half_precision_keeps_its_dtype():
    x = torch.zeros(4, requires_grad=True)
    (pseudo_norm(x) * 0).sum().backward()
    assert torch.equal(x.grad, torch.zeros(4))
    h = torch.zeros(4, dtype=torch.bfloat16, requires_grad=True)
    (pseudo_norm(h) * torch.tensor([1e-3, 0, 0, 0], dtype=torch.bfloat16)).sum().backward()
    assert h.grad.dtype == torch.bfloat16 and h.grad[0].item() == pytest.approx(2.0, rel=1e-2)


def test_deep_tanh_stack_gets_unit_rms_signal_after_each_pseudo_norm():
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(8) for m in (nn.Linear(16, 16), nn.Tanh())]).double()
    names = insert_pseudo_norm(model, every=2)
    assert names == ["3", "7", "11", "15"]
    arriving = {}  # gradient w.r.t. each wrapped Tanh's output = what its PseudoNorm passes back

    def keep(name):
        def hook(module, args, out):
            out.register_hook(lambda g: arriving.__setitem__(name, g))
        return hook

    for name in names:
        model.get_submodule(name)[0].register_forward_hook(keep(name))
    x = torch.randn(32, 16, dtype=torch.float64, requires_grad=True)
    (model(x) * torch.randn(32, 16, dtype=torch.float64)).sum().backward()
    for name in names:
        assert arriving[name].pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=1e-9)


def test_insert_pseudo_norm_keeps_state_dict_keys():
    model = nn.Sequential(nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    keys = list(model.state_dict())
    assert insert_pseudo_norm(model, every=1) == ["1", "3"]
    assert list(model.state_dict()) == keys
    assert isinstance(model[3][1], PseudoNorm)


@pytest.mark.parametrize("every", [0, -1, 1.5, True])
def test_insert_pseudo_norm_rejects_bad_every(every):
    with pytest.raises(UsageError, match="Expected `every` to be a positive int"):
        insert_pseudo_norm(nn.Tanh(), every=every)


def test_pseudo_norm_rejects_integer_tensors():
    with pytest.raises(UsageError, match="floating-point tensor"):
        pseudo_norm(torch.arange(3))
