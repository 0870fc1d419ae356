"""Re-initialisation matched to the activation that follows each layer: He (Kaiming) for the ReLU
family, Xavier (Glorot) for tanh, sigmoid and linear outputs."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from gradscope.errors import UsageError, UsageTypeError

WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Bilinear)
"""Layers whose weights ``reinit`` sets (transposed convolutions are left alone)."""

SCHEMES = ("auto", "kaiming", "xavier")

RELU_LIKE = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Mish, nn.ELU, nn.SELU, nn.CELU, nn.PReLU)
TANH_LIKE = (nn.Tanh, nn.Hardtanh, nn.Softsign)
SIGMOID_LIKE = (nn.Sigmoid, nn.Hardsigmoid)


def following_activations(model: nn.Module) -> dict[str, nn.Module | None]:
    """For each weight layer, the first activation module registered after it and before the next
    weight layer (None for the last layer or where no activation module follows)."""
    result: dict[str, nn.Module | None] = {}
    pending: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, WEIGHT_LAYERS):
            for waiting in pending:
                result[waiting] = None
            pending = [name]
        elif pending and isinstance(module, (nn.LeakyReLU, *RELU_LIKE, *TANH_LIKE, *SIGMOID_LIKE)):
            for waiting in pending:
                result[waiting] = module
            pending = []
    for waiting in pending:
        result[waiting] = None
    return result


def init_for(activation: nn.Module | None) -> tuple[str, str, float | None]:
    """(scheme, nonlinearity, gain) that suits a layer followed by ``activation``."""
    if isinstance(activation, nn.LeakyReLU):
        return "kaiming", "leaky_relu", activation.negative_slope
    if isinstance(activation, RELU_LIKE):
        return "kaiming", "relu", None
    if isinstance(activation, TANH_LIKE):
        return "xavier", "tanh", nn.init.calculate_gain("tanh")
    return "xavier", "sigmoid" if isinstance(activation, SIGMOID_LIKE) else "linear", 1.0


@torch.no_grad()
def reinit(model: nn.Module, scheme: str = "auto", generator: torch.Generator | None = None) -> dict[str, str]:
    """Re-initialise every Linear/Conv/Bilinear weight for the activation that follows it and zero
    the biases; returns ``{layer: "kaiming(relu)" | "xavier(tanh)" | …}``.

    ``scheme="auto"`` picks He (normal, fan-in) before ReLU-family activations and Xavier (normal,
    with the activation's gain) before tanh/sigmoid and where no activation follows;
    ``"kaiming"`` or ``"xavier"`` forces one scheme (with the activation's nonlinearity). The
    following activation is the next activation *module* in registration order, so activations
    called as functions in a forward count as none.

    >>> import torch.nn as nn
    >>> model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2))
    >>> reinit(model)
    {'0': 'kaiming(relu)', '2': 'xavier(tanh)', '4': 'xavier(linear)'}
    """
    if not isinstance(model, nn.Module):
        raise UsageTypeError(f"Expected `model` to be a torch.nn.Module but got {type(model).__name__}.")
    if scheme not in SCHEMES:
        raise UsageError(f"Expected `scheme` to be one of {', '.join(SCHEMES)} but got {scheme!r}.")
    chosen: dict[str, str] = {}
    modules = dict(model.named_modules())
    for name, activation in following_activations(model).items():
        layer = modules[name]
        auto, nonlinearity, gain = init_for(activation)
        use = auto if scheme == "auto" else scheme
        if use == "kaiming":
            if nonlinearity not in ("relu", "leaky_relu"):
                nonlinearity, gain = "relu", None
            nn.init.kaiming_normal_(
                layer.weight, a=gain or 0.0, nonlinearity=nonlinearity, generator=generator
            )
        else:
            gain = gain if gain is not None else nn.init.calculate_gain(nonlinearity, 0.01)
            nn.init.xavier_normal_(layer.weight, gain=gain, generator=generator)
        if getattr(layer, "bias", None) is not None:
            nn.init.zeros_(layer.bias)
        chosen[name] = f"{use}({nonlinearity})"
    return chosen


def init_gain(layer: nn.Module) -> float:
    """std(weight) * sqrt(fan_in): about 0.58 for PyTorch's default Linear/Conv init, 1.41 for He
    (ReLU), 1 for Xavier on a square layer, sqrt(fan_in) for N(0, 1) weights."""
    weight = layer.weight.detach()
    fan_in = weight[0].numel() if weight.dim() > 1 else weight.numel()
    return float(weight.double().std()) * math.sqrt(fan_in)
