"""reinit's weight statistics against the He and Xavier formulas (float64), for the activation that
runs after each layer in the forward; tied and embedding weights stay as they were."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import gradscope
from gradscope import UsageError
from gradscope.fixes import reinit


def _std(weight: torch.Tensor) -> float:
    return weight.detach().double().std().item()


def he_std(fan_in: int, slope: float = 0.0) -> float:
    return math.sqrt(2 / ((1 + slope ** 2) * fan_in))


def xavier_std(fan_in: int, fan_out: int, gain: float = 1.0) -> float:
    return gain * math.sqrt(2 / (fan_in + fan_out))


def test_auto_picks_he_before_relu_and_xavier_before_tanh_sigmoid_and_output():
    model = nn.Sequential(
        nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 384), nn.Tanh(),
        nn.Linear(384, 256), nn.Sigmoid(), nn.Unflatten(1, (256, 1)), nn.Conv1d(256, 128, 1),
        nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(128, 64),
    )
    chosen = reinit(model, torch.randn(4, 512), generator=torch.Generator().manual_seed(0))
    assert chosen == {"0": "kaiming(relu)", "2": "xavier(tanh)", "4": "xavier(sigmoid)",
                      "7": "kaiming(leaky_relu)", "10": "xavier(linear)"}
    expected_std = {
        "0": he_std(512),
        "2": xavier_std(512, 384, 5 / 3),
        "4": xavier_std(384, 256),
        "7": he_std(256, 0.2),
        "10": xavier_std(128, 64),
    }
    for name, std in expected_std.items():
        layer = model.get_submodule(name)
        assert _std(layer.weight) == pytest.approx(std, rel=0.03), name
        assert abs(layer.weight.double().mean().item()) < 0.1 * std
        assert torch.count_nonzero(layer.bias) == 0


class _RegisteredOutOfOrder(nn.Module):
    """Registers its output layer first and its activation last, as T5's feed-forward does, and
    calls one activation as a function."""

    def __init__(self) -> None:
        super().__init__()
        self.out = nn.Linear(256, 256)
        self.inner = nn.Linear(256, 256)
        self.gate = nn.Linear(256, 256)
        self.act = nn.Tanh()

    def forward(self, x):
        return self.out(F.relu(self.gate(self.act(self.inner(x)))))


def test_the_activation_is_the_one_that_runs_after_the_layer_not_the_next_registered():
    model = _RegisteredOutOfOrder()
    chosen = reinit(model, torch.randn(4, 256), generator=torch.Generator().manual_seed(0))
    assert chosen == {"inner": "xavier(tanh)", "gate": "kaiming(relu)", "out": "xavier(linear)"}
    assert _std(model.inner.weight) == pytest.approx(xavier_std(256, 256, 5 / 3), rel=0.03)
    assert _std(model.gate.weight) == pytest.approx(he_std(256), rel=0.03)
    assert _std(model.out.weight) == pytest.approx(xavier_std(256, 256), rel=0.03)


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


def _t5(transformers):
    config = transformers.T5Config(vocab_size=100, d_model=64, d_kv=16, d_ff=256, num_layers=2, num_heads=4,
                                   decoder_start_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(config)
    ids = torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(0))
    return model, {"input_ids": ids, "decoder_input_ids": ids}


def test_t5_gets_he_before_its_relu_and_keeps_its_tied_embedding(transformers):
    model, inputs = _t5(transformers)
    embeddings = {name: p.detach().clone() for name, p in model.named_parameters()
                  if isinstance(model.get_submodule(name.rpartition(".")[0]), nn.Embedding)}
    modes = {name: m.training for name, m in model.named_modules()}
    chosen = reinit(model, inputs, generator=torch.Generator().manual_seed(0))

    assert chosen["lm_head"].startswith("kept(tied to shared")
    for name, before in embeddings.items():  # the shared table and the relative attention biases
        assert torch.equal(model.get_parameter(name), before), name
    assert model.lm_head.weight is model.shared.weight
    assert {name: m.training for name, m in model.named_modules()} == modes
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and name != "lm_head"}
    assert set(chosen) == set(linears) | {"lm_head"}
    for name, layer in linears.items():
        fan_out, fan_in = layer.weight.shape
        # T5 registers wi, wo, dropout, act: the ReLU runs after wi, nothing after wo
        expected = he_std(fan_in) if name.endswith(".wi") else xavier_std(fan_in, fan_out)
        assert chosen[name] == ("kaiming(relu)" if name.endswith(".wi") else "xavier(linear)"), name
        assert _std(layer.weight) == pytest.approx(expected, rel=0.1), name


def test_tied_weights_are_reinitialised_only_when_asked(transformers):
    model, inputs = _t5(transformers)
    before = model.shared.weight.detach().clone()
    chosen = reinit(model, inputs, tied=True, generator=torch.Generator().manual_seed(0))
    assert chosen["lm_head"] == "xavier(linear)"
    assert not torch.equal(model.shared.weight, before)
    assert _std(model.shared.weight) == pytest.approx(xavier_std(64, 100), rel=0.1)


def test_the_forward_changes_nothing_but_the_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 2))
    model[3].eval()
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    inputs = torch.randn(8, 16)
    state = torch.random.get_rng_state()
    reinit(model, inputs)
    after_state = torch.random.get_rng_state()
    assert all(torch.equal(b, buffers[name]) for name, b in model.named_buffers())
    assert model.training and model[1].training and not model[3].training  # BatchNorm stats not updated
    # the draws are the init's alone: the same as initialising the two layers directly
    torch.random.set_rng_state(state)
    expected = [torch.empty(16, 16), torch.empty(2, 16)]
    nn.init.kaiming_normal_(expected[0], nonlinearity="relu")
    nn.init.xavier_normal_(expected[1])
    assert torch.equal(model[0].weight, expected[0]) and torch.equal(model[4].weight, expected[1])
    assert torch.equal(torch.random.get_rng_state(), after_state)


def test_forced_scheme():
    model = nn.Sequential(nn.Linear(400, 400), nn.Tanh(), nn.Linear(400, 2))
    assert reinit(model, torch.randn(2, 400), "kaiming") == {"0": "kaiming(relu)", "2": "kaiming(relu)"}
    assert _std(model[0].weight) == pytest.approx(he_std(400), rel=0.03)


def test_unknown_scheme():
    with pytest.raises(UsageError, match="Expected `scheme` to be one of auto, kaiming, xavier but got 'he'"):
        reinit(nn.Linear(2, 2), torch.randn(1, 2), "he")


def test_inputs_the_model_rejects():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(5, 1))
    with pytest.raises(gradscope.ModelError, match=r"forward raised at module '2': RuntimeError: .*Pass inputs"):
        reinit(model, torch.randn(3, 4))


class Conv1D(nn.Module):
    """Hugging Face's GPT-2 linear layer as it is written there: the weight held as (in, out)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.02)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(*x.shape[:-1], -1)


def test_a_layer_holding_its_weight_as_in_out_gets_the_std_of_its_own_fan_in():
    torch.manual_seed(0)
    model = nn.Sequential(Conv1D(1024, 64), nn.ReLU(), Conv1D(64, 1024))
    chosen = reinit(model, torch.randn(4, 64), generator=torch.Generator().manual_seed(0))
    assert chosen == {"0": "kaiming(relu)", "2": "xavier(linear)"}
    # fan-in 64 for the first (not its 1024 outputs), 1024 for the second
    assert _std(model[0].weight) == pytest.approx(he_std(64), rel=0.03)
    assert _std(model[2].weight) == pytest.approx(xavier_std(1024, 64), rel=0.03)
