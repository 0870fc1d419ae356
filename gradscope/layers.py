"""The layer vocabulary, written once: which modules are weight layers, normalisations and
activations of which family; which activations capture tracks and how it judges them; how layer
names are built and parsed.

Capture (hooks), the structure probe, the rules, the fixes and the reporters all read it, so a
model's layers are classified the same way whether the evidence is a live module or a type name in
a monitor's history.

>>> activation_family(nn.GELU()), family_of_type("Tanh"), family_of_type("functional sigmoid")
('relu', 'tanh', 'sigmoid')
>>> name = functional_layer_name("encoder.0", "relu", 1)
>>> name, is_functional(name), parent_layer(name)
('encoder.0:relu#1', True, 'encoder.0')
"""

from __future__ import annotations

import re

from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# Module types

WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Bilinear)
"""Layers that apply a weight matrix whose init the rules judge and ``reinit`` sets (transposed
convolutions are left alone)."""

NORMS = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)

RELU, TANH, SIGMOID = "relu", "tanh", "sigmoid"
FAMILIES: dict[str, tuple[type[nn.Module], ...]] = {
    RELU: (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Mish, nn.ELU, nn.SELU, nn.CELU,
           nn.PReLU),
    SIGMOID: (nn.Sigmoid, nn.Hardsigmoid),
    TANH: (nn.Tanh, nn.Hardtanh, nn.Softsign),
}
"""Activation modules by family. Checked in this order: ReLU6 is a subclass of Hardtanh."""

TRANSPOSED_WEIGHT_TYPES = frozenset({"Conv1D"})
"""Weight layers written outside torch that hold their weight as (in, out) and compute
``x @ weight``: Hugging Face's ``Conv1D``, the linear layer of GPT-2, GPT and their kin. They are
weight layers like ``nn.Linear``, with the fans the other way round."""

_WEIGHT_TYPE_NAMES = frozenset(t.__name__ for t in WEIGHT_LAYERS) | TRANSPOSED_WEIGHT_TYPES


def is_weight_type(type_name: str) -> bool:
    """Whether a recorded layer type (``"Linear"``, ``"Conv2d"``, ``"Conv1D"`` …) is a weight layer."""
    return type_name in _WEIGHT_TYPE_NAMES


def is_weight_layer(module: object) -> bool:
    """Whether ``module`` is a weight layer: one of :data:`WEIGHT_LAYERS`, or a layer of
    :data:`TRANSPOSED_WEIGHT_TYPES` holding a 2-D weight.

    >>> is_weight_layer(nn.Linear(3, 4)), is_weight_layer(nn.LayerNorm(4))
    (True, False)
    """
    if isinstance(module, WEIGHT_LAYERS):
        return True
    weight = getattr(module, "weight", None)
    return type(module).__name__ in TRANSPOSED_WEIGHT_TYPES and isinstance(weight, torch.Tensor) \
        and weight.dim() == 2


def weight_fans(module: nn.Module) -> tuple[int, int]:
    """(fan-in, fan-out) of a weight layer's weight: inputs and outputs per unit, a convolution's
    kernel counted in its fan-in; an (in, out) weight of :data:`TRANSPOSED_WEIGHT_TYPES` read the
    other way round.

    >>> weight_fans(nn.Linear(3, 4)), weight_fans(nn.Conv2d(3, 8, 5))
    ((3, 4), (75, 8))
    """
    weight = module.weight
    if type(module).__name__ in TRANSPOSED_WEIGHT_TYPES:
        return int(weight.shape[0]), int(weight.shape[1])
    if weight.dim() < 2:
        return int(weight.numel()), int(weight.numel())
    return int(weight[0].numel()), int(weight.shape[0])


_NORM_TYPE = re.compile(r"(?<!No)(?<!Pseudo)(?<!Spectral)(?<!Weight)(?<!Grad)Norm(alization)?(?![a-z])")
"""``Norm`` as a word of a class name (not ``Normal``), not the name of something that
normalises no forward signal: MobileBERT's ``NoNorm`` (an elementwise affine), gradscope's
``PseudoNorm`` (rescales the backward gradient only), weight reparametrisations, gradient
normalisers."""


def is_norm_type(type_name: str) -> bool:
    """Whether a recorded layer type is a normalisation: torch's (``"LayerNorm"``,
    ``"BatchNorm2d"`` …) and the many written elsewhere, named ``…Norm`` by convention
    (``"LlamaRMSNorm"``, ``"T5LayerNorm"``, ``"FrozenBatchNorm2d"``, timm's ``"BatchNormAct2d"``
    and ``"EvoNorm2dB0"``, diffusers' ``"AdaLayerNormZero"``). ``"NormalNet"``, ``"NoNorm"`` and
    ``"GradNormHook"`` are none.

    >>> [is_norm_type(n) for n in ("LlamaRMSNorm", "BatchNorm2d", "AdaLayerNormZero", "NormalNet", "NoNorm")]
    [True, True, True, False, False]
    """
    return _NORM_TYPE.search(type_name) is not None


def is_embedding_type(type_name: str) -> bool:
    """Whether a recorded layer type is an embedding table (``"Embedding"``, ``"EmbeddingBag"``,
    ``"BertEmbeddings"``)."""
    return "Embedding" in type_name


PASS_THROUGH_TYPES = frozenset({"Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout",
                                "FeatureAlphaDropout", "Identity", "Flatten", "Unflatten"})
"""Layer types that pass the signal through unchanged (up to dropout's mask): they add no depth."""


def is_pass_through_type(type_name: str) -> bool:
    """Whether a recorded layer type passes the signal through (``"Dropout"``, ``"Identity"`` …)."""
    return type_name in PASS_THROUGH_TYPES


def parameter_kind(name: str) -> str:
    """The last part of a parameter's name: ``"blocks.0.fc.bias"`` → ``"bias"``."""
    return name.rpartition(".")[2]


RELU_LIKE_NAMES = ("ReLU", "GELU", "SiLU", "Swish", "Mish", "ELU")
ACTIVATION_SUFFIXES = ("Activation", "GELUTanh")
"""Activation classes written outside torch count as ReLU-family when their name ends as
Hugging Face's do and holds one of ``RELU_LIKE_NAMES``: ``"GELUActivation"``,
``"NewGELUActivation"``, ``"SiLUActivation"``, ``"XIELUActivation"``, ``"GELUTanh"``."""


def activation_family(module: nn.Module | None) -> str | None:
    """``"relu"``, ``"tanh"``, ``"sigmoid"`` or None for a module."""
    for family, types in FAMILIES.items():
        if isinstance(module, types):
            return family
    if isinstance(module, nn.Module) and next(module.children(), None) is None:
        return family_of_type(type(module).__name__)
    return None


# ---------------------------------------------------------------------------------------------
# Activations capture tracks: dead units (ReLU family) or saturation (bounded)


@dataclass(frozen=True)
class ActivationKind:
    """How an activation's output is judged: dead units (ReLU family) or saturation (bounded)."""

    name: str
    family: str
    dead_units: bool
    bounds: tuple[float, float] | None = None


RELU_KIND = ActivationKind("relu", RELU, dead_units=True)
RELU6_KIND = ActivationKind("relu6", RELU, dead_units=True)
TANH_KIND = ActivationKind("tanh", TANH, dead_units=False, bounds=(-1.0, 1.0))
SIGMOID_KIND = ActivationKind("sigmoid", SIGMOID, dead_units=False, bounds=(0.0, 1.0))
HARDSIGMOID_KIND = ActivationKind("hardsigmoid", SIGMOID, dead_units=False, bounds=(0.0, 1.0))
SOFTSIGN_KIND = ActivationKind("softsign", TANH, dead_units=False, bounds=(-1.0, 1.0))


def _hardtanh(min_val: float = -1.0, max_val: float = 1.0) -> ActivationKind:
    return ActivationKind("hardtanh", TANH, dead_units=False, bounds=(float(min_val), float(max_val)))


KINDS = (RELU_KIND, RELU6_KIND, TANH_KIND, SIGMOID_KIND, HARDSIGMOID_KIND, SOFTSIGN_KIND, _hardtanh())
"""Every kind of tracked activation (hardtanh with its default bounds)."""


def module_activation(module: nn.Module) -> ActivationKind | None:
    """The activation kind of a module, or None. ReLU6 is tested before its base class Hardtanh."""
    if isinstance(module, nn.ReLU):
        return RELU_KIND
    if isinstance(module, nn.ReLU6):
        return RELU6_KIND
    if isinstance(module, nn.Hardtanh):
        return _hardtanh(module.min_val, module.max_val)
    if isinstance(module, nn.Tanh):
        return TANH_KIND
    if isinstance(module, nn.Sigmoid):
        return SIGMOID_KIND
    if isinstance(module, nn.Hardsigmoid):
        return HARDSIGMOID_KIND
    if isinstance(module, nn.Softsign):
        return SOFTSIGN_KIND
    return None


def _fixed(kind: ActivationKind) -> Callable[..., ActivationKind]:
    return lambda *args, **kwargs: kind


def _hardtanh_call(input=None, min_val=-1.0, max_val=1.0, *rest, **kwargs) -> ActivationKind:
    return _hardtanh(min_val, max_val)


FUNCTIONAL_ACTIVATIONS: dict[Callable, Callable[..., ActivationKind]] = {
    **{f: _fixed(RELU_KIND) for f in (F.relu, F.relu_, torch.relu, torch.relu_,
                                      torch.Tensor.relu, torch.Tensor.relu_)},
    F.relu6: _fixed(RELU6_KIND),
    **{f: _fixed(TANH_KIND) for f in (F.tanh, torch.tanh, torch.tanh_,
                                      torch.Tensor.tanh, torch.Tensor.tanh_)},
    **{f: _fixed(SIGMOID_KIND) for f in (F.sigmoid, torch.sigmoid, torch.sigmoid_,
                                         torch.Tensor.sigmoid, torch.Tensor.sigmoid_)},
    F.hardtanh: _hardtanh_call,
    F.hardtanh_: _hardtanh_call,
    F.hardsigmoid: _fixed(HARDSIGMOID_KIND),
    F.softsign: _fixed(SOFTSIGN_KIND),
}
"""Functions whose calls inside a module's forward are captured, and the kind of each call."""


# ---------------------------------------------------------------------------------------------
# Layer names and recorded types

FUNCTIONAL_TYPE_PREFIX = "functional "


def functional_layer_name(module_name: str, function: str, index: int) -> str:
    """Name of the ``index``-th call of activation ``function`` inside ``module_name``'s forward:
    ``"encoder.0:relu#0"``, or ``"tanh#1"`` inside the root module."""
    return f"{module_name}:{function}#{index}" if module_name else f"{function}#{index}"


def functional_type(function: str) -> str:
    """The recorded type of a functional activation layer: ``"functional relu"``."""
    return FUNCTIONAL_TYPE_PREFIX + function


def is_functional(name: str) -> bool:
    """Whether a layer name is a functional call inside a forward rather than a module."""
    return ":" in name or "#" in name


def parameter_owner(name: str) -> str:
    """The module that holds a parameter: ``"blocks.0.fc.weight"`` → ``"blocks.0.fc"`` (module
    names may hold any character but ".", so this never parses a parameter as a functional call)."""
    return name.rpartition(".")[0]


def join_name(parent: str | None, child: str) -> str:
    """The name of ``child`` set on module ``parent``: ``("blocks.0", "fc")`` → ``"blocks.0.fc"``,
    ``("", "fc")`` → ``"fc"``."""
    return f"{parent}.{child}" if parent else child


def parent_layer(name: str) -> str:
    """The module that holds a layer, a functional call or a parameter (``""`` is the root):
    ``"blocks.0.fc"`` → ``"blocks.0"``, ``"blocks.0:relu#1"`` → ``"blocks.0"``, ``"fc.weight"`` → ``"fc"``."""
    if is_functional(name):
        return name.partition(":")[0] if ":" in name else ""
    return name.rpartition(".")[0]


_FAMILY_OF_TYPE = {
    **{t.__name__: family for family, types in FAMILIES.items() for t in types},
    **{functional_type(kind.name): kind.family for kind in KINDS},
}


def family_of_type(type_name: str) -> str | None:
    """``"relu"``, ``"tanh"``, ``"sigmoid"`` or None for a recorded layer type: a module class name
    (``"Tanh"``, ``"NewGELUActivation"``) or a functional activation (``"functional tanh"``)."""
    family = _FAMILY_OF_TYPE.get(type_name)
    if family is None and type_name.endswith(ACTIVATION_SUFFIXES) and any(part in type_name for part in RELU_LIKE_NAMES):
        return RELU
    return family


def activation_display(type_name: str) -> str:
    """How a message names an activation of a recorded type: ``"GELU"``, or ``"relu"`` for the
    functional type ``"functional relu"``."""
    return type_name.removeprefix(FUNCTIONAL_TYPE_PREFIX)


def leaf_layers(names: list[str]) -> list[str]:
    """The names among ``names`` (module and functional-activation layers) that are no other's
    parent; the root only when it is alone."""
    parents = {parent_layer(n) for n in names if n and not is_functional(n)} | {""}
    leaves = [n for n in names if n not in parents]
    return leaves or list(names)


# ---------------------------------------------------------------------------------------------
# The activation after each weight layer


class WeightSpan(NamedTuple):
    """A weight layer, the layers that ran after it before its activation, and the activation
    (None where the next weight layer, or the end, comes first)."""

    weight: str
    between: list[str]
    activation: str | None


def weight_spans(
    order: Iterable[str], is_weight: Callable[[str], bool], family: Callable[[str], str | None],
) -> list[WeightSpan]:
    """Each weight layer in ``order`` with the first activation after it and before the next
    weight layer. An activation closes the span it ends: the activation after it belongs to no
    weight layer. A function called inside an activation module's own forward (the ``tanh`` in a
    tanh-approximated GELU) is part of that module, not an activation of its own.

    >>> types = {"0": "Linear", "1": "LayerNorm", "2": "Tanh", "3": "Linear", "": "Sequential"}
    >>> weight_spans(types, lambda n: is_weight_type(types[n]), lambda n: family_of_type(types[n]))
    [WeightSpan(weight='0', between=['1'], activation='2'), WeightSpan(weight='3', between=[''], activation=None)]
    """
    spans: list[WeightSpan] = []
    current: WeightSpan | None = None
    for name in order:
        if is_functional(name) and family(parent_layer(name)) is not None:
            continue
        if is_weight(name):
            if current is not None:
                spans.append(current)
            current = WeightSpan(name, [], None)
        elif current is not None and family(name) is not None:
            spans.append(current._replace(activation=name))
            current = None
        elif current is not None:
            current.between.append(name)
    if current is not None:
        spans.append(current)
    return spans
