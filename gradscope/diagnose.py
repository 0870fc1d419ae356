"""``gradscope.diagnose``: a few monitored training steps on example inputs, the structure of the
model, and the rules over both, as a :class:`Report`. The model's mode, parameters, buffers,
gradients (the same tensor objects), the optimizer's state and the global random number generators
(torch's, Python's ``random`` and numpy's) are restored afterwards.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import math
import random
from contextlib import contextmanager, nullcontext
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from gradscope.errors import UsageError, UsageTypeError, first_line
from gradscope.hooks import refuse_scripted
from gradscope.monitor import Recorder
from gradscope.probe import (DEFAULT_LOSS, GIVEN_LOSS, Dynamics, constant_layer_losses, constant_outputs, output_layer,
                             run_probe)
from gradscope.recipe import Recipe, unwrap_optimizer
from gradscope.report import Report, build_report
from gradscope.stats.reductions import floating_tensors
from gradscope.structure import StructureProbe

DEFAULT_LR = 0.01
DEFAULT_MOMENTUM = 0.9
PROBE_STEPS = 10


class ModelError(UsageError):
    """The user's model (or loss) raised while gradscope ran it; the message names the module."""


def _with_gradients(function):
    """``function`` run with autograd on: a model file that turned it off for the whole process
    (``torch.set_grad_enabled(False)`` at import) leaves diagnose nothing to measure."""
    @functools.wraps(function)
    def run(*args, **kwargs):
        with torch.enable_grad():
            return function(*args, **kwargs)
    return run


@_with_gradients
def diagnose(
    model: nn.Module,
    inputs: object,
    loss_fn=None,
    steps: int = 1,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    probe_steps: int = PROBE_STEPS,
    clip_grad_norm: float | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Run ``steps`` monitored forward/backward passes of ``model`` on ``inputs`` in training
    mode and apply the rules.

    ``inputs`` is a tensor, a tuple of positional arguments or a dict of keyword arguments.
    The loss is ``loss_fn(output, inputs)`` (or ``loss_fn(output)``) when given, else the
    model's own: the output's ``loss`` (a ``ModelOutput`` or dict) or the one scalar tensor with a
    gradient in a tuple output (``(logits, loss)``); else the default:
    ``0.5 * ||y - r||² / (P * sqrt(K))`` summed over the output's floating-point tensors ``y``,
    with ``r`` a fixed N(0, 1) target of the same shape, ``K`` the size of the last dimension (the
    classes, the vocabulary) and ``P`` the number of positions (all other dimensions: the batch, the
    tokens of a sequence). At ``y ≈ 0`` its gradient has norm ``1 / P`` at each position, as a
    cross-entropy's has at initialisation, and its curvature grows only as ``sqrt(K)``, so a wide
    output (an image, a large vocabulary) neither blows up nor starves the default recipe; unlike a plain
    projection it has a minimum, so ``steps > 1`` trains toward something. With ``steps > 1``
    the optimizer (default SGD, lr 0.01, momentum 0.9) steps between passes; with one step no
    parameter changes.

    Then the recipe probe (:mod:`gradscope.probe`): ``probe_steps`` steps of ``optimizer`` (default
    SGD lr 0.01 momentum 0.9, reported as assumed), with ``clip_grad_norm`` if given, on the same
    inputs from the same initial state, and the curvature of the loss against the recipe's
    stability limit; ``report.verdict`` weighs the findings of both (``probe_steps=0``: the
    findings of the monitored steps only). Everything is restored afterwards, except that lazy modules
    (``nn.LazyLinear``) are initialised by a first forward without gradients. ``progress(done, steps)`` is called
    after each step.

    >>> import torch, torch.nn as nn, gradscope
    >>> deep = nn.Sequential(*[m for _ in range(12) for m in (nn.Linear(32, 32), nn.Sigmoid())])
    >>> report = gradscope.diagnose(deep, torch.randn(64, 32))
    >>> [f.rule for f in report.findings]  # doctest: +NORMALIZE_WHITESPACE
    ['vanishing-gradient', 'collapsed-representations', 'updates-off-band', 'no-skip-connections',
     'deep-bounded-activations']
    >>> report.verdict.label
    'fails'
    """
    if not isinstance(model, nn.Module):
        raise UsageTypeError(
            f"Expected `model` to be a torch.nn.Module but got {type(model).__name__}; pass the model to diagnose."
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UsageError(f"Expected `steps` to be a positive int but got {steps!r}; steps=1 runs one forward/backward.")
    if loss_fn is not None and not callable(loss_fn):
        raise UsageTypeError(f"Expected `loss_fn` to be callable but got {type(loss_fn).__name__}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UsageTypeError(f"Expected `seed` to be an int but got {seed!r}; seed=0 is the default.")
    if isinstance(probe_steps, bool) or not isinstance(probe_steps, int) or probe_steps < 0:
        raise UsageError(f"Expected `probe_steps` to be an int >= 0 but got {probe_steps!r}; 0 skips the recipe probe.")
    if clip_grad_norm is not None and (isinstance(clip_grad_norm, bool) or not isinstance(clip_grad_norm, (int, float))
                                       or not clip_grad_norm > 0):
        raise UsageError(f"Expected `clip_grad_norm` to be a positive number or None but got {clip_grad_norm!r}.")
    optimizer = unwrap_optimizer(optimizer)  # Lightning's self.optimizers(), the HF Trainer's accelerate wrapper
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise UsageTypeError(
            f"Expected `optimizer` to be a torch.optim.Optimizer but got {type(optimizer).__name__}."
        )
    if optimizer is not None and _needs_closure(optimizer):
        raise UsageError(
            f"Got {type(optimizer).__name__}, whose step() needs a closure that re-evaluates the loss; "
            "diagnose runs plain optimizer.step() calls, so it cannot probe this recipe. Pass "
            "optimizer=None (diagnose then assumes SGD and says so) or a first-order optimizer, and "
            "watch the real LBFGS run with gradscope.monitor(model, optimizer=opt), which records "
            "opt.step(closure)."
        )
    refuse_scripted(model, "gradscope.diagnose")
    model = _eager(model)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    args, kwargs = split_inputs(inputs, device)
    batch = _batch_size(args, kwargs)
    if batch == 0:
        raise UsageError(
            f"Expected a batch of at least one sample but the inputs are empty "
            f"({describe(next(x for x in (*args, *kwargs.values()) if isinstance(x, torch.Tensor)))}); "
            "pass a real batch from your data (a few dozen samples; 2 or more with BatchNorm)."
        )
    _materialize_lazy(model, args, kwargs, inputs)
    refuse_without_values_or_gradients(model)
    saved = _SavedState(model, optimizer)
    # an optimizer that has not stepped yet sits at its schedule's start (a warm-up's first rate)
    unstepped = optimizer is not None and not optimizer.state and not getattr(optimizer, "_opt_called", False)
    for p in model.parameters():
        p.grad = None  # gradients already there would add to the first backward's; restored after
    devices = [device.index or 0] if device.type == "cuda" else []
    compiled = _compiled_calls(model)  # modules compiled in place (model.compile()) run eagerly here
    try:
        with seeded(seed, devices):
            model.train()
            opt = optimizer
            if opt is None and steps > 1:
                opt = torch.optim.SGD(model.parameters(), lr=DEFAULT_LR, momentum=DEFAULT_MOMENTUM)
            history, layers, structure, loss_kind = _run(
                model, args, kwargs, inputs, loss_fn, steps, opt, batch, seed, progress, clip_grad_norm)
        saved.restore()
        dynamics, probe_error = None, None
        if probe_steps:
            dynamics, probe_error = _probe(model, args, kwargs, inputs, loss_fn, optimizer, probe_steps,
                                           clip_grad_norm, seed, devices, unstepped)
    finally:
        saved.restore()
        _put_back(compiled)
    summary = {
        "class": type(model).__name__,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "batch_size": batch,
    }
    options = {"steps": steps, "seed": seed, "loss": loss_kind,
               "optimizer": type(opt).__name__ if opt is not None else None, "probe_steps": probe_steps}
    if probe_error is not None:
        options["probe_error"] = probe_error
    return build_report(history, layers, structure, summary, options, dynamics)


def _eager(model: nn.Module) -> nn.Module:
    """The module that ``torch.compile(model)`` wraps: diagnose runs it eagerly (the same parameters
    and the same arithmetic), since its hooks are what it reads and a compiled graph runs none of
    them (and dynamo tracing into them failed)."""
    try:
        from torch._dynamo.eval_frame import OptimizedModule
    except ImportError:  # a torch without dynamo
        return model
    while isinstance(model, OptimizedModule):
        model = model._orig_mod
    return model


def _compiled_calls(model: nn.Module) -> list:
    """Take the compiled forwards off ``model``'s modules, so that they run eagerly, hooks
    included, until :func:`_put_back`: a module compiled in place (``module.compile()``, what
    Hugging Face's ``torch_compile=True`` calls) loses its compiled call, and a submodule that
    is ``torch.compile(module)`` is replaced by the module it wraps (dynamo tracing into
    gradscope's hooks failed there). Returns what to put back."""
    try:
        from torch._dynamo.eval_frame import OptimizedModule
    except ImportError:  # a torch without dynamo
        OptimizedModule = ()
    taken = []
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if isinstance(child, OptimizedModule):
                taken.append((parent, name, child))
                parent._modules[name] = _eager(child)
    for module in model.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            taken.append((module, None, module._compiled_call_impl))
            module._compiled_call_impl = None
    return taken


def _put_back(taken: list) -> None:
    """Undo :func:`_compiled_calls`, last taken first."""
    for owner, name, value in reversed(taken):
        if name is None:
            owner._compiled_call_impl = value
        else:
            owner._modules[name] = value


def refuse_without_values_or_gradients(model: nn.Module) -> None:
    """A model whose parameters hold no values (the meta device) or none of which takes a
    gradient has no gradient flow to diagnose: say so, before the forward fails less clearly."""
    params = list(model.parameters())
    on_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if on_meta:
        raise UsageError(
            f"The model's parameters are on the meta device (shapes without values: {len(on_meta)} of "
            f"{len(params)}, e.g. {on_meta[0]!r}); diagnose runs the model. Materialise them first: "
            "model.to_empty(device='cpu') and initialise them or load a state_dict."
        )
    if not any(p.requires_grad for p in params):
        held = f"all {len(params)} of its parameters are frozen (requires_grad=False)" if params \
            else "it has no parameters"
        raise UsageError(
            f"The model has no parameter that takes a gradient: {held}, so there is no gradient flow "
            "to diagnose. Unfreeze the parameters you train (model.requires_grad_(True), or those of "
            "the layers you fine-tune) before calling diagnose."
        )


def _probe(model, args, kwargs, inputs, loss_fn, optimizer, probe_steps, clip_grad_norm, seed, devices,
           unstepped: bool = False) -> tuple[Dynamics | None, str | None]:
    """The recipe probe from the initial state; a failure inside it leaves the report without
    dynamics (and says why) rather than losing the findings."""
    targets: dict[int, torch.Tensor] = {}
    kind = {"loss": ""}

    def loss_at() -> torch.Tensor:
        with seeded(seed, devices):  # the same dropout masks at every evaluation
            output = model(*fresh(args), **fresh(kwargs))
        loss, kind["loss"] = training_loss(output, inputs, loss_fn, targets, seed)
        return loss

    def constant_losses_at() -> list[Callable[[], torch.Tensor]]:
        if loss_fn is None:  # the model's own loss: its logits layer's output made constant
            if kind["loss"] in ("", DEFAULT_LOSS):
                return []
            layer = output_layer(model, loss_at)
            return constant_layer_losses(layer, loss_at) if layer is not None else []
        with seeded(seed, devices):
            constants = constant_outputs(model(*fresh(args), **fresh(kwargs)))
        return [lambda c=c: training_loss(c, inputs, loss_fn, targets, seed)[0] for c in constants]

    assumed = optimizer is None
    opt = optimizer or torch.optim.SGD(model.parameters(), lr=DEFAULT_LR, momentum=DEFAULT_MOMENTUM)
    # the optimizer's state, lr included, is restored afterwards
    scheduled_from = _at_schedule_peak(opt) if unstepped else None
    recipe = dataclasses.replace(Recipe.of(opt, clip_grad_norm, assumed=assumed), scheduled_from=scheduled_from)
    model.train()
    try:
        dynamics = run_probe(model, loss_at, opt, recipe, probe_steps, "", constant_losses_at)
        return dataclasses.replace(dynamics, loss_kind=kind["loss"]), None
    except Exception as e:  # the monitored steps ran; keep their findings
        return None, f"{type(e).__name__}: {e}"


def _at_schedule_peak(optimizer: torch.optim.Optimizer) -> float | None:
    """Set each parameter group's learning rate to its schedule's peak where a torch LR scheduler
    holds it lower before the first step (a warm-up starts near 0; ``initial_lr`` is the rate it climbs to,
    OneCycleLR's ``max_lr`` its top): the recipe trains at that rate after the first steps. Returns
    the largest rate the optimizer held before, or None where nothing changed. Called only for an
    optimizer that had not stepped when diagnose began: one that has (it has state, or a scheduler
    saw its step) is mid-run, and a rate below the peak is then the schedule's decay."""
    held = None
    for group in optimizer.param_groups:
        lr = Recipe.number(group.get("lr"))
        peak = max((v for v in (Recipe.number(group.get("initial_lr")), Recipe.number(group.get("max_lr")))
                    if v is not None), default=None)
        if lr is None or peak is None or not peak > lr or isinstance(group.get("lr"), torch.Tensor):
            continue
        held = lr if held is None else max(held, lr)
        group["lr"] = peak
        momentum = Recipe.number(group.get("base_momentum"))
        if momentum is not None and Recipe.number(group.get("max_lr")) == peak:
            # OneCycleLR cycles momentum against the rate: at its top, the lowest momentum
            if isinstance(group.get("betas"), tuple):
                group["betas"] = (momentum, *group["betas"][1:])
            elif "momentum" in group:
                group["momentum"] = momentum
    return held


def _needs_closure(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` has a required ``closure`` argument (LBFGS)."""
    try:
        parameter = inspect.signature(type(optimizer).step).parameters.get("closure")
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.default is inspect.Parameter.empty


def _materialize_lazy(model: nn.Module, args: tuple, kwargs: dict, inputs: object) -> None:
    """Lazy modules (``nn.LazyLinear`` …) get their shapes from a first forward; run it (without
    gradients) so that there are parameters to save, restore and watch."""
    if not any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
        return
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model(*fresh(args), **fresh(kwargs))
    except Exception as e:
        raise ModelError(
            f"Initialising the model's lazy modules with a forward raised {type(e).__name__}: {e}. "
            f"Inputs given: {describe(inputs)}; check that they fit the model."
        ) from e


def _run(model, args, kwargs, inputs, loss_fn, steps, opt, batch, seed, progress, clip_grad_norm=None):
    targets: dict[int, torch.Tensor] = {}
    structure = None
    loss_kind = GIVEN_LOSS if loss_fn is not None else DEFAULT_LOSS
    with Recorder(model, every=1, optimizer=opt, detect=None) as mon:
        for step in range(steps):
            probe = StructureProbe(model) if step == 0 else None
            with probe if probe is not None else nullcontext():
                try:
                    output = model(*fresh(args), **fresh(kwargs))
                except Exception as e:
                    where = probe.last_entered if probe is not None else None
                    raise ModelError(
                        "The model raised in forward"
                        + (f" at module {where!r} ({type(model.get_submodule(where)).__name__})" if where else "")
                        + f": {type(e).__name__}: {e}. Inputs given: {describe(inputs)}; "
                        + ("diagnose runs the model in training mode, where BatchNorm normalises with "
                           "the batch's own statistics (a module you keep in eval mode included): "
                           "pass a batch of 2 or more samples." if "more than 1 value per channel" in str(e)
                           else "check that they fit the model.")
                    ) from e
            loss, loss_kind = training_loss(output, inputs, loss_fn, targets, seed)
            if probe is not None:
                structure = probe.structure(loss, batch, mon.hooks.layer_types, mon.hooks.module_order)
            try:
                loss.backward()
            except Exception as e:
                raise ModelError(f"The backward pass raised: {type(e).__name__}: {e}.") from e
            if clip_grad_norm is not None:  # the recipe's clipping, as its training loop does it
                try:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
                except (RuntimeError, NotImplementedError) as e:
                    sparse = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.is_sparse]
                    raise UsageError(
                        f"clip_grad_norm={clip_grad_norm} was given, but torch cannot clip these gradients "
                        f"({type(e).__name__}: {first_line(e, 120)})"
                        + (f"; {sparse[0]!r} has a sparse gradient (nn.Embedding(sparse=True)), which "
                           "clip_grad_norm_ does not take" if sparse else "")
                        + ". Leave clip_grad_norm out, as your training loop must."
                    ) from e
            if opt is not None:
                opt.step()
                opt.zero_grad(set_to_none=True)
            else:
                mon.step()
                model.zero_grad(set_to_none=True)
            if progress is not None:
                progress(step + 1, steps)
        history = mon.to_dataframe()
        layers = mon.layers
    return history, layers, structure, loss_kind


def training_loss(output, inputs, loss_fn, targets: dict, seed: int) -> tuple[torch.Tensor, str]:
    """The loss of one forward and where it came from: ``loss_fn``, the model's own, or the default
    (``targets`` keeps the default loss's fixed targets between calls)."""
    if loss_fn is not None:
        try:
            takes_inputs = _positional_arity(loss_fn) >= 2
            loss = loss_fn(output, inputs) if takes_inputs else loss_fn(output)
        except Exception as e:
            hint = (" diagnose called loss_fn(output, inputs): its second argument is the inputs "
                    "given to diagnose, not targets. For a loss that needs targets, pass a function "
                    "that closes over them: loss_fn=lambda output, inputs: criterion(output, targets)."
                    if takes_inputs else "")
            raise ModelError(f"loss_fn raised: {type(e).__name__}: {e}.{hint}") from e
        kind = GIVEN_LOSS
    else:
        loss, kind = model_loss(output)
        if loss is None:
            loss, kind = _default_loss(output, targets, seed), DEFAULT_LOSS
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.is_floating_point():
        raise UsageError(
            f"The loss must be a floating-point scalar tensor, but {kind} gave "
            f"{describe(loss)}; return e.g. loss.mean()."
        )
    if not loss.requires_grad:
        raise UsageError(
            f"The loss ({kind}) does not require grad: no parameter reaches it. Check that the "
            "model's parameters require grad and that the forward does not run under torch.no_grad()."
        )
    return loss.reshape(()), kind


def model_loss(output) -> tuple[torch.Tensor | None, str]:
    """The model's own loss and where it was: ``output.loss`` (a ``ModelOutput`` or dict), or the one
    scalar floating-point tensor with a gradient in a tuple output (nanoGPT's ``(logits, loss)``)."""
    loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
    if isinstance(loss, torch.Tensor):
        return loss, "output.loss"
    if isinstance(output, (tuple, list)):
        scalars = [i for i, x in enumerate(output) if isinstance(x, torch.Tensor) and x.dim() == 0
                   and x.is_floating_point() and x.requires_grad]
        if len(scalars) == 1:
            return output[scalars[0]], f"output[{scalars[0]}]"
    return None, ""


def _default_loss(output, targets: dict, seed: int) -> torch.Tensor:
    tensors = [t for t in floating_tensors(output) if t.requires_grad]
    if not tensors:
        raise UsageError(
            f"The model's output ({describe(output)}) holds no floating-point tensor that requires "
            "grad, so there is no default loss; pass loss_fn=lambda output, inputs: ... ."
        )
    total = None
    for i, y in enumerate(tensors):
        target = targets.get(i)
        if target is None or target.shape != y.shape:
            generator = torch.Generator(device="cpu").manual_seed(seed + 1 + i)
            target = torch.randn(y.shape, generator=generator, dtype=torch.float32).to(y.device, y.dtype)
            targets[i] = target
        features = y.shape[-1] if y.dim() > 1 and y.shape[-1] > 0 else 1
        positions = max(y.numel() // features, 1)
        term = 0.5 * (y - target).float().pow(2).sum() / (positions * math.sqrt(features))
        total = term if total is None else total + term
    return total


def _positional_arity(fn) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 2
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return 2
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty for p in params)


@contextmanager
def seeded(seed: int, devices: list[int]):
    """torch's, numpy's and Python's global random generators seeded with ``seed`` inside, and
    put back as they were after: a model that draws from numpy or ``random`` in its forward (a
    stochastic depth by ``np.random.rand()``) is as deterministic as one that draws from torch."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2 ** 32)
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def fresh(values):
    """``values`` (positional or keyword arguments) with each tensor copied: every forward of
    diagnose gets the inputs as given, also from a model that changes its input in place
    (``x.mul_(2)`` would double it at each of the probe's steps and blow the loss up). A tensor
    that requires grad is passed as it is (a loss that differentiates with respect to the inputs,
    as a PINN's or a gradient penalty does, needs the very tensor), and one passed twice stays
    one tensor."""
    copies: dict[int, torch.Tensor] = {}

    def copy(x):
        if not isinstance(x, torch.Tensor) or x.requires_grad:
            return x
        if id(x) not in copies:
            copies[id(x)] = x.detach().clone()
        return copies[id(x)]

    if isinstance(values, dict):
        return {k: copy(v) for k, v in values.items()}
    return tuple(copy(x) for x in values)


def split_inputs(inputs: object, device: torch.device) -> tuple[tuple, dict]:
    """The positional and keyword arguments of a call ``model(*args, **kwargs)`` for ``inputs``
    (a tensor, a tuple of positional arguments or a dict of keyword arguments), tensors on
    ``device``."""
    def move(x):
        return x.to(device) if isinstance(x, torch.Tensor) and x.device != device else x

    if isinstance(inputs, torch.Tensor):
        return (move(inputs),), {}
    if isinstance(inputs, (tuple, list)):
        return tuple(move(x) for x in inputs), {}
    if isinstance(inputs, dict):
        bad = [k for k in inputs if not isinstance(k, str)]
        if bad:
            raise UsageTypeError(f"Keyword inputs need str keys, but got {bad[0]!r}.")
        return (), {k: move(v) for k, v in inputs.items()}
    raise UsageTypeError(
        f"Expected `inputs` to be a tensor, a tuple of positional arguments or a dict of keyword "
        f"arguments, but got {type(inputs).__name__}."
    )


def _batch_size(args: tuple, kwargs: dict) -> int | None:
    for x in (*args, *kwargs.values()):
        if isinstance(x, torch.Tensor) and x.dim() > 0:
            return int(x.shape[0])
    return None


def describe(obj: object) -> str:
    """What a user passed, for a message: ``tensor of shape (8, 16) and dtype float32``."""
    if isinstance(obj, torch.Tensor):
        return f"tensor of shape {tuple(obj.shape)} and dtype {str(obj.dtype).removeprefix('torch.')}"
    if isinstance(obj, (tuple, list)):
        return f"{type(obj).__name__} of ({', '.join(describe(x) for x in obj[:4])})"
    if isinstance(obj, dict):
        return "dict of {" + ", ".join(f"{k!r}: {describe(v)}" for k, v in list(obj.items())[:6]) + "}"
    return type(obj).__name__


_MISSING = object()


class _SavedState:
    """The model's per-module modes, parameters, buffers and gradients, the optimizer's state and
    the Python and numpy random states (torch's is forked), copied so that ``restore`` puts them
    back in place (same tensor objects, gradients included)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
        self.model = model
        self.optimizer = optimizer
        self.modes = {m: m.training for m in model.modules()}
        with torch.no_grad():
            self.tensors = [(t, t.detach().clone()) for t in (*model.parameters(), *model.buffers())]
            self.grads = {p: (p.grad, p.grad.detach().clone() if p.grad is not None else None)
                          for p in model.parameters()}
        self.optimizer_state = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None
        # an LR scheduler's step wrapper marks the optimizer as stepped: the probe's steps must not
        self.opt_called = vars(optimizer).get("_opt_called", _MISSING) if optimizer is not None else _MISSING
        self.python_random = random.getstate()
        self.numpy_random = np.random.get_state()

    def restore(self) -> None:
        with torch.no_grad():
            for tensor, saved in self.tensors:
                tensor.copy_(saved)
            for p, (grad, values) in self.grads.items():
                if grad is not None:
                    grad.copy_(values)
                p.grad = grad
        random.setstate(self.python_random)
        np.random.set_state(self.numpy_random)
        for module, mode in self.modes.items():
            module.training = mode
        if self.optimizer is not None:
            # a copy: load_state_dict keeps the given tensors, which the next steps would change in place
            self.optimizer.load_state_dict(copy.deepcopy(self.optimizer_state))
            if self.opt_called is _MISSING:
                vars(self.optimizer).pop("_opt_called", None)
            else:
                self.optimizer._opt_called = self.opt_called
