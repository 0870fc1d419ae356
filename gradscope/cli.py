"""The ``gradscope`` command line: a thin front over the same pieces as the Python API.

``diagnose FILE`` loads a model file and its training recipe (gradscope.loading), runs
gradscope.diagnose and renders the report, verdict first (gradscope.reporters); ``check FILE``
gates it against a baseline (gradscope.baseline);
``coordcheck FILE`` runs the µP coordinate check over widths (gradscope.coordcheck);
``rules`` and ``explain`` read the rule registry. Usage errors exit 2 with a short message: bad
options, a model file that raises or exits, an output that cannot be written. User text (paths,
names, exception messages) is printed as text, never as rich markup, with control characters
escaped; every output file is written atomically (gradscope.atomic).
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import sys
import threading
import time
import traceback
from enum import Enum
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.console import Console
from rich.text import Text

from gradscope.errors import UsageError
from gradscope.reporters.escape import WorkflowCommandGuard, show_controls

app = typer.Typer(
    name="gradscope",
    help="gradscope: see, name and fix gradient-flow problems in PyTorch models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class FailOn(str, Enum):
    """A severity (gates on findings) or a verdict (gates on the verdict); gradscope.baseline.compare."""

    never = "never"
    info = "info"
    warning = "warning"
    error = "error"
    at_risk = "at-risk"
    fails = "fails"


class OptimizerName(str, Enum):
    """The keys of gradscope.loading.OPTIMIZERS (named here so that --help imports no torch)."""

    sgd = "sgd"
    adam = "adam"
    adamw = "adamw"


class DeviceName(str, Enum):
    cpu = "cpu"
    cuda = "cuda"
    auto = "auto"


File = Annotated[Path, typer.Argument(help="Python file that defines the model (build_model(), get_model(), create_model() or `model`).", show_default=False)]
ScriptArgs = Annotated[Optional[List[str]], typer.Argument(metavar="-- ARGS", help="FILE's own command-line arguments, after `--` (FILE is loaded with sys.argv = [FILE, *ARGS]).", show_default=False)]
Factory = Annotated[Optional[str], typer.Option("--factory", help="Name of the function (or nn.Module) in FILE that gives the model, or a Python expression evaluated in FILE, e.g. \"GPT(GPTConfig(n_layer=4))\".")]
InputShape = Annotated[Optional[str], typer.Option("--input-shape", help="Shape of a random input, e.g. 32,3,64,64, when FILE has no example_input().")]
InputDtype = Annotated[Optional[str], typer.Option("--input-dtype", help="dtype of --input-shape inputs: float (default), double, half, bfloat16, long, int.", show_default=False)]
Steps = Annotated[int, typer.Option("--steps", min=1, help="Monitored training steps, each a forward/backward and an optimizer step; a single step with no recipe given updates nothing.")]
Optimizer = Annotated[Optional[OptimizerName], typer.Option("--optimizer", help="The recipe's optimizer (default: build_optimizer(model) in FILE, else SGD lr 0.01 momentum 0.9, said to be assumed). Any recipe option overrides build_optimizer.", show_default=False)]


def _finite(expected: str, example: str, holds):
    """A typer callback: None, or a finite number for which ``holds`` is true."""
    def check(value: Optional[float]) -> Optional[float]:
        if value is not None and not (math.isfinite(value) and holds(value)):
            raise typer.BadParameter(f"{value} is not {expected}; give {example}.")
        return value
    return check


def _seed(value: int) -> int:
    if not 0 <= value < 2**63:
        raise typer.BadParameter(f"{value} is not a seed torch takes; give an integer from 0 to 2**63 - 1.")
    return value


def _probe_steps(value: Optional[int]) -> Optional[int]:
    if value is not None and value < 0:
        raise typer.BadParameter(f"{value} is not a number of steps; give an integer >= 0, such as 10 (0: no probe).")
    return value


_learning_rate = _finite("a positive finite number", "a learning rate such as 0.01", lambda v: v > 0)
_momentum = _finite("a number from 0 up to (not including) 1", "a momentum such as 0.9", lambda v: 0 <= v < 1)
_weight_decay = _finite("a finite number >= 0", "a weight decay such as 0.01", lambda v: v >= 0)
_clip = _finite("a positive finite number", "a gradient-norm limit such as 1.0", lambda v: v > 0)
_tolerance = _finite("a finite number >= 0", "orders of magnitude such as 1", lambda v: v >= 0)

LearningRate = Annotated[Optional[float], typer.Option("--lr", callback=_learning_rate, help="The recipe's learning rate (default: 0.01 for sgd, 0.001 for adam and adamw).", show_default=False)]
Momentum = Annotated[Optional[float], typer.Option("--momentum", callback=_momentum, help="SGD's momentum, or Adam's and AdamW's first beta (default 0.9).", show_default=False)]
WeightDecay = Annotated[Optional[float], typer.Option("--weight-decay", callback=_weight_decay, help="The recipe's weight decay (default: 0, 0.01 for adamw).", show_default=False)]
Clip = Annotated[Optional[float], typer.Option("--clip", callback=_clip, help="Clip the total gradient norm to this in the recipe probe (clip_grad_norm); with build_optimizer too.", show_default=False)]
# None stands for gradscope.diagnose.PROBE_STEPS, which the help names (a test holds them equal):
# that module imports torch, which `gradscope --help` must not
ProbeSteps = Annotated[Optional[int], typer.Option("--probe-steps", callback=_probe_steps, help="Optimizer steps of the recipe probe that decides the verdict (default 10; 0: no probe, the verdict rests on the findings).", show_default=False)]
Seed = Annotated[int, typer.Option("--seed", callback=_seed, help="Seed for the model's init, the inputs and the default loss.")]
Device = Annotated[DeviceName, typer.Option("--device", help="Where to run: cpu, cuda, or auto (cuda when available).")]
JsonOut = Annotated[Optional[Path], typer.Option("--json", help="Write the JSON report here (format: docs/diagnose.md).")]
HtmlOut = Annotated[Optional[Path], typer.Option("--html", help="Write the self-contained HTML report here.")]
MarkdownOut = Annotated[Optional[Path], typer.Option("--markdown", help="Write a markdown report here.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors in the model file.")]
AllLayers = Annotated[bool, typer.Option("--all-layers", help="List container modules too, not only leaf layers.")]

# A line of user text that starts with "::" would be a workflow command under GitHub Actions, which
# reads both streams; the guards put a backslash before it.
_out = Console(file=WorkflowCommandGuard("stdout"), highlight=False)
_err = Console(file=WorkflowCommandGuard("stderr"), highlight=False)


def _text(message: str) -> Text:
    """User text as rich Text (never parsed as markup), control characters shown as escapes."""
    return Text("\n".join(show_controls(line) for line in message.splitlines()))


def _say(message: str) -> None:
    """A result line: wrapped to a terminal's width; piped (a CI log), one line, so that it greps."""
    _out.print(_text(message), soft_wrap=not _out.is_terminal)


def _message(error: BaseException) -> str:
    message = str(error) if isinstance(error, UsageError) else f"{type(error).__name__}: {error}"
    return message.split("\nException raised from ")[0]  # torch's C++ backtrace


def _fail_usage(error: BaseException, debug: bool) -> None:
    if debug:
        traceback.print_exception(error)
    message = _message(error)
    _err.print(Text("error:", style="bold red") + " " + _text(message), soft_wrap=True)
    if not debug:
        _err.print("(run with --debug for the traceback)", style="dim")
    raise typer.Exit(code=2)


def _exited(error: BaseException, file: Path, doing: str, script_args: list[str]) -> UsageError:
    """The usage error for user code that exits (``sys.exit``) or raises a ``BaseException``
    that is not an ``Exception``: exit 2, never the exit code the file chose."""
    from gradscope.loading import raised, where_in

    where = where_in(error, file)
    if isinstance(error, SystemExit):
        what = f"called sys.exit({error.code!r}){where}"
    else:
        what = f"raised {raised(error)}{where}"
    argv = ""
    if doing == "loading":  # a script that checks its command line at import exits there
        argv = (f" It was loaded with sys.argv = {[str(file), *script_args]!r}; give it arguments after "
                f"`--`, e.g. gradscope diagnose {file} -- ARGS.")
    return UsageError(
        f"{file} {what} while gradscope was {doing} it; a model file must define the model without "
        f"exiting. Put script code under `if __name__ == \"__main__\":`.{argv}"
    )


def _guessed(error: Exception, loaded) -> UsageError:
    """``error`` from a run on guessed inputs, with the note that they were guessed and how to give them."""
    guessed = UsageError(
        f"{_message(error).rstrip()} The input was guessed ({loaded.inputs_from}); if the model takes "
        "another, give its shape with --input-shape (--input-dtype long for token ids) or define "
        "example_input() in the file."
    )
    guessed.__cause__ = error  # --debug shows the model's traceback
    return guessed


@contextlib.contextmanager
def _writing(what: str, path: Path, debug: bool):
    """Map a failed write (no space, read-only, a file or directory in the way) to exit 2."""
    try:
        yield
    except OSError as e:
        reason = e.strerror or str(e)
        if e.filename is not None and Path(e.filename) != Path(path) and str(e.filename) not in reason:
            reason += f": {e.filename}"
        _fail_usage(UsageError(f"Cannot write {what} to {path}: {reason}. Give a path in a writable "
                               "directory with free space."), debug)


def _refuse_outputs_over_inputs(debug: bool, reading: Path, **outputs: Optional[Path]) -> None:
    """Exit 2 before any work when an output would overwrite what the command reads: the model
    file, or a file of the run directory (``--json model.py`` is a typo that would lose the
    user's source)."""
    source = Path(reading).resolve()
    for option, path in outputs.items():
        if path is None:
            continue
        target = Path(path).resolve()
        if target == source or (source.is_dir() and source in target.parents):
            what = "the model file" if target == source and source.is_file() else "a file of the run directory"
            _fail_usage(UsageError(
                f"{option} {path} is {what} this command reads ({reading}); writing there would "
                "overwrite it. Give another path."), debug)


def _run_diagnose(file, factory, input_shape, input_dtype, steps, seed, device, debug, *, recipe, clip, probe_steps,
                  script_args):
    """``recipe``: the values of --optimizer, --lr, --momentum and --weight-decay; ``script_args``:
    the file's own command line (after ``--``)."""
    import random

    import numpy as np
    import torch

    from gradscope.diagnose import diagnose as diagnose_model, refuse_without_values_or_gradients
    from gradscope.loading import RecipeOptions, choose_optimizer, load

    doing, loaded, script_args = "loading", None, list(script_args or [])
    try:
        if device == DeviceName.cuda and not torch.cuda.is_available():
            raise UsageError("--device cuda was given but CUDA is not available here; use --device cpu or auto.")
        if input_dtype is not None and input_shape is None:
            raise UsageError(f"--input-dtype {input_dtype} was given without --input-shape; it sets the dtype "
                             "of --input-shape inputs only. Add --input-shape (e.g. 8,16) or drop --input-dtype.")
        torch.manual_seed(seed)  # the file's init draws from all three
        random.seed(seed)
        np.random.seed(seed % 2 ** 32)
        loaded = load(file, factory, input_shape, input_dtype or "float", seed, script_args)
        target = "cuda" if device == DeviceName.cuda or (device == DeviceName.auto and torch.cuda.is_available()) else "cpu"
        refuse_without_values_or_gradients(loaded.model)  # before .to(), which fails less clearly
        model = loaded.model.to(target)
        name, lr, momentum, weight_decay = recipe
        opt, recipe_from = choose_optimizer(loaded, model, RecipeOptions(
            name.value if name is not None else None, lr, momentum, weight_decay))
        doing = "running"
        run = dict(clip_grad_norm=clip, seed=seed, **({} if probe_steps is None else {"probe_steps": probe_steps}))
        if steps > 1 and _out.is_terminal:
            from rich.progress import Progress

            with Progress(transient=True, console=_err) as bar:
                task = bar.add_task(f"{steps} steps", total=steps)
                report = diagnose_model(model, loaded.inputs, loaded.loss_fn, steps, opt, **run,
                                        progress=lambda done, total: bar.update(task, completed=done))
        else:
            report = diagnose_model(model, loaded.inputs, loaded.loss_fn, steps, opt, **run)
    except Exception as e:  # noqa: BLE001 - anything the user's file does wrong is exit 2
        if doing == "running" and loaded.inputs_guessed:
            _fail_usage(_guessed(e, loaded), debug)
        if doing == "running" and input_shape is not None and input_dtype is None and "Long, Int" in str(e):
            hint = UsageError(f"{_message(e).rstrip()} The model takes integer inputs (token ids): add "
                              "--input-dtype long to --input-shape.")
            hint.__cause__ = e
            _fail_usage(hint, debug)
        _fail_usage(e, debug)
    except KeyboardInterrupt:
        raise  # Ctrl-C: exit 130
    except BaseException as e:  # sys.exit() or another BaseException from the user's code
        _fail_usage(_exited(e, file, doing, script_args), debug)
    report.model.update({"file": str(file), "factory": loaded.factory, "inputs": loaded.inputs_from,
                         "device": target})
    report.options["recipe_from"] = recipe_from
    return report


def _title(report) -> str:
    return f"{report.model['file']}: {report.model['class']} ({report.model['factory']}), inputs {report.model['inputs']}"


def _write_outputs(report, title: str, debug: bool, json_path=None, markdown_path=None, html_path=None,
                   coordcheck: bool = False) -> None:
    """Each output that was asked for; a coordinate check's report has its own Markdown and HTML."""
    from gradscope.atomic import write_atomic
    from gradscope.reporters import markdown

    if json_path is not None:
        with _writing("the JSON report", json_path, debug):
            write_atomic(json_path, report.to_json() + "\n")
    if markdown_path is not None:
        render = markdown.coordcheck_markdown if coordcheck else markdown.report_markdown
        with _writing("the markdown report", markdown_path, debug):
            write_atomic(markdown_path, render(report, title))
    if html_path is not None:
        from gradscope.reporters import html  # plotly: loaded only when an HTML report is asked for

        write = html.write_coordcheck_html if coordcheck else html.write_html
        with _writing("the HTML report", html_path, debug):
            write(report, html_path, title)


def _exit_code(report, fail_on: FailOn) -> int:
    """1 when ``report`` fails ``fail_on``: the check without a baseline."""
    from gradscope.baseline import compare

    return int(compare(report, None, fail_on.value, 0.0).failed)


@app.command()
def diagnose(
    file: File,
    script_args: ScriptArgs = None,
    factory: Factory = None,
    input_shape: InputShape = None,
    input_dtype: InputDtype = None,
    steps: Steps = 1,
    optimizer: Optimizer = None,
    lr: LearningRate = None,
    momentum: Momentum = None,
    weight_decay: WeightDecay = None,
    clip: Clip = None,
    probe_steps: ProbeSteps = None,
    seed: Seed = 0,
    device: Device = DeviceName.cpu,
    json: JsonOut = None,
    html: HtmlOut = None,
    markdown: MarkdownOut = None,
    fail_on: Annotated[FailOn, typer.Option("--fail-on", help="Exit 1 when a finding at this severity or above is found (info, warning, error), or when the verdict is this or worse (at-risk: at-risk or fails; fails: fails only); never: exit 0.")] = FailOn.never,
    all_layers: AllLayers = False,
    debug: Debug = False,
) -> None:
    """Run a model file for a few steps and a probe of its training recipe; report the verdict
    (trains, at-risk, fails), its gradient flow and the problems found."""
    from gradscope.reporters.terminal import TerminalReport

    _refuse_outputs_over_inputs(debug, file, **{"--json": json, "--html": html, "--markdown": markdown})
    report = _run_diagnose(file, factory, input_shape, input_dtype, steps, seed, device, debug,
                           recipe=(optimizer, lr, momentum, weight_decay), clip=clip, probe_steps=probe_steps,
                           script_args=script_args)
    TerminalReport(report, title=_title(report), all_layers=all_layers).print(_out)
    _write_outputs(report, _title(report), debug, json, markdown, html)
    raise typer.Exit(code=_exit_code(report, fail_on))


@app.command()
def check(
    file: File,
    script_args: ScriptArgs = None,
    baseline: Annotated[Optional[Path], typer.Option("--baseline", help="Baseline JSON to compare with; without it, only --fail-on gates.")] = None,
    update_baseline: Annotated[bool, typer.Option("--update-baseline", help="Write (or refresh) the baseline from this run and exit 0.")] = False,
    tolerance: Annotated[float, typer.Option("--tolerance", callback=_tolerance, help="Orders of magnitude a layer's signal may move against the baseline.")] = 1.0,
    fail_on: Annotated[FailOn, typer.Option("--fail-on", help="A severity (info, warning, error): new findings at or above it fail the check; a verdict (at-risk, fails): the verdict at it or worse fails; never: neither. A verdict worse than the baseline's, or a moved signal, fails whatever this is.")] = FailOn.error,
    junit: Annotated[Optional[Path], typer.Option("--junit", help="Write JUnit XML here.")] = None,
    factory: Factory = None,
    input_shape: InputShape = None,
    input_dtype: InputDtype = None,
    steps: Steps = 1,
    optimizer: Optimizer = None,
    lr: LearningRate = None,
    momentum: Momentum = None,
    weight_decay: WeightDecay = None,
    clip: Clip = None,
    probe_steps: ProbeSteps = None,
    seed: Seed = 0,
    device: Device = DeviceName.cpu,
    json: JsonOut = None,
    table: Annotated[bool, typer.Option("--table", help="Print the per-layer table too (the log holds the verdict, the findings and the comparison).")] = False,
    debug: Debug = False,
) -> None:
    """CI gate: fail when a model change worsens the verdict, brings new findings or moves the
    gradient flow."""
    from gradscope.baseline import compare, read_baseline, write_baseline
    from gradscope.reporters.ci import append_step_summary, github_annotations, write_junit
    from gradscope.reporters.terminal import TerminalReport
    from gradscope.reporters.verdict import comparison_lines

    if update_baseline and baseline is None:
        _fail_usage(UsageError("--update-baseline needs --baseline PATH: where to write the baseline."), debug)
    _refuse_outputs_over_inputs(debug, file, **{"--json": json, "--junit": junit,
                                                "--baseline": baseline if update_baseline else None})
    known = None
    if baseline is not None and not update_baseline:
        try:
            known = read_baseline(baseline)
        except UsageError as e:
            _fail_usage(e, debug)
    report = _run_diagnose(file, factory, input_shape, input_dtype, steps, seed, device, debug,
                           recipe=(optimizer, lr, momentum, weight_decay), clip=clip, probe_steps=probe_steps,
                           script_args=script_args)
    _write_outputs(report, _title(report), debug, json_path=json)
    if update_baseline:
        with _writing("the baseline", baseline, debug):
            write_baseline(report, baseline)
        _say(f"Baseline written to {baseline} (verdict {report.verdict.label if report.verdict else 'none'}, "
             f"{len(report.findings)} findings, {len(report.layers)} layers).")
        raise typer.Exit(code=0)
    comparison = compare(report, known, fail_on.value, tolerance)
    for fails, line in comparison_lines(comparison):
        _say(("FAIL " if fails else "") + line)
    TerminalReport(report, title=_title(report)).print(_out, table=table)
    for f in comparison.new_findings:
        _say(f"FAIL new {f.severity} finding: {f.code} {f.rule} at {', '.join(f.layers[:6])}")
    if comparison.moved:
        _say(f"FAIL {len(comparison.moved)} layers' backpropagated signal moved by more than "
             f"{tolerance:g} orders of magnitude against {baseline}:")
        for layer, (old, new) in comparison.moved.items():
            _say(f"  {layer or '(model)'}: {old:.2e} -> {new:.2e}")
    if comparison.missing_layers or comparison.added_layers:
        _say(f"Layers since the baseline: {len(comparison.missing_layers)} gone, "
             f"{len(comparison.added_layers)} new (compared on the {comparison.compared_layers} in both).")
    if os.environ.get("GITHUB_ACTIONS") == "true":
        for line in github_annotations(report, comparison, str(file)):
            print(line)
        summary_path = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary_path:
            with _writing("the step summary", Path(summary_path), debug):
                append_step_summary(report, comparison, _title(report))
    if junit is not None:
        with _writing("the JUnit XML", junit, debug):
            write_junit(report, comparison, junit, Path(file).stem)
    _out.print("Gradient-flow check " + ("FAILED." if comparison.failed else "passed."))
    raise typer.Exit(code=1 if comparison.failed else 0)


def _widths(value: str) -> str:
    try:
        widths = [int(w) for w in value.replace(" ", "").split(",") if w]
    except ValueError:
        widths = []
    if len(set(widths)) < 2 or any(w < 1 for w in widths):
        raise typer.BadParameter(f"{value!r} is not a list of 2 or more different positive widths; give e.g. "
                                 "64,128,256,512.")
    return value


@app.command()
def coordcheck(
    file: Annotated[Path, typer.Argument(help="Python file with build_model(width) (the model at a width), and "
                                              "optionally example_input(width), loss_fn and build_optimizer(model).",
                                         show_default=False)],
    script_args: ScriptArgs = None,
    widths: Annotated[str, typer.Option("--widths", callback=_widths, help="The widths to compare, e.g. 64,128,256,512.")] = "64,128,256,512",
    steps: Annotated[int, typer.Option("--steps", min=1, help="Training steps (updates) per width and seed.")] = 5,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Seeds per width (0, 1, …): each slope's error bar is their spread.")] = 3,
    factory: Annotated[Optional[str], typer.Option("--factory", help="Name of the function in FILE that builds the model at a width (default build_model).")] = None,
    optimizer: Annotated[Optional[OptimizerName], typer.Option("--optimizer", help="The optimizer of every run (default: build_optimizer(model) in FILE, else adam). Any recipe option overrides build_optimizer.", show_default=False)] = None,
    lr: LearningRate = None,
    momentum: Momentum = None,
    weight_decay: WeightDecay = None,
    json: JsonOut = None,
    html: HtmlOut = None,
    markdown: MarkdownOut = None,
    fail_on: Annotated[FailOn, typer.Option("--fail-on", help="Exit 1 when a finding at this severity or above is found (info, warning, error); never: exit 0.")] = FailOn.never,
    debug: Debug = False,
) -> None:
    """The µP coordinate check: train the model a few steps at several widths and seeds, and say
    which layers' activations or updates grow or shrink with width, and the fix."""
    from gradscope.coordcheck import coordcheck as run_coordcheck
    from gradscope.loading import RecipeOptions, _file_optimizer, load_width_family
    from gradscope.reporters.terminal import CoordTerminalReport

    if fail_on in (FailOn.at_risk, FailOn.fails):
        _fail_usage(UsageError(f"--fail-on {fail_on.value} gates on diagnose's verdict, which the coordinate check "
                               "has none of; give a severity: info, warning or error."), debug)
    _refuse_outputs_over_inputs(debug, file, **{"--json": json, "--html": html, "--markdown": markdown})
    sizes = sorted({int(w) for w in widths.replace(" ", "").split(",") if w})
    options = RecipeOptions(optimizer.value if optimizer is not None else None, lr, momentum, weight_decay)
    try:
        family = load_width_family(file, factory, 0, list(script_args or []))
        if options.given:
            recipe = RecipeOptions(options.optimizer or "adam", lr, momentum, weight_decay).build
        elif family.make_optimizer is not None:
            recipe = lambda model: _file_optimizer(family, model)  # noqa: E731 - checked like diagnose's
        else:
            recipe = RecipeOptions("adam").build
        if _out.is_terminal:
            from rich.progress import Progress

            with Progress(transient=True, console=_err) as bar:
                task = bar.add_task(f"{len(sizes)} widths × {seeds} seeds", total=len(sizes) * seeds)
                report = run_coordcheck(family.build_model, sizes, family.inputs, family.loss_fn, recipe, steps=steps,
                                        seeds=seeds, progress=lambda done, total: bar.update(task, completed=done))
        else:
            report = run_coordcheck(family.build_model, sizes, family.inputs, family.loss_fn, recipe, steps=steps,
                                    seeds=seeds)
    except Exception as e:  # noqa: BLE001 - anything the user's file does wrong is exit 2
        _fail_usage(e, debug)
    except KeyboardInterrupt:
        raise
    except BaseException as e:
        _fail_usage(_exited(e, file, "running", list(script_args or [])), debug)
    report.options.update({"file": str(file), "factory": family.factory, "inputs": family.inputs_from})
    title = f"{file}: {family.factory}, inputs {family.inputs_from}"
    CoordTerminalReport(report, title).print(_out)
    _write_outputs(report, title, debug, json, markdown, html, coordcheck=True)
    worst = report.worst
    from gradscope.rules import SEVERITIES

    failed = fail_on != FailOn.never and worst is not None and SEVERITIES.index(worst) >= SEVERITIES.index(fail_on.value)
    raise typer.Exit(code=int(failed))


RunDir = Annotated[Path, typer.Argument(help="A run directory written by gradscope.monitor(..., log_dir=RUN_DIR).", show_default=False)]


def _load_run(run_dir: Path, debug: bool):
    from gradscope.report import load_run_report

    try:
        report = load_run_report(run_dir)
    except UsageError as e:
        _fail_usage(e, debug)
    if report.history.empty:
        _fail_usage(UsageError(
            f"{run_dir} holds no complete logged step yet (the first history part is written "
            "once the first logged step has ended, later ones every flush_every logged steps "
            "and when the monitor stops)."), debug)
    return report


def _run_title(report) -> str:
    status = report.options.get("status")
    return (f"{report.model.get('run_dir')}: {report.model.get('class', 'model')}, "
            f"{report.options['steps']} logged steps up to step {report.options['last_step']}"
            + (f" (run {status})" if status else ""))


@app.command()
def summary(
    run_dir: RunDir,
    all_layers: AllLayers = False,
    json: JsonOut = None,
    markdown: MarkdownOut = None,
    debug: Debug = False,
) -> None:
    """Print the terminal report of a past (or running) training run: the layers at its last
    logged step and the rules over its history."""
    from gradscope.reporters.terminal import TerminalReport

    _refuse_outputs_over_inputs(debug, run_dir, **{"--json": json, "--markdown": markdown})
    report = _load_run(run_dir, debug)
    TerminalReport(report, title=_run_title(report), all_layers=all_layers).print(_out)
    _write_outputs(report, _run_title(report), debug, json, markdown)


@app.command()
def report(
    run_dir: RunDir,
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the HTML report.")] = Path("gradscope-report.html"),
    debug: Debug = False,
) -> None:
    """Render a run directory as a self-contained HTML report (opens offline)."""
    from gradscope.reporters.html import write_html

    _refuse_outputs_over_inputs(debug, run_dir, **{"--output": output})
    found = _load_run(run_dir, debug)
    with _writing("the HTML report", output, debug):
        path = write_html(found, output, _run_title(found))
    _say(f"Wrote {path} ({path.stat().st_size / 1e6:.1f} MB).")


@app.command()
def rules() -> None:
    """List every rule: code, slug, severity and what it flags."""
    from rich.table import Table

    from gradscope.rules import RULES

    table = Table(show_edge=False, pad_edge=False)
    for column in ("code", "rule", "severity", "what it flags"):
        table.add_column(column)
    for rule in RULES:
        table.add_row(rule.code, rule.slug, rule.severity, rule.summary)
    _out.print(table)
    _out.print("gradscope explain RULE_OR_CODE prints a rule's documentation.")


@app.command()
def explain(
    rule: Annotated[str, typer.Argument(help="A rule's slug (vanishing-gradient) or code (GS101).", show_default=False)],
) -> None:
    """Print a rule's documentation: what it checks, why it matters, an example, the fix."""
    from rich.markdown import Markdown

    from gradscope.rules import find_rule
    from gradscope.rules.docs import rule_markdown

    try:
        found = find_rule(rule)
    except UsageError as e:
        _fail_usage(e, False)
    text = rule_markdown(found)
    if _out.is_terminal:
        _out.print(Markdown(text))
    else:
        _out.print(text, soft_wrap=True, markup=False)


@app.command()
def version() -> None:
    """Print the versions of gradscope and torch."""
    import torch

    from gradscope.version import __version__

    typer.echo(f"gradscope {__version__} (torch {torch.__version__})")


@app.callback()
def main() -> None:
    """gradscope: see, name and fix gradient-flow problems in PyTorch models."""


THREADS_GRACE_S = 2.0


def _threads_left() -> list[threading.Thread]:
    """Threads that would keep the process alive at its exit: started (by a model file) and still
    running, not daemons."""
    return [t for t in threading.enumerate()
            if t is not threading.main_thread() and not t.daemon and t.is_alive()]


def _exit_status(code) -> int:
    """sys.exit's reading of its argument: None is 0, an int is itself, anything else is printed and is 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def run() -> None:
    """The ``gradscope`` console script: the command, then an exit that does not hang on threads a
    model file started and left running (a data-loading or logging thread that is not a daemon),
    where Python's own exit would wait for them forever. Such threads get THREADS_GRACE_S to end;
    then a warning names them and the process exits with the command's status, after its exit
    handlers have run."""
    try:
        app(prog_name="gradscope")
        code = 0
    except SystemExit as e:
        code = e.code
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # noqa: BLE001 - printed as Python would, then the same exit
        traceback.print_exc()
        code = 1
    try:
        deadline = time.monotonic() + THREADS_GRACE_S
        for thread in _threads_left():
            thread.join(max(0.0, deadline - time.monotonic()))
    except KeyboardInterrupt:  # Ctrl-C while waiting: leave now
        code = 130
    left = _threads_left()
    if not left:
        sys.exit(code)
    status = _exit_status(code)
    names = ", ".join(repr(t.name) for t in left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
    print(f"gradscope: {len(left)} thread(s) that the model file started are still running ({names}) and "
          "are not daemons; exiting without waiting for them. Start such threads with daemon=True, or "
          "stop them when the model is built.", file=sys.stderr)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    run()
