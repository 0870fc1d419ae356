"""Re-initialisation matched to the activation that follows each layer: He (Kaiming) for the ReLU
family, Xavier (Glorot) for tanh, sigmoid and linear outputs."""

from __future__ import annotations

import torch
import torch.nn as nn

from gradscope.errors import UsageError, UsageTypeError
from gradscope.layers import RELU, SIGMOID, TANH, activation_family, following_activations

SCHEMES = ("auto", "kaiming", "xavier")


def init_for(activation: nn.Module | None) -> tuple[str, str, float | None]:
    """(scheme, nonlinearity, gain) that suits a layer followed by ``activation``."""
    if isinstance(activation, nn.LeakyReLU):
        return "kaiming", "leaky_relu", activation.negative_slope
    family = activation_family(activation)
    if family == RELU:
        return "kaiming", "relu", None
    if family == TANH:
        return "xavier", "tanh", nn.init.calculate_gain("tanh")
    return "xavier", "sigmoid" if family == SIGMOID else "linear", 1.0


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

