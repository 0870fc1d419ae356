"""``gradscope.coordcheck``: the µP coordinate check. Train a fresh model at each of several widths
for a few steps, from several seeds, measure every layer's output size, the change one update
makes to it, the backpropagated signal and the update itself (gradscope.sweep), and apply the
coordinate-check rules to the slopes of those against width.

A correct width parametrisation (µP, Yang et al. 2022) keeps every layer's output entries and
their change per update of the same size at every width: flat lines on log-log axes. A broken
one has lines that grow or shrink with width, and the rules name the layer and the fix.

The models are the caller's to build; the global random number generators are restored afterwards.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Callable, Sequence

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from gradscope.diagnose import ModelError, describe, split_inputs, training_loss
from gradscope.errors import UsageError, UsageTypeError
from gradscope.layers import functional_layer_name, leaf_layers
from gradscope.recipe import Recipe
from gradscope.report import CoordReport, build_coord_report
from gradscope.sweep import (ACT_RMS, ATTENTION, COLUMNS, DELTA_RMS, HIDDEN, INPUT, OTHER, OUTPUT, READOUT,
                             SIGNAL_RMS, UPDATE_NORM, WidthSweep)

DEFAULT_STEPS = 5
DEFAULT_SEEDS = 3
NAMED_OPTIMIZERS = ("sgd", "adam", "adamw")
ATTENTION_LOGITS = "attention_logits"
ATTENTION_TYPE = "attention logits"
MODEL_OUTPUT = ""
"""The root module's name: its output (the logits) is measured too, so that a readout multiplier
applied in the model's forward, outside the readout layer, is seen."""


def coordcheck(
    build_model: Callable[[int], nn.Module],
    widths: Sequence[int],
    inputs: object,
    loss_fn: Callable | None = None,
    optimizer: Callable[[nn.Module], torch.optim.Optimizer] | str = "adam",
    *,
    lr: float | None = None,
    steps: int = DEFAULT_STEPS,
    seeds: int | Sequence[int] = DEFAULT_SEEDS,
    progress: Callable[[int, int], None] | None = None,
) -> CoordReport:
    """Run the coordinate check: for each width and seed, ``build_model(width)`` (after
    ``torch.manual_seed(seed)``) trains ``steps`` steps on the same inputs, and every layer is
    measured at each step; the coordinate-check rules judge the slopes against width.

    ``inputs``: a tensor, a tuple of positional arguments or a dict of keyword arguments, the same
    at every width, or a function ``inputs(width)`` that returns one. The loss is ``loss_fn(output,
    inputs)`` (or ``loss_fn(output)``), else the model's own or ``gradscope.diagnose``'s default.
    ``optimizer``: a function ``optimizer(model)`` that returns a ``torch.optim.Optimizer`` (to
    give µP's per-layer learning rates), or ``"sgd"``, ``"adam"``, ``"adamw"`` with ``lr``
    (default: 0.01 for sgd, 0.001 otherwise, as ``gradscope diagnose --optimizer``). ``seeds``: a
    count (seeds 0, 1, …) or the seeds. ``progress(done, runs)`` is called after each run.

    >>> import torch, torch.nn as nn, gradscope
    >>> def mlp(width):
    ...     return nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
    ...                          nn.Linear(width, 1))
    >>> _ = torch.manual_seed(0)
    >>> report = gradscope.coordcheck(mlp, [64, 128, 256], torch.randn(32, 8), lr=0.01, steps=3, seeds=2)
    >>> [f.rule for f in report.findings]
    ['readout-grows-with-width', 'hidden-updates-scale-with-width']
    >>> report.sweep.final("2", "act_rms").trend  # the hidden layer's output after 3 steps
    'grows'
    """
    widths = _check_widths(widths)
    seeds = _check_seeds(seeds)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UsageError(f"Expected `steps` to be a positive int but got {steps!r}; the check needs at least "
                         "one update, and 5 shows the trend.")
    if not callable(build_model):
        raise UsageTypeError(f"Expected `build_model` to be a function build_model(width) -> nn.Module but got "
                             f"{type(build_model).__name__}.")
    if loss_fn is not None and not callable(loss_fn):
        raise UsageTypeError(f"Expected `loss_fn` to be callable but got {type(loss_fn).__name__}.")
    make_optimizer = _optimizer_factory(optimizer, lr)
    rows: list[tuple] = []
    shapes: dict[int, dict[str, tuple[int, ...]]] = {}
    types: dict[str, str] = {}
    order: list[str] = []
    recipe = None
    runs, done = len(widths) * len(seeds), 0
    with torch.random.fork_rng(devices=_cuda_devices()):
        for width in widths:
            for seed in seeds:
                torch.manual_seed(seed)
                model = _build(build_model, width)
                given = inputs(width) if callable(inputs) and not isinstance(inputs, (torch.Tensor, nn.Module)) else inputs
                opt = _built_optimizer(make_optimizer, model, width)
                recipe = recipe or Recipe.of(opt)
                run = _Run(model, given, loss_fn, opt, seed, width)
                for step, layer, metric, value in run.measure(steps):
                    rows.append((width, seed, step, layer, metric, value))
                shapes.setdefault(width, run.weight_shapes)
                for name in run.order:
                    if name not in types:
                        types[name] = run.types[name]
                        order.append(name)
                done += 1
                if progress is not None:
                    progress(done, runs)
    table = pd.DataFrame(rows, columns=COLUMNS)
    _check_same_layers(table, widths)
    order = [name for name in order if name in set(table["layer"])]  # containers are not measured
    layers = pd.DataFrame({
        "layer": order,
        "type": [types[n] for n in order],
        "role": [_role(n, types[n], shapes) for n in order],
        "order": range(len(order)),
    })
    sweep = WidthSweep(table, layers, tuple(widths), tuple(seeds), steps, recipe.text(), recipe.adaptive)
    return build_coord_report(sweep, {"widths": list(widths), "seeds": list(seeds), "steps": steps,
                                      "optimizer": recipe.text(), "loss": "given" if loss_fn else "model or default"})


class _Run:
    """One model at one width from one seed: ``steps`` updates, each layer measured at each."""

    def __init__(self, model: nn.Module, inputs: object, loss_fn, optimizer, seed: int, width: int) -> None:
        self.model, self.inputs, self.loss_fn, self.optimizer = model, inputs, loss_fn, optimizer
        self.seed, self.width = seed, width
        self.device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.args, self.kwargs = split_inputs(inputs, self.device)
        self.names = {m: n for n, m in model.named_modules()}
        self.types: dict[str, str] = {}
        self.order: list[str] = []
        self.weight_shapes = {name: _fans(m) for m, name in self.names.items() if _fans(m) is not None}
        self._outputs: dict[str, torch.Tensor] = {}
        self._grad_sq: dict[str, torch.Tensor] = {}
        self._stack: list[str] = []
        self._calls: dict[str, int] = {}

    def measure(self, steps: int):
        """Rows (step, layer, metric, value) of ``steps`` updates and a last forward after them."""
        targets: dict = {}
        handles = []
        try:
            for module, name in self.names.items():
                handles.append(module.register_forward_pre_hook(self._enter))
                handles.append(module.register_forward_hook(self._leave))
            self.model.train()
            before: dict[str, torch.Tensor] = {}
            for step in range(steps + 1):
                last = step == steps
                with torch.no_grad() if last else nullcontext():
                    output = self._forward()
                measured = set(leaf_layers(self.order)) | {MODEL_OUTPUT}
                outputs = {n: t for n, t in self._outputs.items() if n in measured}
                if last:
                    yield from self._rows(step, outputs, before, {}, {})
                    break
                loss, _ = training_loss(output, self.inputs, self.loss_fn, targets, self.seed)
                try:
                    loss.backward()
                except Exception as e:
                    raise ModelError(f"At width {self.width}, the backward pass raised: {type(e).__name__}: {e}.") from e
                owned = {n: [p for p in m.parameters(recurse=False) if p.requires_grad]
                         for m, n in self.names.items()}
                saved = {n: [p.detach().clone() for p in ps] for n, ps in owned.items() if ps}
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                updates = {n: torch.stack([(p.detach() - old).double().pow(2).sum()
                                           for p, old in zip(owned[n], olds)]).sum()
                           for n, olds in saved.items()}
                yield from self._rows(step, outputs, before, self._grad_sq, updates)
                before = outputs
        finally:
            for handle in handles:
                handle.remove()

    def _rows(self, step, outputs, before, grad_sq, updates):
        """The step's rows: activations now, the change since the previous forward (which belongs
        to the previous step's update), the signal and the update; one host copy."""
        values, keys = [], []
        for name, out in outputs.items():
            values.append(out.double().pow(2).mean())
            keys.append((step, name, ACT_RMS))
            prev = before.get(name)
            if prev is not None and prev.shape == out.shape:
                values.append((out.double() - prev.double()).pow(2).mean())
                keys.append((step - 1, name, DELTA_RMS))
            if name in grad_sq:
                values.append(grad_sq[name] / max(out.numel(), 1))
                keys.append((step, name, SIGNAL_RMS))
        for name, sq in updates.items():
            values.append(sq)
            keys.append((step, name, UPDATE_NORM))
        if not values:
            return
        host = torch.stack([v.double().reshape(()) for v in values]).sqrt().cpu().tolist()  # one copy per step
        for (at, name, metric), value in zip(keys, host):
            yield at, name, metric, value

    def _forward(self):
        self._outputs.clear()
        self._grad_sq = {}
        self._calls.clear()
        with torch.random.fork_rng(devices=_cuda_devices()):
            torch.manual_seed(self.seed)  # the same dropout masks in every forward: a change is the update's
            try:
                with _AttentionCapture(self._attention):
                    return self.model(*self.args, **self.kwargs)
            except Exception as e:
                where = self._stack[-1] if self._stack else None
                self._stack.clear()
                raise ModelError(
                    f"At width {self.width}, the model raised in forward"
                    + (f" at module {where!r}" if where else "")
                    + f": {type(e).__name__}: {e}. Inputs given: {describe(self.inputs)}; check that inputs(width) "
                    "fits the model of that width."
                ) from e

    def _enter(self, module, args) -> None:
        self._stack.append(self.names[module])

    def _leave(self, module, args, output) -> None:
        name = self._stack.pop() if self._stack else self.names[module]
        tensor = _first_float(output)
        if tensor is not None:
            self._keep(name, type(module).__name__, tensor)

    def _attention(self, logits: torch.Tensor) -> None:
        where = self._stack[-1] if self._stack else ""
        index = self._calls.get(where, 0)
        self._calls[where] = index + 1
        self._keep(functional_layer_name(where, ATTENTION_LOGITS, index), ATTENTION_TYPE, logits, gradient=False)

    def _keep(self, name: str, type_name: str, tensor: torch.Tensor, gradient: bool = True) -> None:
        if name in self._outputs:  # a module called twice in one forward: its first output is measured
            return
        if name not in self.types:
            self.types[name] = type_name
            self.order.append(name)
        self._outputs[name] = tensor.detach()
        if gradient and tensor.requires_grad:
            tensor.register_hook(lambda grad, name=name: self._grad_sq.__setitem__(name, grad.double().pow(2).sum()))


class _AttentionCapture(TorchFunctionMode):
    """Sees ``F.scaled_dot_product_attention`` calls and hands on the logits the softmax gets:
    ``q kᵀ · scale`` (``scale`` default ``1/sqrt(d_head)``), the causal positions only when
    ``is_causal``."""

    def __init__(self, on_logits: Callable[[torch.Tensor], None]) -> None:
        super().__init__()
        self.on_logits = on_logits

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            self.on_logits(_attention_logits(*args, **kwargs))
        return func(*args, **kwargs)


def _attention_logits(query, key, value=None, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                      **_) -> torch.Tensor:
    with torch.no_grad():
        scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
        if key.shape[-3:-2] != query.shape[-3:-2] and key.dim() == query.dim() >= 3:  # grouped-query attention
            key = key.repeat_interleave(query.shape[-3] // key.shape[-3], dim=-3)
        logits = (query @ key.transpose(-2, -1)) * scale
        if is_causal:
            allowed = torch.ones(logits.shape[-2:], dtype=torch.bool, device=logits.device).tril()
            return logits[..., allowed]
        return logits


def _first_float(output: object) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output if output.is_floating_point() else None
    if isinstance(output, (tuple, list)):
        return next((t for t in output if isinstance(t, torch.Tensor) and t.is_floating_point()), None)
    return None


def _fans(module: nn.Module) -> tuple[int, int] | None:
    """(fan_in, fan_out) of a module's own weight matrix, or None: an embedding's rows are its
    fan-in (the vocabulary), its columns the fan-out."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        return None
    if isinstance(module, nn.Embedding):
        return weight.shape[0], weight.shape[1]
    return math.prod(weight.shape[1:]), weight.shape[0]


def _role(name: str, type_name: str, shapes: dict[int, dict[str, tuple[int, int]]]) -> str:
    """µP's classification, read off the shapes at the smallest and largest width: which of the
    weight's fan-in and fan-out grow with width."""
    if type_name == ATTENTION_TYPE:
        return ATTENTION
    if name == MODEL_OUTPUT:
        return OUTPUT
    small, large = shapes[min(shapes)].get(name), shapes[max(shapes)].get(name)
    if small is None or large is None:
        return OTHER
    fan_in_grows, fan_out_grows = large[0] > small[0], large[1] > small[1]
    if fan_in_grows and fan_out_grows:
        return HIDDEN
    if fan_out_grows:
        return INPUT
    return READOUT if fan_in_grows else OTHER


def _check_same_layers(table: pd.DataFrame, widths: list[int]) -> None:
    layers = table.groupby("width")["layer"].apply(frozenset)
    first = layers.get(widths[0], frozenset())
    for width in widths[1:]:
        other = layers.get(width, frozenset())
        if other != first:
            only = sorted(first ^ other)[:4]
            raise UsageError(
                f"The models at widths {widths[0]} and {width} do not have the same layers (e.g. {', '.join(only)}); "
                "the check compares each layer across widths, so build_model(width) must change only sizes.")


def _check_widths(widths) -> list[int]:
    if isinstance(widths, (str, bytes)) or not hasattr(widths, "__iter__"):
        raise UsageTypeError(f"Expected `widths` to be a list of ints such as [64, 128, 256, 512] but got "
                             f"{type(widths).__name__}.")
    widths = list(widths)
    if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
        raise UsageError(f"Expected `widths` to hold positive ints but got {widths!r}; give e.g. [64, 128, 256, 512].")
    if len(set(widths)) < 2:
        raise UsageError(f"Expected at least 2 different widths but got {widths!r}: a slope against width needs "
                         "several; 4 widths a factor 2 apart, e.g. [64, 128, 256, 512], show a trend clearly.")
    return sorted(set(widths))


def _check_seeds(seeds) -> list[int]:
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise UsageError(f"Expected `seeds` to be a positive count or a list of seeds but got {seeds!r}; "
                             "3 seeds give each slope an error bar.")
        return list(range(seeds))
    if isinstance(seeds, (list, tuple)) and seeds and all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**63 for s in seeds):
        return list(dict.fromkeys(seeds))
    raise UsageError(f"Expected `seeds` to be a positive count or a list of seeds (ints from 0) but got {seeds!r}.")


def _optimizer_factory(optimizer, lr) -> Callable[[nn.Module], torch.optim.Optimizer]:
    if isinstance(optimizer, str):
        name = optimizer.lower()
        if name not in NAMED_OPTIMIZERS:
            raise UsageError(f"Expected `optimizer` to be one of {', '.join(NAMED_OPTIMIZERS)} or a function "
                             f"optimizer(model) but got {optimizer!r}.")
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (lr > 0 and math.isfinite(lr))):
            raise UsageError(f"Expected `lr` to be a positive finite number but got {lr!r}.")
        from gradscope.loading import RecipeOptions

        options = RecipeOptions(name, lr)
        return options.build
    if lr is not None:
        raise UsageError(f"`lr` ({lr!r}) applies to a named optimizer; the function given as `optimizer` sets its own "
                         "learning rates. Drop `lr`, or give optimizer=\"adam\" (\"sgd\", \"adamw\").")
    if not callable(optimizer):
        raise UsageTypeError(f"Expected `optimizer` to be a function optimizer(model) -> torch.optim.Optimizer or "
                             f"one of {', '.join(NAMED_OPTIMIZERS)} but got {type(optimizer).__name__}.")
    return optimizer


def _build(build_model, width: int) -> nn.Module:
    try:
        model = build_model(width)
    except Exception as e:
        raise ModelError(f"build_model({width}) raised {type(e).__name__}: {e}.") from e
    if not isinstance(model, nn.Module):
        raise UsageTypeError(f"build_model({width}) returned {type(model).__name__}; it must return a "
                             "torch.nn.Module of that width.")
    return model


def _built_optimizer(make, model: nn.Module, width: int) -> torch.optim.Optimizer:
    try:
        opt = make(model)
    except Exception as e:
        raise UsageError(f"optimizer(model) raised {type(e).__name__}: {e} (model of width {width}).") from e
    if not isinstance(opt, torch.optim.Optimizer):
        raise UsageTypeError(f"optimizer(model) returned {type(opt).__name__} at width {width}; it must return a "
                             "torch.optim.Optimizer over that model's parameters.")
    return opt


def _cuda_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
