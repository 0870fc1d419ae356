"""Loading a model file for the CLI: run the file, find the model factory, the example inputs,
the optional loss and the optional ``build_optimizer(model)``, or infer inputs from the first
layer; and choose the training recipe from the command line's options or that function. Every
failure is a ``UsageError`` whose message says what to add to the file."""

from __future__ import annotations

import importlib.util
import math
import sys
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from gradscope.diagnose import DEFAULT_LR, DEFAULT_MOMENTUM
from gradscope.errors import UsageError
from gradscope.reporters.verdict import FROM_DEFAULT, FROM_FILE, FROM_OPTIONS, FROM_OPTIONS_OVER_FILE

FACTORIES = ("build_model", "get_model", "create_model")
INPUTS = ("example_input", "example_inputs")
OPTIMIZER_FACTORY = "build_optimizer"
OPTIMIZERS = {"sgd": (torch.optim.SGD, DEFAULT_LR, DEFAULT_MOMENTUM, 0.0),
              "adam": (torch.optim.Adam, 1e-3, 0.9, 0.0),
              "adamw": (torch.optim.AdamW, 1e-3, 0.9, 1e-2)}
"""``--optimizer`` name: (class, lr, momentum or first beta, weight decay) where the option is not
given: gradscope's default SGD, and torch's defaults for Adam and AdamW."""
DTYPES = {"float": torch.float32, "float32": torch.float32, "float64": torch.float64,
          "double": torch.float64, "half": torch.float16, "bfloat16": torch.bfloat16,
          "long": torch.long, "int64": torch.long, "int": torch.int32, "int32": torch.int32}

MAX_INPUT_ELEMENTS = 2**62
"""More elements than any tensor can have (torch counts them in an int64)."""
INFERRED_BATCH = 16
"""Batch size of inferred inputs (BatchNorm needs 8 or more)."""
INFERRED_LENGTH = 32
"""Sequence length (Conv1d, Embedding) and image side (Conv2d; Conv3d uses 16) of inferred inputs."""


@dataclass
class LoadedModel:
    path: Path
    model: nn.Module
    inputs: object
    loss_fn: Callable | None
    factory: str
    """Where the model came from: ``build_model()``, ``model`` …"""
    inputs_from: str
    """Where the inputs came from: ``example_input()``, ``--input-shape``, ``inferred from …``."""
    make_optimizer: Callable | None = None
    """The file's ``build_optimizer(model)``, if it has one."""


@dataclass(frozen=True)
class RecipeOptions:
    """The recipe given on the command line; None where an option was not given. Any of them
    given makes the whole recipe the command line's (the others take their defaults from
    :data:`OPTIMIZERS`), over the file's ``build_optimizer(model)``."""

    optimizer: str | None = None
    """``sgd``, ``adam`` or ``adamw``."""
    lr: float | None = None
    momentum: float | None = None
    """SGD's momentum, or Adam's and AdamW's first beta."""
    weight_decay: float | None = None

    def __post_init__(self) -> None:
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise UsageError(f"--optimizer {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}.")

    @property
    def given(self) -> bool:
        return any(value is not None for value in (self.optimizer, self.lr, self.momentum, self.weight_decay))

    def build(self, model: nn.Module) -> torch.optim.Optimizer:
        kind, lr, momentum, weight_decay = OPTIMIZERS[self.optimizer or "sgd"]
        lr = self.lr if self.lr is not None else lr
        momentum = self.momentum if self.momentum is not None else momentum
        weight_decay = self.weight_decay if self.weight_decay is not None else weight_decay
        if kind is torch.optim.SGD:
            return kind(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        return kind(model.parameters(), lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)


def load_module(path: str | Path):
    """Execute a Python file as a module, with its directory importable."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"No such file: {path}. Give the path of a Python file that defines the model.")
    if path.is_dir() or path.suffix != ".py":
        raise UsageError(f"{path} is not a Python file; give a .py file that defines the model.")
    try:
        source = path.read_bytes()  # bytes: compile() reads a BOM and a coding line as Python does
    except OSError as e:
        raise UsageError(f"Cannot read {path}: {e.strerror or e}.") from e
    try:
        compile(source, str(path), "exec")
    except SyntaxError as e:
        if "unicode error" in e.msg or "encoding" in e.msg:
            raise UsageError(f"{path} cannot be decoded: {e.msg}. Save it as UTF-8, or declare its encoding "
                             "on its first or second line: # -*- coding: latin-1 -*-.") from e
        line = (e.text or "").rstrip()
        raise UsageError(f"{path}:{e.lineno}: syntax error: {e.msg}" + (f"\n    {line}" if line else "")) from e
    name = f"gradscope_user_{path.stem}_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.resolve().parent))
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise UsageError(f"Running {path} raised {type(e).__name__}: {e}{where_in(e, path)}") from e
    finally:
        sys.path.remove(str(path.resolve().parent))
    return module


def where_in(error: BaseException, path: Path) -> str:
    """`` (line N: source)`` of the last frame of ``error``'s traceback in ``path``, or ``""``."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if Path(f.filename).resolve() == path.resolve()]
    return f" (line {frames[-1].lineno}: {frames[-1].line})" if frames else ""


def load(
    path: str | Path,
    factory: str | None = None,
    input_shape: str | None = None,
    input_dtype: str = "float",
    seed: int = 0,
) -> LoadedModel:
    path = Path(path)
    module = load_module(path)
    model, source = _find_model(module, path, factory)
    loss_fn = getattr(module, "loss_fn", None)
    if loss_fn is not None and not callable(loss_fn):
        raise UsageError(f"{path}: `loss_fn` must be a function loss_fn(output, inputs), got {type(loss_fn).__name__}.")
    inputs, inputs_from = _find_inputs(module, path, model, input_shape, input_dtype, seed)
    make_optimizer = getattr(module, OPTIMIZER_FACTORY, None)
    if make_optimizer is not None and not callable(make_optimizer):
        raise UsageError(f"{path}: `{OPTIMIZER_FACTORY}` must be a function {OPTIMIZER_FACTORY}(model) that "
                         f"returns a torch.optim.Optimizer, got {type(make_optimizer).__name__}.")
    return LoadedModel(path, model, inputs, loss_fn, source, inputs_from, make_optimizer)


def choose_optimizer(loaded: LoadedModel, model: nn.Module, options: RecipeOptions
                     ) -> tuple[torch.optim.Optimizer | None, str]:
    """The optimizer of the recipe and where it came from (``report.options["recipe_from"]``):
    the command line's options when any is given (``build_optimizer`` is then not called), else
    the file's ``build_optimizer(model)``, else None: ``diagnose`` assumes its default."""
    if options.given:
        return options.build(model), FROM_OPTIONS_OVER_FILE if loaded.make_optimizer else FROM_OPTIONS
    if loaded.make_optimizer is not None:
        return _file_optimizer(loaded, model), FROM_FILE
    return None, FROM_DEFAULT


def _file_optimizer(loaded: LoadedModel, model: nn.Module) -> torch.optim.Optimizer:
    path, name = loaded.path, f"{OPTIMIZER_FACTORY}(model)"
    example = "e.g. `return torch.optim.AdamW(model.parameters(), lr=3e-4)`"
    try:
        optimizer = loaded.make_optimizer(model)
    except Exception as e:
        raise UsageError(f"{path}: {name} raised {type(e).__name__}: {e}{where_in(e, path)}") from e
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise UsageError(f"{path}: {name} returned {type(optimizer).__name__}; it must return a "
                         f"torch.optim.Optimizer over the parameters of the model it is given, {example}.")
    own = {id(p) for p in model.parameters()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    foreign = sum(id(p) not in own for p in params)
    if not params or foreign:
        what = f"{foreign} of its {len(params)} tensors are not parameters of" if params else "it has no parameters of"
        raise UsageError(f"{path}: {name} returned a {type(optimizer).__name__}, but {what} the model it is "
                         f"given; build it from that model's parameters, {example}.")
    return optimizer


def _find_model(module, path: Path, factory: str | None) -> tuple[nn.Module, str]:
    names = [factory] if factory else list(FACTORIES)
    for name in names:
        obj = getattr(module, name, None)
        if obj is None:
            continue
        if isinstance(obj, nn.Module):
            return obj, name
        if not callable(obj):
            raise UsageError(f"{path}: `{name}` is a {type(obj).__name__}, not a function or an nn.Module.")
        try:
            model = obj()
        except Exception as e:
            raise UsageError(f"{path}: {name}() raised {type(e).__name__}: {e}{where_in(e, path)}") from e
        if not isinstance(model, nn.Module):
            raise UsageError(f"{path}: {name}() returned {type(model).__name__}; it must return a torch.nn.Module.")
        return model, f"{name}()"
    if factory:
        raise UsageError(f"{path} has no `{factory}` (given with --factory); define it or drop --factory.")
    model = getattr(module, "model", None)
    if isinstance(model, nn.Module):
        return model, "model"
    looked = ", ".join(f"{n}()" for n in FACTORIES)
    raise UsageError(
        f"No model found in {path}: looked for {looked} and a module-level `model` (an nn.Module). "
        "Add `def build_model(): return MyModel()`, or name your function with --factory NAME."
    )


def _find_inputs(module, path: Path, model: nn.Module, shape: str | None, dtype: str, seed: int = 0):
    if shape is not None:
        return _from_shape(shape, dtype, model, seed), "--input-shape"
    for name in INPUTS:
        obj = getattr(module, name, None)
        if obj is None:
            continue
        try:
            inputs = obj() if callable(obj) else obj
        except Exception as e:
            raise UsageError(f"{path}: {name}() raised {type(e).__name__}: {e}{where_in(e, path)}") from e
        if not isinstance(inputs, (torch.Tensor, tuple, list, dict)):
            raise UsageError(
                f"{path}: {name}() returned {type(inputs).__name__}; return a tensor, a tuple of "
                "positional arguments or a dict of keyword arguments."
            )
        return (tuple(inputs) if isinstance(inputs, list) else inputs), f"{name}()"
    inferred = infer_inputs(model, seed)
    if inferred is None:
        first = _first_layer(model)
        what = f"its first layer is {type(first).__name__}" if first is not None else "it has no layers"
        raise UsageError(
            f"Cannot infer example inputs for {type(model).__name__} from {path}: {what}, whose input "
            "shape is not determined by its parameters. Add `def example_input(): return "
            "torch.randn(8, ...)` to the file (a tensor, a tuple of arguments or a dict of keyword "
            "arguments), or pass --input-shape 8,16,32 (and --input-dtype long for token ids)."
        )
    return inferred


def _from_shape(shape: str, dtype: str, model: nn.Module, seed: int = 0):
    try:
        dims = tuple(int(d) for d in shape.replace("x", ",").split(",") if d.strip())
    except ValueError:
        dims = ()
    if not dims or any(d <= 0 for d in dims):
        raise UsageError(f"--input-shape {shape!r} is not a list of positive sizes; write it like 32,3,64,64.")
    if dtype not in DTYPES:
        raise UsageError(f"--input-dtype {dtype!r} is not one of {', '.join(DTYPES)}.")
    torch_dtype = DTYPES[dtype]
    too_large = UsageError(
        f"--input-shape {shape!r} asks for {math.prod(dims):.3g} elements, more than this machine can "
        "hold; give a small example batch, like 8,3,64,64.")
    if math.prod(dims) > MAX_INPUT_ELEMENTS:
        raise too_large
    generator = torch.Generator().manual_seed(seed)
    try:
        if torch_dtype.is_floating_point:
            return torch.randn(dims, generator=generator).to(torch_dtype)
        embedding = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
        high = embedding.num_embeddings if embedding is not None else 2
        return torch.randint(0, high, dims, generator=generator, dtype=torch_dtype)
    except (RuntimeError, MemoryError) as e:  # the allocation failed
        raise too_large from e


def _first_layer(model: nn.Module) -> nn.Module | None:
    for module in model.modules():
        if next(module.parameters(recurse=False), None) is not None:
            return module
    return None


def infer_inputs(model: nn.Module, seed: int = 0) -> tuple[torch.Tensor, str] | None:
    """Inputs for a model whose first parameterised layer fixes the input's shape, or None."""
    first = _first_layer(model)
    generator = torch.Generator().manual_seed(seed)
    b, n = INFERRED_BATCH, INFERRED_LENGTH
    shapes = {nn.Linear: lambda m: (b, m.in_features), nn.Bilinear: None,
              nn.Conv1d: lambda m: (b, m.in_channels, n), nn.Conv2d: lambda m: (b, m.in_channels, n, n),
              nn.Conv3d: lambda m: (b, m.in_channels, 16, 16, 16)}
    if isinstance(first, nn.Embedding):
        x = torch.randint(0, first.num_embeddings, (b, n), generator=generator)
        return x, f"inferred from the first layer ({type(first).__name__}): token ids of shape {tuple(x.shape)}"
    for kind, shape in shapes.items():
        if type(first) is kind and shape is not None:
            dims = shape(first)
            x = torch.randn(dims, generator=generator, dtype=first.weight.dtype)
            return x, f"inferred from the first layer ({kind.__name__}): shape {dims}"
    return None
