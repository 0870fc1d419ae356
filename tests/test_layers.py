"""The layer vocabulary: module families, names built and parsed, leaves, and the same fix text
from a monitor's history and from diagnose."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import gradscope
from gradscope import layers
from gradscope.rules.example_models import stack, x64


@pytest.mark.parametrize("module, family", [
    (nn.ReLU(), "relu"), (nn.ReLU6(), "relu"), (nn.LeakyReLU(), "relu"), (nn.GELU(), "relu"),
    (nn.SiLU(), "relu"), (nn.Tanh(), "tanh"), (nn.Hardtanh(), "tanh"), (nn.Softsign(), "tanh"),
    (nn.Sigmoid(), "sigmoid"), (nn.Hardsigmoid(), "sigmoid"), (nn.Linear(2, 2), None), (None, None),
])
def test_module_and_type_name_give_the_same_family(module, family):
    assert layers.activation_family(module) == family
    if module is not None:
        assert layers.family_of_type(type(module).__name__) == family


def test_functional_types_follow_the_capture_kinds():
    for kind in layers.KINDS:
        assert layers.family_of_type(layers.functional_type(kind.name)) == kind.family
        assert kind.dead_units == (kind.family == "relu")
    assert layers.family_of_type("functional tanh") == "tanh"
    assert layers.family_of_type("Sequential") is None


def test_module_and_functional_kinds():
    assert layers.module_activation(nn.ReLU6()).name == "relu6"  # not its base class Hardtanh
    assert layers.module_activation(nn.Hardtanh(-2, 3)).bounds == (-2.0, 3.0)
    assert layers.module_activation(nn.GELU()) is None
    assert layers.FUNCTIONAL_ACTIVATIONS[F.hardtanh](torch.zeros(1), -3.0, 3.0).bounds == (-3.0, 3.0)
    assert layers.FUNCTIONAL_ACTIVATIONS[torch.Tensor.sigmoid](torch.zeros(1)).name == "sigmoid"


def test_weight_layers_norms_and_type_names():
    assert all(layers.is_weight_type(t.__name__) for t in layers.WEIGHT_LAYERS)
    assert layers.is_weight_type("Conv1D")  # Hugging Face's GPT-2 linear layer
    assert not layers.is_weight_type("ConvTranspose2d") and not layers.is_weight_type("ReLU")
    assert isinstance(nn.BatchNorm2d(4), layers.NORMS) and isinstance(nn.LayerNorm(4), layers.NORMS)
    assert isinstance(nn.BatchNorm1d(4), layers.BATCH_NORMS) and not isinstance(nn.LayerNorm(4), layers.BATCH_NORMS)


@pytest.mark.parametrize("module, function, index, name", [
    ("encoder.0", "relu", 0, "encoder.0:relu#0"), ("", "tanh", 1, "tanh#1"),
])
def test_functional_names_round_trip(module, function, index, name):
    assert layers.functional_layer_name(module, function, index) == name
    assert layers.is_functional(name) and layers.parent_layer(name) == module
    assert not layers.is_functional(module or "fc")


def test_parent_of_modules_and_parameters():
    assert layers.parent_layer("blocks.0.fc") == "blocks.0"
    assert layers.parent_layer("fc.weight") == "fc"
    assert layers.parent_layer("fc") == ""


def test_leaf_layers():
    names = ["block.fc", "block:relu#0", "block", "head", ""]
    assert layers.leaf_layers(names) == ["block.fc", "block:relu#0", "head"]
    assert layers.leaf_layers([""]) == [""]


class _GatedGELU(nn.Module):
    """Registered out of forward order, with a tanh-approximated GELU written out as functions
    (Hugging Face's ``NewGELUActivation``) and a ReLU called as a function."""

    def __init__(self) -> None:
        super().__init__()
        self.wo = nn.Linear(4, 1)
        self.wi = nn.Linear(4, 4)
        self.mid = nn.Linear(4, 4)
        self.act = NewGELUActivation()

    def forward(self, x):
        return self.wo(F.relu(self.mid(self.act(self.wi(x)))))


class NewGELUActivation(nn.Module):
    def forward(self, x):
        return 0.5 * x * (1.0 + torch.tanh(0.7978845608 * (x + 0.044715 * torch.pow(x, 3.0))))


def test_the_activation_after_a_layer_is_the_one_that_runs_after_it():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.GELU(), nn.Linear(4, 4), nn.Sigmoid(),
                          nn.Tanh(), nn.Linear(4, 1))
    from gradscope.structure import StructureProbe

    with StructureProbe(model) as probe:
        loss = model(torch.randn(8, 4)).sum()
    structure = probe.structure(loss, batch_size=8)
    assert [(w.name, w.activation, w.activation_type, w.normalized) for w in structure.weight_layers] == [
        ("0", "relu", "GELU", True), ("3", "sigmoid", "Sigmoid", False), ("6", None, None, False)]
    assert structure.bounded_activations == ["4", "5"]

    model = _GatedGELU()
    with StructureProbe(model, functional=True) as probe:
        model(torch.randn(8, 4))
    after = {w.name: (w.activation_layer, w.activation_type, w.activation)
             for w in probe.structure(None, batch_size=8).weight_layers}
    # the tanh inside the GELU module belongs to it; the ReLU after mid is a function call
    assert after == {"wi": ("act", "NewGELUActivation", "relu"), "mid": ("relu#0", "functional relu", "relu"),
                     "wo": (None, None, None)}


@pytest.mark.parametrize("type_name", ["GELUActivation", "NewGELUActivation", "SiLUActivation", "GELUTanh",
                                       "QuickGELUActivation", "MishActivation", "XIELUActivation"])
def test_activations_written_outside_torch_are_relu_family_by_name(type_name):
    assert layers.family_of_type(type_name) == "relu"
    assert layers.activation_family(type(type_name, (nn.Module,), {})()) == "relu"
    assert layers.family_of_type("LinearActivation") is None
    assert layers.family_of_type("GELUEncoder") is None  # a model named after its activation


def _vanishing_fix_parts(fix: str) -> list[str]:
    """The fix's paragraphs: each starts at an unindented line."""
    parts: list[str] = []
    for line in fix.splitlines():
        if line.startswith("    ") and parts:
            parts[-1] += "\n" + line
        else:
            parts.append(line)
    return parts


@pytest.mark.parametrize("activation, depth", [(nn.Sigmoid, 12), (nn.Tanh, 20), (nn.GELU, 20)])
def test_vanishing_fix_is_the_same_from_a_monitor_and_from_diagnose(activation, depth):
    torch.manual_seed(0)
    model, inputs = stack(depth, activation), x64()
    [diagnosed] = [f for f in gradscope.diagnose(model, inputs).findings if f.rule == "vanishing-gradient"]
    with gradscope.monitor(model) as mon:
        model(inputs).pow(2).mean().backward()
        mon.step()
    [monitored] = [f for f in mon.findings() if f.rule == "vanishing-gradient"]
    diagnosed_parts = _vanishing_fix_parts(diagnosed.fix)
    monitored_parts = _vanishing_fix_parts(monitored.fix)
    # Both classify the activation after each weight layer through gradscope.layers, so every
    # paragraph carries the same code for the same layers. The prose differs only where diagnose
    # knows more: the effective depth read off the autograd graph ("The shortest gradient path
    # crosses N weight layers" where a history can only say "If these layers have no skip
    # connections") and the init it measured ("The layers before ReLU keep PyTorch's default
    # init" where a history can only say "Use He init for the layers before ReLU"; diagnose names
    # the activation as it ran, GELU).
    assert [_code(p) for p in diagnosed_parts] == [_code(p) for p in monitored_parts]
    only_diagnose = ("The shortest gradient path", f"The layers before {activation.__name__} keep")
    only_monitor = ("If these layers have no skip", "Use He init for the layers before ReLU")
    assert [p for p in diagnosed_parts if not p.startswith(only_diagnose)] == [
        p for p in monitored_parts if not p.startswith(only_monitor)]
    assert sum(p.startswith(f"The shortest gradient path crosses {depth + 1} weight layers")
               for p in diagnosed_parts) == 1


def _code(paragraph: str) -> list[str]:
    return [line for line in paragraph.splitlines() if line.startswith("    ")]
