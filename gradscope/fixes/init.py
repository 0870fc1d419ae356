"""Re-initialisation matched to the activation that follows each layer in the forward: He (Kaiming)
for the ReLU family, Xavier (Glorot) for tanh, sigmoid and linear outputs."""

from __future__ import annotations

import torch
import torch.nn as nn

from gradscope.diagnose import ModelError, split_inputs
from gradscope.errors import UsageError, UsageTypeError
from gradscope.layers import RELU, SIGMOID, TANH, TRANSPOSED_WEIGHT_TYPES
from gradscope.structure import ModelStructure, StructureProbe

SCHEMES = ("auto", "kaiming", "xavier")


def init_for(family: str | None, negative_slope: float | None = None) -> tuple[str, str, float | None]:
    """(scheme, nonlinearity, gain) that suits a layer followed by an activation of ``family``
    (``"relu"``, ``"tanh"``, ``"sigmoid"`` or None), or by a LeakyReLU of ``negative_slope``."""
    if negative_slope is not None:
        return "kaiming", "leaky_relu", negative_slope
    if family == RELU:
        return "kaiming", "relu", None
    if family == TANH:
        return "xavier", "tanh", nn.init.calculate_gain("tanh")
    return "xavier", "sigmoid" if family == SIGMOID else "linear", 1.0


@torch.no_grad()
def reinit(
    model: nn.Module,
    inputs: object,
    scheme: str = "auto",
    generator: torch.Generator | None = None,
    *,
    tied: bool = False,
) -> dict[str, str]:
    """Re-initialise each weight layer's weight (Linear, Conv, Bilinear, Hugging Face's Conv1D) for the activation that follows it in the
    forward on ``inputs`` and zero its bias; returns ``{layer: "kaiming(relu)" | "xavier(tanh)" |
    … | "kept(tied to …)"}``.

    ``inputs`` are example inputs as ``gradscope.diagnose`` takes them (a tensor, a tuple of
    positional arguments or a dict of keyword arguments). One forward on them, without gradients
    and in eval mode (the random state and every module's mode are restored), shows which
    activation runs after each layer: modules and activation functions called inside forwards
    (``F.relu``) alike, whatever order the modules were registered in. Layers that forward does not
    run are left as they are.

    ``scheme="auto"`` picks He (normal, fan-in) before ReLU-family activations and Xavier (normal,
    with the activation's gain) before tanh/sigmoid and where no activation follows;
    ``"kaiming"`` or ``"xavier"`` forces one scheme (with the activation's nonlinearity).

    A weight that another module holds too (a language model's output layer tied to its input
    embedding) is left alone, since re-initialising it would re-initialise the embedding;
    ``tied=True`` re-initialises it as well. Embedding tables are never re-initialised.

    >>> import torch, torch.nn as nn
    >>> model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2))
    >>> reinit(model, torch.randn(8, 64))
    {'0': 'kaiming(relu)', '2': 'xavier(tanh)', '4': 'xavier(linear)'}
    """
    if not isinstance(model, nn.Module):
        raise UsageTypeError(f"Expected `model` to be a torch.nn.Module but got {type(model).__name__}.")
    if scheme not in SCHEMES:
        raise UsageError(f"Expected `scheme` to be one of {', '.join(SCHEMES)} but got {scheme!r}.")
    if not isinstance(tied, bool):
        raise UsageTypeError(f"Expected `tied` to be a bool but got {type(tied).__name__}.")
    chosen: dict[str, str] = {}
    modules = dict(model.named_modules())
    for weight_layer in _forward_structure(model, inputs).weight_layers:
        name = weight_layer.name
        if weight_layer.tied_to and not tied:
            chosen[name] = f"kept(tied to {', '.join(weight_layer.tied_to)})"
            continue
        layer = modules[name]
        after = weight_layer.activation_layer
        activation = modules.get(after) if after is not None else None  # None for a functional call too
        slope = activation.negative_slope if isinstance(activation, nn.LeakyReLU) else None
        auto, nonlinearity, gain = init_for(weight_layer.activation, slope)
        use = auto if scheme == "auto" else scheme
        if use == "kaiming":
            if nonlinearity not in ("relu", "leaky_relu"):
                nonlinearity, gain = "relu", None
            # torch reads a 2-D weight as (out, in); a transposed layer holds it as (in, out)
            mode = "fan_out" if type(layer).__name__ in TRANSPOSED_WEIGHT_TYPES else "fan_in"
            nn.init.kaiming_normal_(
                layer.weight, a=gain or 0.0, mode=mode, nonlinearity=nonlinearity, generator=generator
            )
        else:
            gain = gain if gain is not None else nn.init.calculate_gain(nonlinearity, 0.01)
            nn.init.xavier_normal_(layer.weight, gain=gain, generator=generator)
        if getattr(layer, "bias", None) is not None:
            nn.init.zeros_(layer.bias)
        chosen[name] = f"{use}({nonlinearity})"
    return chosen


def _forward_structure(model: nn.Module, inputs: object) -> ModelStructure:
    """The structure of one forward on ``inputs`` in eval mode (no dropout, no BatchNorm
    statistics updated) with the random state forked; every module's mode is restored."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    args, kwargs = split_inputs(inputs, device)
    modes = {module: module.training for module in model.modules()}
    probe = StructureProbe(model, functional=True)
    try:
        model.eval()
        with torch.random.fork_rng(devices=[]), probe:
            try:
                model(*args, **kwargs)
            except Exception as e:
                where = probe.last_entered
                raise ModelError(
                    "reinit runs the model once on `inputs` to see which activation follows each layer, "
                    "and the forward raised" + (f" at module {where!r}" if where else "")
                    + f": {type(e).__name__}: {e}. Pass inputs the model accepts, as for gradscope.diagnose."
                ) from e
    finally:
        for module, mode in modes.items():
            module.training = mode
    return probe.structure(None, None)
