"""Loading a model file for the CLI: run the file as a module (not as ``__main__``, with its own
command line in ``sys.argv``), find the model (a factory function, an ``nn.Module``, or an
expression given with ``--factory``), the example inputs, the optional loss and the optional
``build_optimizer(model)``, or infer the inputs (gradscope.guessed_inputs); and choose the training
recipe from the command line's options or that function. Every failure is a ``UsageError`` whose
message says what to add to the file or to the command line."""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import math
import sys
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn

from gradscope.diagnose import DEFAULT_LR, DEFAULT_MOMENTUM
from gradscope.errors import UsageError
from gradscope.guessed_inputs import infer_inputs
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

    @property
    def inputs_guessed(self) -> bool:
        """Whether gradscope guessed the inputs (neither the file nor ``--input-shape`` gave them)."""
        return self.inputs_from.startswith("inferred")


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
    # never "__main__": script code under `if __name__ == "__main__":` (training, downloads) stays unrun
    name = f"gradscope_user_{path.stem}_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    # registered as an import would be: dataclasses, typing.get_type_hints and pickle look the
    # module up by name (a @dataclass under `from __future__ import annotations` needs it)
    sys.modules[name] = module
    sys.path.insert(0, str(path.resolve().parent))
    try:
        spec.loader.exec_module(module)
    except BaseException as e:
        del sys.modules[name]
        if isinstance(e, Exception):
            raise UsageError(f"Running {path} raised {raised(e)}{where_in(e, path)}") from e
        raise
    finally:
        sys.path.remove(str(path.resolve().parent))
    return module


@contextlib.contextmanager
def script_argv(path: Path, args: Sequence[str] = ()) -> Iterator[list[str]]:
    """``sys.argv`` as the file sees it under ``python FILE ARGS``, restored afterwards (on errors
    too), so that a script parsing its command line at import reads its own arguments. An exit of
    its argument parser (a usage error, ``--help``) becomes a UsageError that names the arguments
    it got and how to give others."""
    saved = sys.argv
    argv = [str(path), *args]
    sys.argv = list(argv)
    try:
        yield argv
    except SystemExit as e:
        said = _argparse_exit(e)
        if said is None:
            raise
        how = ("Check the arguments after `--`: they reach the script as given" if args else
               f"Give the script its own arguments after `--` at the end of gradscope's command line, "
               f"e.g. gradscope diagnose {path} -- ARGS")
        raise UsageError(f"{path} exited from its argument parser (argparse) while gradscope was loading it "
                         f"with sys.argv = {argv!r}: {said}. {how}.") from e
    finally:
        sys.argv = saved


def _argparse_exit(error: SystemExit) -> str | None:
    """What argparse said when it ended in ``error`` (its error line, or its exit code after
    ``--help``), or None when the exit did not come from argparse."""
    frames = [frame for frame, _ in traceback.walk_tb(error.__traceback__)
              if frame.f_globals.get("__name__") == "argparse"]
    if not frames:
        return None
    for frame in frames:
        parser, message = frame.f_locals.get("self"), frame.f_locals.get("message")
        if frame.f_code.co_name == "error" and message is not None:
            return f"{getattr(parser, 'prog', 'argparse')}: error: {message}"
    return f"exit code {error.code!r}" + (" (after --help or --version: its output is above)" if not error.code else "")


def raised(error: BaseException) -> str:
    """``ValueError: message``, or the type alone for an exception without a message (an ``assert``).

    >>> raised(ValueError("bad")), raised(AssertionError())
    ('ValueError: bad', 'AssertionError')
    """
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


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
    script_args: Sequence[str] = (),
) -> LoadedModel:
    """Run the file at ``path`` with ``sys.argv = [path, *script_args]`` and find what it gives.
    ``factory`` names a function or an nn.Module in the file, or is a Python expression evaluated
    in the file's namespace (``"GPT(GPTConfig(n_layer=4))"``)."""
    path = Path(path)
    with script_argv(path, script_args):
        module = load_module(path)
        model, source = _find_model(module, path, factory)
        inputs, inputs_from = _find_inputs(module, path, model, input_shape, input_dtype, seed)
    loss_fn, make_optimizer = _recipe_functions(module, path)
    return LoadedModel(path, model, inputs, loss_fn, source, inputs_from, make_optimizer)


def _recipe_functions(module, path: Path) -> tuple[Callable | None, Callable | None]:
    """The file's optional ``loss_fn`` and ``build_optimizer``, checked to be functions."""
    loss_fn = getattr(module, "loss_fn", None)
    if loss_fn is not None and not callable(loss_fn):
        raise UsageError(f"{path}: `loss_fn` must be a function loss_fn(output, inputs), got {type(loss_fn).__name__}.")
    make_optimizer = getattr(module, OPTIMIZER_FACTORY, None)
    if make_optimizer is not None and not callable(make_optimizer):
        raise UsageError(f"{path}: `{OPTIMIZER_FACTORY}` must be a function {OPTIMIZER_FACTORY}(model) that "
                         f"returns a torch.optim.Optimizer, got {type(make_optimizer).__name__}.")
    return loss_fn, make_optimizer


@dataclass
class WidthFamily:
    """A model file for ``gradscope coordcheck``: ``build_model(width)``, the inputs at a width, the
    optional loss and ``build_optimizer(model)``."""

    path: Path
    build_model: Callable[[int], nn.Module]
    inputs: Callable[[int], object]
    inputs_from: str
    loss_fn: Callable | None
    factory: str
    make_optimizer: Callable | None = None


def load_width_family(path: str | Path, factory: str | None = None, seed: int = 0,
                      script_args: Sequence[str] = ()) -> WidthFamily:
    """Run the file at ``path`` (as :func:`load` does) and find a model factory that takes the width
    (``build_model(width)``, or the function named by ``factory``) and the inputs at a width: the
    file's ``example_input(width)`` (or ``example_input()``, or a value, the same at every width),
    else inputs inferred from the model of that width."""
    path = Path(path)
    with script_argv(path, script_args):
        module = load_module(path)
    names = [factory] if factory else list(FACTORIES)
    found = next(((name, getattr(module, name)) for name in names if getattr(module, name, None) is not None), None)
    if found is None or isinstance(found[1], nn.Module) or not callable(found[1]):
        what = "is not a function" if found is not None else "has none"
        raise UsageError(
            f"{path}: the coordinate check needs a function that builds the model at a given width, "
            f"`def build_model(width): ...`, looked for {', '.join(f'{n}(width)' for n in names)}: {path.name} {what}. "
            "Add one, or name yours with --factory NAME.")
    name, build = found
    if _positional_count(build) < 1:
        raise UsageError(f"{path}: {name}() takes no width; the coordinate check calls {name}(width) at each width "
                         f"(e.g. `def {name}(width): return MLP(hidden=width)`).")
    loss_fn, make_optimizer = _recipe_functions(module, path)
    example = next(((n, getattr(module, n)) for n in INPUTS if getattr(module, n, None) is not None), None)
    if example is not None:
        label, given = example
        takes_width = callable(given) and _positional_count(given) >= 1

        def inputs(width: int):
            try:
                value = (given(width) if takes_width else given()) if callable(given) else given
            except Exception as e:
                raise UsageError(f"{path}: {label}({width if takes_width else ''}) raised {raised(e)}{where_in(e, path)}") from e
            if not isinstance(value, (torch.Tensor, tuple, list, dict)):
                raise UsageError(f"{path}: {label}() returned {type(value).__name__}; return a tensor, a tuple of "
                                 "positional arguments or a dict of keyword arguments.")
            return tuple(value) if isinstance(value, list) else value

        return WidthFamily(path, build, inputs, f"{label}({'width' if takes_width else ''})", loss_fn, f"{name}(width)",
                           make_optimizer)
    inferred: dict[int, object] = {}

    def inputs(width: int):
        if width not in inferred:
            with torch.random.fork_rng(devices=[]):
                inferred[width] = infer_inputs(build(width), str(path), seed)[0]
        return inferred[width]

    return WidthFamily(path, build, inputs, "inferred from the layers at each width", loss_fn, f"{name}(width)",
                       make_optimizer)


def _positional_count(fn) -> int:
    """How many positional arguments ``fn`` can take (2**31 for ``*args``); 1 when unknown."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return 2**31
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


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
        raise UsageError(f"{path}: {name} raised {raised(e)}{where_in(e, path)}") from e
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
    if factory is not None and not factory.isidentifier():
        return _model_from(_evaluate(module, path, factory), factory, path)
    for name in [factory] if factory else FACTORIES:
        obj = getattr(module, name, None)
        if obj is not None:
            return _model_from(obj, name, path)
    if factory:
        raise UsageError(f"{path} has no `{factory}` (given with --factory); define it or drop --factory.{_defined_models(module)}")
    model = getattr(module, "model", None)
    if isinstance(model, nn.Module):
        return model, "model"
    looked = ", ".join(f"{n}()" for n in FACTORIES)
    raise UsageError(
        f"No model found in {path}: looked for {looked} and a module-level `model` (an nn.Module). "
        f"Add `def build_model(): return MyModel()`, or name your function with --factory NAME.{_defined_models(module)}"
    )


def _model_from(obj, label: str, path: Path) -> tuple[nn.Module, str]:
    """The model that ``obj`` (named, or evaluated from, ``label``) is or returns when called."""
    if isinstance(obj, nn.Module):
        return obj, label
    if not callable(obj):
        kind = type(obj).__name__
        article = "an" if kind[:1].lower() in "aeiou" else "a"
        raise UsageError(f"{path}: `{label}` is {article} {kind}, not a function or an nn.Module.")
    try:
        model = obj()
    except Exception as e:
        raise UsageError(f"{path}: {label}() raised {raised(e)}{where_in(e, path)}{_arguments_hint(obj, label, e)}") from e
    if not isinstance(model, nn.Module):
        raise UsageError(f"{path}: {label}() returned {type(model).__name__}; it must return a torch.nn.Module.")
    return model, f"{label}()"


def _evaluate(module, path: Path, expression: str):
    """``--factory EXPRESSION`` evaluated with the file's globals (its classes, functions, imports)."""
    try:
        code = compile(expression, "<--factory>", "eval")
    except SyntaxError as e:
        raise UsageError(
            f"--factory {expression!r} is neither a name nor a Python expression ({e.msg}); give a "
            f"function or nn.Module of {path} by name (--factory make_net) or an expression evaluated "
            "in it (--factory \"Net(width=64)\")."
        ) from e
    try:
        return eval(code, vars(module))  # the user's own expression, run as their file is run
    except Exception as e:
        raise UsageError(f"--factory {expression!r}, evaluated in {path}, raised {raised(e)}{where_in(e, path)}.") from e


def _arguments_hint(obj, label: str, error: Exception) -> str:
    """For a constructor or function called without the arguments it needs: how to pass them."""
    if not isinstance(error, TypeError):
        return ""
    try:
        parameters = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return ""
    required = [p.name for p in parameters if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if not required:
        return ""
    arguments = ", ".join(f"{name}=..." for name in required)
    return (f". {label} takes {', '.join(required)}: pass {'it' if len(required) == 1 else 'them'} in an "
            f"expression evaluated in the file, --factory \"{label}({arguments})\"")


def _defined_models(module) -> str:
    """A hint naming the nn.Module classes the file defines and the nn.Module objects it holds."""
    found = vars(module)
    classes = [n for n, v in found.items() if isinstance(v, type) and issubclass(v, nn.Module)
               and v.__module__ == module.__name__]
    objects = [n for n, v in found.items() if isinstance(v, nn.Module) and not n.startswith("_")
               and next(v.parameters(), None) is not None]  # not a loss module (criterion = nn.BCELoss())
    hints = []
    if objects:
        hints.append(f"It holds the nn.Module objects {', '.join(objects)}: --factory {objects[0]} takes one")
    if classes:  # the last is most often the whole model, built from the others
        hints.append(f"it defines the nn.Module classes {', '.join(classes)}: --factory \"{classes[-1]}(...)\" "
                     "builds one, with the constructor's arguments as in Python")
    if not hints:
        return ""
    text = "; ".join(hints) + "."
    return " " + text[0].upper() + text[1:]


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
            raise UsageError(f"{path}: {name}() raised {raised(e)}{where_in(e, path)}") from e
        if not isinstance(inputs, (torch.Tensor, tuple, list, dict)):
            raise UsageError(
                f"{path}: {name}() returned {type(inputs).__name__}; return a tensor, a tuple of "
                "positional arguments or a dict of keyword arguments."
            )
        return (tuple(inputs) if isinstance(inputs, list) else inputs), f"{name}()"
    return infer_inputs(model, str(path), seed)


def _from_shape(shape: str, dtype: str, model: nn.Module, seed: int = 0):
    try:  # every part a size: "8,x" or "16,,8" is a typo, not a shorter shape
        dims = tuple(int(d) for d in shape.replace("x", ",").split(","))
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
