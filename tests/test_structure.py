"""The structure probe: PyTorch's default init told apart from inits of the same scale, weights
shared between modules, post-LN norms read off the autograd graph, and activation functions named
as a monitor names them."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import gradscope
from gradscope.structure import StructureProbe, is_default_init
from tests.zoo import ResNet


def _structure(model: nn.Module, *inputs, functional: bool = False):
    with StructureProbe(model, functional=functional) as probe:
        loss = model(*inputs).float().pow(2).sum()
    return probe.structure(loss, batch_size=None)


@pytest.mark.parametrize("make", [
    lambda: nn.Linear(64, 32).weight,
    lambda: nn.Conv2d(8, 16, 3).weight,
    lambda: nn.Linear(64, 32).to(torch.bfloat16).weight,
    lambda: nn.init.kaiming_uniform_(torch.empty(128, 96), a=math.sqrt(5)),
])
def test_pytorch_default_init_is_recognised(make):
    torch.manual_seed(0)
    assert is_default_init(make())


@pytest.mark.parametrize("make", [
    lambda: torch.randn(32, 64) / math.sqrt(3 * 64),  # the default's std, normal
    lambda: nn.init.trunc_normal_(torch.empty(32, 64), std=0.02),  # a ViT's
    lambda: torch.randn(32, 64) / math.sqrt(64),  # T5's
    lambda: nn.init.uniform_(torch.empty(32, 64), -0.5 / 8, 0.5 / 8),  # uniform, half the bound
    lambda: nn.init.kaiming_uniform_(torch.empty(32, 64), nonlinearity="relu"),  # uniform, He's bound
])
def test_other_inits_of_similar_scale_are_not_the_default(make):
    torch.manual_seed(0)
    assert not is_default_init(make())


class TiedHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.body = nn.Linear(8, 8)
        self.alias = self.body  # the same module under a second name: not a tie
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(torch.relu(self.body(self.embed(ids))))


def test_weights_held_by_other_modules_are_named():
    layers = {w.name: w for w in _structure(TiedHead(), torch.randint(0, 20, (2, 3))).weight_layers}
    assert layers["head"].tied_to == ["embed"]
    assert layers["body"].tied_to == []


def _encoder(norm_first: bool, final_norm: bool) -> nn.Module:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, norm_first=norm_first)
    embed = nn.Linear(16, 16)  # the residual stream starts inside the graph
    return nn.Sequential(embed, nn.TransformerEncoder(layer, 3, norm=nn.LayerNorm(16) if final_norm else None,
                                                      enable_nested_tensor=False))


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")
def test_post_ln_is_the_norm_after_every_sum_not_the_final_norm_of_a_pre_ln_stack():
    x = torch.randn(2, 5, 16)
    assert _structure(_encoder(norm_first=True, final_norm=True), x).post_ln == []
    post_ln = _structure(_encoder(norm_first=False, final_norm=False), x).post_ln
    assert sorted(post_ln) == sorted(f"1.layers.{i}.norm{j}" for i in range(3) for j in (1, 2))


def test_activation_functions_are_named_as_the_monitor_names_them():
    torch.manual_seed(0)
    model, images = ResNet(blocks=2, channels=4), torch.randn(2, 3, 8, 8)
    weight_layers = _structure(model, images, functional=True).weight_layers
    with gradscope.monitor(model) as mon:
        model(images).pow(2).sum().backward()
        mon.step()
    monitor_types = dict(zip(mon.layers["layer"], mon.layers["type"]))
    after = {w.name: w.activation_layer for w in weight_layers}
    assert after["blocks.0.conv1"] == "blocks.0:relu#0" and after["blocks.0.conv2"] == "blocks.0:relu#1"
    assert all(monitor_types[name] == "functional relu" for name in after.values() if name and ":" in name)


class SharedActivation(nn.Module):
    """One nn.ReLU module called after every layer, as many models write it."""

    def __init__(self) -> None:
        super().__init__()
        self.fcs = nn.ModuleList([nn.Linear(8, 8) for _ in range(4)])
        self.norms = nn.ModuleList([nn.LayerNorm(8) for _ in range(4)])
        self.act = nn.ReLU()

    def forward(self, x):
        for fc, norm in zip(self.fcs, self.norms):
            x = self.act(norm(fc(x)))
        return x


def test_a_shared_activation_module_follows_every_layer_it_is_called_after():
    report = gradscope.diagnose(SharedActivation(), torch.randn(16, 8), probe_steps=0)
    layers = report.structure.weight_layers
    assert [(w.name, w.activation, w.activation_layer, w.normalized) for w in layers] == [
        (f"fcs.{i}", "relu", "act", True) for i in range(4)]
