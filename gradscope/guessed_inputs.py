"""Example inputs for a model file that gives none: guessed from the layers whose parameters fix
the shape of what they take, and kept only when the model's forward runs on them.

Registration order says little about what the forward consumes (a transformer may register its
attention before its embedding, a ViT its class token before its patch embedding), so each
layer's guess is tried, in registration order, with a forward of the whole model; the first that
runs is kept. A pre-hook on every module tells whether the input reached the layer that gave the
guess, and, for a guess that fails, which module was running when it raised.

>>> model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
>>> inputs, how = infer_inputs(model, "model.py")
>>> tuple(inputs.shape), how
((16, 12), 'inferred from layer 1 (Linear), the first layer the input reaches: shape (16, 12)')
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from gradscope.diagnose import model_loss
from gradscope.errors import UsageError

INFERRED_BATCH = 16
"""Batch size of inferred inputs (BatchNorm needs 8 or more)."""
INFERRED_LENGTH = 32
"""Sequence length (Conv1d, Embedding, attention, RNNs) and first image side (Conv2d) of inferred
inputs."""
IMAGE_SIDES = (INFERRED_LENGTH, 28, 64, 224)
"""Image sides tried in turn for a 2-d convolution or batch norm (a classifier head after a flatten
fixes the side): small first, then MNIST's, DCGAN's and ImageNet's."""
MAX_GUESSES = 8
"""Guesses tried at most: each costs a forward of the model."""
TARGET_NAMES = ("targets", "labels")
"""Keyword parameters (default None) of a forward that, given the token ids again, make a language
model compute its own loss: nanoGPT's and minGPT's ``targets``, Hugging Face's ``labels``."""
SHOWN_FAILURES = 3
"""Distinct failures an error message spells out."""

_SIZES = {1: [(INFERRED_LENGTH,)], 2: [(side, side) for side in IMAGE_SIDES], 3: [(16, 16, 16)]}
"""Spatial sizes of the guesses for a convolution or a batch norm with 1, 2 or 3 spatial dimensions."""


def _sequence(batch_first: bool, features: int) -> tuple[int, ...]:
    b, n = INFERRED_BATCH, INFERRED_LENGTH
    return (b, n, features) if batch_first else (n, b, features)


def _convolution(m: nn.modules.conv._ConvNd) -> list[tuple[int, ...]]:
    spatial = len(m.kernel_size)
    # a transposed convolution first is usually a generator's, fed a latent vector as 1x1 maps
    sizes = [(1,) * spatial] * m.transposed + _SIZES[spatial]
    return [(INFERRED_BATCH, m.in_channels, *size) for size in sizes]


def _batch_norm(m: nn.modules.batchnorm._BatchNorm) -> list[tuple[int, ...]]:
    sizes = {nn.BatchNorm1d: [()], nn.BatchNorm2d: _SIZES[2], nn.BatchNorm3d: _SIZES[3]}.get(type(m), [])
    return [(INFERRED_BATCH, m.num_features, *size) for size in sizes]


GUESSES: dict[type[nn.Module], Callable[[nn.Module], list[tuple[int, ...]]]] = {
    nn.Linear: lambda m: [(INFERRED_BATCH, m.in_features)],
    nn.modules.conv._ConvNd: _convolution,
    nn.MultiheadAttention: lambda m: [_sequence(m.batch_first, m.embed_dim)],
    nn.RNNBase: lambda m: [_sequence(m.batch_first, m.input_size)],
    nn.modules.batchnorm._BatchNorm: _batch_norm,
    nn.LayerNorm: lambda m: [(INFERRED_BATCH, INFERRED_LENGTH, *m.normalized_shape)],
}
"""The layers whose parameters fix the shape of their floating-point input, and the shapes they
suggest (checked with isinstance, in this order). Embeddings take token ids, of shape
(INFERRED_BATCH, INFERRED_LENGTH), below ``num_embeddings``."""
TOKEN_LAYERS = (nn.Embedding, nn.EmbeddingBag)


@dataclass(frozen=True)
class Guess:
    """One input guessed from one layer."""

    layer: str
    """The layer's name in the model (``""`` for the model itself)."""
    layer_type: str
    inputs: torch.Tensor
    tokens: bool

    def __str__(self) -> str:
        kind = "token ids of shape" if self.tokens else "shape"
        dtype = "" if self.tokens or self.inputs.dtype == torch.float32 else f" ({str(self.inputs.dtype).removeprefix('torch.')})"
        return f"{kind} {tuple(self.inputs.shape)}{dtype}"

    @property
    def source(self) -> str:
        return f"layer {self.layer} ({self.layer_type})" if self.layer else f"the model itself ({self.layer_type})"


def guesses(model: nn.Module, seed: int = 0) -> list[Guess]:
    """One input per distinct shape that a layer of ``model`` suggests, in registration order;
    floating-point guesses take the dtype and device of their layer's parameters. Each is drawn
    from ``seed`` alone, so the input kept does not depend on the guesses tried before it."""
    found: list[Guess] = []
    seen: set[tuple[tuple[int, ...], bool]] = set()
    for name, module in model.named_modules():
        weight = next(module.parameters(recurse=False), None)
        if weight is None or isinstance(weight, nn.parameter.UninitializedParameter):
            continue
        tokens = isinstance(module, TOKEN_LAYERS)
        if tokens:
            shapes = [(INFERRED_BATCH, INFERRED_LENGTH)]
        else:
            suggest = next((f for kind, f in GUESSES.items() if isinstance(module, kind)), None)
            shapes = suggest(module) if suggest is not None else []
        for shape in shapes:
            if (shape, tokens) in seen:
                continue
            seen.add((shape, tokens))
            generator = torch.Generator().manual_seed(seed)
            if tokens:
                x = torch.randint(0, module.num_embeddings, shape, generator=generator)
            else:
                x = torch.randn(shape, generator=generator,
                                dtype=weight.dtype if weight.is_floating_point() else torch.float32)
            found.append(Guess(name, type(module).__name__, x.to(weight.device), tokens))
    return found


class _InputWatch:
    """Pre-hooks on every module: which module began last, and which modules received a tensor
    that shares storage with the input (a view of it counts: ``x.view(-1, 784)``)."""

    def __init__(self, model: nn.Module, x: torch.Tensor) -> None:
        self.names = {m: name for name, m in model.named_modules()}
        self.storage = x.untyped_storage().data_ptr()
        self.last_entered: str | None = None
        self.reached: set[str] = set()

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        name = self.names[module]
        self.last_entered = name
        if any(isinstance(a, torch.Tensor) and a.untyped_storage().data_ptr() == self.storage
               for a in (*args, *kwargs.values())):
            self.reached.add(name)

    @contextlib.contextmanager
    def watching(self):
        handles = [m.register_forward_pre_hook(self._pre, with_kwargs=True)
                   for m in self.names if not isinstance(m, torch.jit.ScriptModule)]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()


@contextlib.contextmanager
def _trial(model: nn.Module):
    """A forward that leaves no trace: in training mode (as gradscope.diagnose runs the model),
    without autograd, torch's random state forked, each module's mode and every buffer (BatchNorm's
    running statistics) put back afterwards."""
    modes = {m: m.training for m in model.modules()}
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    cuda = sorted({b.device.index or 0 for b in (*model.parameters(), *model.buffers()) if b.device.type == "cuda"})
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=cuda):
            model.train()
            yield
    finally:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        for module, mode in modes.items():
            module.training = mode


def _one_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(error).__name__}: {first[:200]}{'...' if len(first) > 200 or len(text) > 1 else ''}"


def _required_positional(model: nn.Module) -> list[str]:
    """The positional parameters of ``model.forward`` without a default (``src, tgt`` of
    ``nn.Transformer``, ``query, key, value`` of ``nn.MultiheadAttention``); [] where the
    signature cannot be read."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]


def _arguments(model: nn.Module, guess: Guess, seed: int = 0) -> tuple:
    """The positional arguments a guess is tried as: one of the guessed kind and shape for each
    required one (a forward that takes several of one shape, as attention's query, key and value
    do), the guess first and a separate draw for each other (the same tensor twice would make a
    Siamese network's difference exactly 0): token ids rolled along the batch, other inputs drawn
    again from ``seed + k``."""
    count = max(1, len(_required_positional(model)))
    x = guess.inputs
    others = []
    for k in range(1, count):
        if guess.tokens:
            others.append(x.roll(k, 0))
        else:
            generator = torch.Generator().manual_seed(seed + k)
            others.append(torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device))
    return (x, *others)


def _try(model: nn.Module, guess: Guess, seed: int = 0) -> tuple[bool, str | None]:
    """Run ``model`` on ``guess``: whether the input reached the layer that gave the guess, and
    how the forward failed (None when it ran)."""
    arguments = _arguments(model, guess, seed)
    if len(arguments) > 1:
        watch = _InputWatch(model, guess.inputs)
        try:
            with _trial(model), watch.watching():
                model(*arguments)
            return guess.layer in watch.reached, None
        except Exception:  # noqa: BLE001 - not all of one shape: said as the one input's failure
            pass
    watch = _InputWatch(model, guess.inputs)
    try:
        with _trial(model), watch.watching():
            model(guess.inputs)
    except Exception as e:  # noqa: BLE001 - a wrong guess may fail in any way
        at = watch.last_entered
        where = "" if at is None else f" at {f'layer {at}' if at else 'the model itself'} ({type(model.get_submodule(at)).__name__})"
        return guess.layer in watch.reached, f"failed{where}: {_one_line(e)}"
    return guess.layer in watch.reached, None


def _with_targets(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor | dict, str | None]:
    """``{first: ids, targets: ids}`` when the forward has one of :data:`TARGET_NAMES` and, given
    the ids there too, returns its own loss (``gradscope.diagnose.model_loss``); else the ids alone."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return ids, None
    named = {p.name: p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    target = next((n for n in TARGET_NAMES if n in named and named[n].default is None), None)
    if target is None or not params or params[0].name == target or params[0].name not in named:
        return ids, None
    inputs = {params[0].name: ids, target: ids}
    try:
        with _trial(model), torch.enable_grad():  # a loss in a tuple counts when it has a gradient
            output = model(**inputs)
            loss, _ = model_loss(output)
    except Exception:  # noqa: BLE001 - the ids do not fit as targets (class labels): keep the ids alone
        return ids, None
    # a language model scores every id: its logits have a column per id, and its loss of ids
    # against ids is a finite cross-entropy, never negative. ELECTRA's discriminator has one logit
    # per token and takes 0/1 labels (ids make its BCE negative): the ids are not its targets
    logits = output.get("logits") if isinstance(output, dict) else getattr(output, "logits", None)
    scores_ids = not isinstance(logits, torch.Tensor) or (logits.dim() >= 1 and logits.shape[-1] > int(ids.max()))
    fits = loss is not None and scores_ids and bool(torch.isfinite(loss).all()) and float(loss.detach().min()) >= 0
    return (inputs, target) if fits else (ids, None)


def infer_inputs(model: nn.Module, where: str, seed: int = 0) -> tuple[torch.Tensor | dict, str]:
    """Inputs for ``model`` and how they were found: the first guess (:func:`guesses`) its forward
    runs on. Raises a UsageError naming what was tried, and the options and function that give the
    input instead, when none runs; ``where`` (the model file) is named in it."""
    candidates = guesses(model, seed)
    failed: dict[str, list[Guess]] = {}  # one failure (a forward that takes two inputs) is said once
    for guess in candidates[:MAX_GUESSES]:
        reached, failure = _try(model, guess, seed)
        if failure is not None and guess.tokens:
            # an encoder-decoder (T5, BART) needs decoder inputs, which it builds from its labels
            inputs, target = _with_targets(model, guess.inputs)
            if target is not None:
                return inputs, (f"inferred from {guess.source}: {guess}, also passed as {target}, from which "
                                "the model builds its decoder's inputs and computes its own loss")
        if failure is not None:
            failed.setdefault(failure, []).append(guess)
            continue
        how = "the first layer the input reaches" if reached else "the first guess the model runs on"
        count = sum(map(len, failed.values()))
        earlier = f" ({count} earlier guess{'es' if count > 1 else ''} failed)" if count else ""
        arguments = _arguments(model, guess, seed)
        if len(arguments) > 1:  # (only those ran: a guess alone misses the others)
            names = _and(_required_positional(model))
            return arguments, (f"inferred from {guess.source}, {how}: {guess}{earlier}, a separate draw "
                               f"for each of its arguments {names}")
        inputs, target = _with_targets(model, guess.inputs) if guess.tokens else (guess.inputs, None)
        also = f", also passed as {target} so that the model computes its own loss" if target else ""
        return inputs, f"inferred from {guess.source}, {how}: {guess}{earlier}{also}"
    if not candidates:
        what = f"it has no layer whose parameters fix the input's shape (guesses come from {_guessing_layers()})"
    else:
        said = [_and([f"{g} from {g.source}" for g in tried]) + f" {failure}"
                for failure, tried in list(failed.items())[:SHOWN_FAILURES]]
        unsaid = sum(len(tried) for tried in list(failed.values())[SHOWN_FAILURES:])
        untried = len(candidates) - MAX_GUESSES
        what = ("the shapes were guessed from its layers and the model ran on none of them: " + "; ".join(said)
                + (f"; {unsaid} more failed otherwise" if unsaid > 0 else "")
                + (f"; {untried} more were not tried" if untried > 0 else ""))
    raise UsageError(
        f"Cannot infer example inputs for {type(model).__name__} from {where}: {what}. Give the input's "
        "shape with --input-shape, e.g. --input-shape 16,3,224,224 (with --input-dtype long for token "
        "ids), or add `def example_input(): return torch.randn(16, ...)` to the file (a tensor, a "
        "tuple of arguments or a dict of keyword arguments)."
    )


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _guessing_layers() -> str:
    names = [t.__name__.lstrip("_").removesuffix("Base").removesuffix("Nd") for t in (*GUESSES, *TOKEN_LAYERS)]
    return ", ".join(names)
