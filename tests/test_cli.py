"""The gradscope command line, run as a user would (typer's CliRunner), on model files written
for each test."""

from __future__ import annotations

import json
import re
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradscope.cli import app
from tests.golden import pin_consoles


@pytest.fixture(autouse=True)
def wide_consoles(monkeypatch):
    """Every console at 200 columns, whatever the terminal: the assertions read sentences that an
    80-column console would break across lines (the golden fixture pins its own width)."""
    pin_consoles(monkeypatch, 200)

ENV = {"COLUMNS": "100", "NO_COLOR": "1", "GITHUB_ACTIONS": "", "GITHUB_STEP_SUMMARY": ""}

SIGMOID = """
    import torch.nn as nn

    DEPTH = 12

    def build_model():
        layers = [m for _ in range(DEPTH) for m in (nn.Linear(32, 32), nn.Sigmoid())]
        return nn.Sequential(*layers, nn.Linear(32, 4))
"""

RELU = """
    import torch.nn as nn

    def build_model():
        layers = []
        for _ in range(6):
            linear = nn.Linear(32, 32)
            nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
            layers += [linear, nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(32, 4))
"""


def write(tmp_path: Path, source: str, name: str = "model.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


def run(*args: str, env: dict | None = None):
    result = CliRunner().invoke(app, [str(a) for a in args], env={**ENV, **(env or {})})
    return result


def said(result) -> str:
    """The output with its line breaks and padding folded into single spaces, to match sentences."""
    return " ".join(result.output.split())


def test_diagnose_prints_the_layer_table_and_findings_without_colour_codes(tmp_path):
    result = run("diagnose", write(tmp_path, SIGMOID))
    assert result.exit_code == 0, result.output
    assert "ERROR GS101 vanishing-gradient" in result.output
    assert "inputs inferred from layer 0 (Linear), the first layer the input reaches: shape (16, 32)" in result.output
    assert "\x1b[" not in result.output
    assert "insert_pseudo_norm(model, every=2)  # divide the backward signal by its RMS every 2 activations" in result.output


def test_diagnose_outputs_match_the_golden_files(tmp_path, golden):
    """Terminal, JSON and markdown reports of one run, normalised (tests/golden.py)."""
    result = run("diagnose", write(tmp_path, SIGMOID, "deep_sigmoid.py"),
                 "--json", tmp_path / "report.json", "--markdown", tmp_path / "report.md")
    assert result.exit_code == 0, result.output
    golden.text("diagnose_deep_sigmoid.txt", result.output)
    golden.json("diagnose_deep_sigmoid.json", json.loads((tmp_path / "report.json").read_text(encoding="utf-8")))
    golden.text("diagnose_deep_sigmoid.md", (tmp_path / "report.md").read_text(encoding="utf-8"))


def test_explain_output_matches_the_golden_file(golden):
    result = run("explain", "vanishing-gradient")
    assert result.exit_code == 0, result.output
    assert result.output == run("explain", "GS101").output  # the slug and the code name one rule
    golden.text("explain_vanishing_gradient.md", result.output)


def test_fail_on_and_reports(tmp_path):
    model = write(tmp_path, SIGMOID)
    assert run("diagnose", model, "--fail-on", "error").exit_code == 1
    assert run("diagnose", model, "--fail-on", "never").exit_code == 0
    assert run("diagnose", write(tmp_path, RELU, "relu.py"), "--fail-on", "warning").exit_code == 0
    result = run("diagnose", model, "--json", tmp_path / "out" / "r.json", "--markdown", tmp_path / "r.md")
    data = json.loads((tmp_path / "out" / "r.json").read_text())
    assert data["version"] == 1 and data["findings"][0]["rule"] == "vanishing-gradient"
    assert data["model"]["factory"] == "build_model()" and data["model"]["device"] == "cpu"
    assert len(data["layers"]) == 26  # 25 layers and the Sequential itself
    assert "### error: GS101 `vanishing-gradient`" in (tmp_path / "r.md").read_text()
    assert result.exit_code == 0


def test_module_level_model_example_inputs_dict_and_loss_fn(tmp_path):
    path = write(tmp_path, """
        import torch
        import torch.nn as nn

        class TwoInputs(nn.Module):
            def __init__(self):
                super().__init__()
                self.a = nn.Linear(3, 8)
                self.b = nn.Linear(8, 1)

            def forward(self, x, scale):
                return self.b(torch.relu(self.a(x))) * scale

        model = TwoInputs()

        def example_inputs():
            return {"x": torch.randn(32, 3), "scale": torch.tensor(2.0)}

        def loss_fn(output, inputs):
            return output.pow(2).mean()
    """)
    result = run("diagnose", path, "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["model"]["factory"] == "model" and data["model"]["inputs"] == "example_inputs()"
    assert data["options"]["loss"] == "loss_fn"


def test_factory_option_and_steps_with_adam(tmp_path):
    path = write(tmp_path, RELU.replace("def build_model", "def make_net"))
    assert run("diagnose", path).exit_code == 2
    result = run("diagnose", path, "--factory", "make_net", "--steps", "3", "--optimizer", "adam",
                 "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    options = json.loads((tmp_path / "r.json").read_text())["options"]
    assert options["steps"] == 3 and options["optimizer"] == "Adam"


@pytest.mark.parametrize("first, expected", [
    ("nn.Conv2d(3, 8, 3)", "Conv2d), the first layer the input reaches: shape (16, 3, 32, 32)"),
    ("nn.Conv1d(4, 8, 3)", "Conv1d), the first layer the input reaches: shape (16, 4, 32)"),
    ("nn.Embedding(50, 8)", "Embedding), the first layer the input reaches: token ids of shape (16, 32)"),
    ("nn.ConvTranspose2d(6, 8, 4)", "ConvTranspose2d), the first layer the input reaches: shape (16, 6, 1, 1)"),
])
def test_inputs_inferred_from_the_first_layer(tmp_path, first, expected):
    path = write(tmp_path, f"""
        import torch.nn as nn
        model = nn.Sequential({first}, nn.Flatten(), nn.LazyLinear(2))
    """)
    result = run("diagnose", path)
    assert result.exit_code == 0, result.output
    assert expected in result.output


LSTM = """
    import torch.nn as nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(8, 16, batch_first=True)
            self.head = nn.Linear(16, 2)

        def forward(self, x):
            return self.head(self.lstm(x)[0].mean(1))

    def build_model():
        return Net()
"""


def test_lstm_inputs_are_guessed_from_its_input_size_and_batch_first(tmp_path):
    result = run("diagnose", write(tmp_path, LSTM))
    assert result.exit_code == 0, result.output
    assert "inferred from layer lstm (LSTM), the first layer the input reaches: shape (16, 32, 8)" in said(result)


def test_without_inputs_that_run_it_says_what_was_guessed_and_input_shape_works(tmp_path):
    # the guess given as both arguments fails too (lengths must be a 1-D int64 tensor): the
    # message is the one input's
    path = write(tmp_path, LSTM.replace("def forward(self, x):", "def forward(self, x, lengths):").replace(
        "return self.head(", "x = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True)\n"
        "            return self.head("))
    result = run("diagnose", path)
    assert result.exit_code == 2
    message = said(result)
    assert (f"Cannot infer example inputs for Net from {path}: the shapes were guessed from its layers and "
            "the model ran on none of them: shape (16, 32, 8) from layer lstm (LSTM) and shape (16, 16) from layer "
            "head (Linear) failed at the model itself (Net): TypeError: Net.forward() missing 1 required positional "
            "argument: 'lengths'.") in message
    assert "Give the input's shape with --input-shape" in message and "--input-dtype long" in message
    assert "def example_input()" in message and "Traceback" not in result.output
    assert run("diagnose", write(tmp_path, LSTM, "lstm.py"), "--input-shape", "4,10,8").exit_code == 0


@pytest.mark.parametrize("shape", ["8,x", "16,,8", "4,10,8,", "x", "16;8", "4,-1,8"])
def test_an_input_shape_with_a_missing_or_bad_size_is_refused(tmp_path, shape):
    result = run("diagnose", write(tmp_path, LSTM, "lstm.py"), "--input-shape", shape)
    assert result.exit_code == 2
    assert f"--input-shape {shape!r} is not a list of positive sizes" in said(result)


def test_token_ids_with_input_dtype_long(tmp_path):
    path = write(tmp_path, """
        import torch.nn as nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.norm = nn.LayerNorm(8)
                self.embed = nn.Embedding(30, 8)

            def forward(self, ids):
                return self.norm(self.embed(ids))

        model = Net()
    """)
    guessed = run("diagnose", path)  # the LayerNorm's guess fails, the Embedding's runs
    assert guessed.exit_code == 0, guessed.output
    assert ("inferred from layer embed (Embedding), the first layer the input reaches: token ids of shape "
            "(16, 32) (1 earlier guess failed)") in said(guessed)
    result = run("diagnose", path, "--input-shape", "4,12", "--input-dtype", "long")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("source, expected", [
    ("def build_model(:\n    pass\n", r"model.py:1: syntax error"),
    ("import torch\nx = 1\n", "No model found in .*model.py: looked for build_model\\(\\), get_model\\(\\), create_model\\(\\) and a module-level `model`"),
    ("import torch.nn as nn\ndef build_model():\n    return 3\n", r"build_model\(\) returned int; it must return a torch.nn.Module"),
    ("raise RuntimeError('boom')\n", r"Running .*model.py raised RuntimeError: boom \(line 1"),
    ("import torch, torch.nn as nn\nmodel = nn.Sequential(nn.Linear(4, 8), nn.Linear(5, 1))\n"
     "def example_input():\n    return torch.randn(2, 4)\n",
     r"The model raised in forward at module '1' \(Linear\).*tensor of shape \(2, 4\)"),
    # torch's own "Cannot copy out of meta tensor" before
    ("import torch, torch.nn as nn\ndef build_model():\n    with torch.device('meta'):\n"
     "        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))\n",
     r"The model's parameters are on the meta device .* model.to_empty\(device='cpu'\)"),
])
def test_user_errors_exit_2_with_a_message_and_no_traceback(tmp_path, source, expected):
    path = tmp_path / "model.py"
    path.write_text(source, encoding="utf-8")
    result = run("diagnose", path)
    assert result.exit_code == 2
    import re
    assert re.search(expected, " ".join(result.output.split())), result.output
    assert "Traceback" not in result.output
    assert "Traceback" in run("diagnose", path, "--debug").output


def test_a_model_file_that_turns_autograd_off_is_still_diagnosed(tmp_path):
    """``torch.set_grad_enabled(False)`` at the file's import: the run failed with "no default
    loss" advice that did not name the cause; diagnose needs gradients and turns them on for itself."""
    import torch

    path = write(tmp_path, "import torch\ntorch.set_grad_enabled(False)\n" + textwrap.dedent(RELU))
    try:
        result = run("diagnose", path)
    finally:
        torch.set_grad_enabled(True)  # the file ran in this process
    assert result.exit_code == 0, result.output
    assert "Verdict: TRAINS" in result.output


def test_missing_file(tmp_path):
    result = run("diagnose", tmp_path / "nope.py")
    assert result.exit_code == 2 and "No such file" in result.output


@pytest.mark.skipif(not Path("/proc/version").is_file(), reason="needs Linux's /proc")
def test_a_report_path_in_a_directory_that_takes_no_new_file_names_that_directory(tmp_path):
    """/proc/version exists, but /proc takes no new file (the atomic write's temporary one): the
    message says that, not that /proc does not exist."""
    result = run("diagnose", write(tmp_path, RELU), "--json", "/proc/version")
    assert result.exit_code == 2
    assert "Cannot write the JSON report to /proc/version: the directory /proc takes no new file" in said(result)


def test_python_dash_m_gradscope_runs_the_command(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "gradscope", "explain", "GS101"], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path,
                          env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert done.returncode == 0, done.stderr
    assert "vanishing-gradient" in done.stdout


def test_a_model_file_that_leaves_a_thread_running_does_not_hang_the_command(tmp_path):
    """A non-daemon thread started by the model file kept Python's exit waiting forever after the
    report was printed; the command now warns, names the thread and exits with its own status."""
    import subprocess
    import sys

    model = tmp_path / "threaded.py"
    model.write_text(textwrap.dedent("""
        import threading, time
        import torch.nn as nn
        threading.Thread(target=lambda: [time.sleep(0.1) for _ in iter(int, 1)], name="loader").start()

        def build_model():
            return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))

        def example_input():
            import torch
            return torch.randn(16, 8)
    """))
    done = subprocess.run([sys.executable, "-m", "gradscope", "diagnose", str(model)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path,
                          env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert done.returncode == 0, done.stderr
    assert "errors" in done.stdout
    assert "1 thread(s) that the model file started are still running ('loader')" in done.stderr


def test_check_against_a_baseline(tmp_path):
    model = write(tmp_path, RELU)
    baseline = tmp_path / "ci" / "baseline.json"
    assert run("check", model, "--baseline", baseline).exit_code == 2  # no baseline yet
    result = run("check", model, "--baseline", baseline, "--update-baseline")
    assert result.exit_code == 0 and baseline.exists()
    data = json.loads(baseline.read_text())
    assert data["format"] == "gradscope-baseline" and data["version"] == 1
    passed = run("check", model, "--baseline", baseline)
    assert passed.exit_code == 0 and "Gradient-flow check passed." in passed.output

    broken = write(tmp_path, RELU.replace("nn.ReLU()", "nn.Sigmoid()").replace(
        'nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")', "nn.init.normal_(linear.weight, std=0.02)"))
    failed = run("check", broken, "--baseline", baseline, "--junit", tmp_path / "junit.xml")
    assert failed.exit_code == 1, failed.output
    assert "FAIL new error finding: GS101 vanishing-gradient" in failed.output
    assert "backpropagated signal moved by more than 1 orders of magnitude" in failed.output
    assert said(failed).startswith("FAIL Verdict regressed against the baseline: trains -> fails. Verdict: FAILS")
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    # the verdict, the moved flow and the new error findings (vanishing-gradient,
    # collapsed-representations; updates-off-band is information under the assumed recipe) fail;
    # one case per rule plus the verdict and the flow
    assert (suite.get("failures"), suite.get("tests")) == ("4", "19")
    # a looser tolerance does not forgive the new error finding; gating on nothing passes
    assert run("check", broken, "--baseline", baseline, "--tolerance", "20").exit_code == 1
    assert run("check", broken, "--fail-on", "never").exit_code == 0


SKIPPED_LAYERS = """
    import os
    import torch
    import torch.nn as nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 16)
            self.d, self.e = nn.Linear(16, 16), nn.Linear(16, 2)

        def forward(self, x):
            h = torch.tanh(self.a(x))
            if not os.environ.get("SKIP"):
                h = torch.tanh(self.c(torch.tanh(self.b(h))))
            return self.e(torch.tanh(self.d(h)))

    def build_model():
        return Net()

    def example_input():
        return torch.randn(16, 8)
"""


def test_check_fails_when_the_forward_stops_calling_layers_the_model_still_has(tmp_path):
    """Layers b and c are still in the model but the forward no longer calls them: no gradient
    reaches their parameters. Before, they were counted as gone and the check passed."""
    model = write(tmp_path, SKIPPED_LAYERS)
    baseline = tmp_path / "baseline.json"
    assert run("check", model, "--baseline", baseline, "--update-baseline").exit_code == 0
    assert run("check", model, "--baseline", baseline).exit_code == 0
    failed = run("check", model, "--baseline", baseline, env={"SKIP": "1"})
    assert failed.exit_code == 1, failed.output
    assert re.search(r"\bb: \d\.\d\de-\d\d -> 0\.00e\+00", failed.output), failed.output
    assert "Gradient-flow check FAILED." in failed.output


def test_check_logs_the_layer_table_only_with_table(tmp_path):
    model = write(tmp_path, RELU)
    short = run("check", model)
    assert short.exit_code == 0, short.output
    assert "┃" not in short.output and "\n0  " not in short.output
    assert said(short).startswith("Verdict: TRAINS") and "Gradient-flow check passed." in short.output
    table = run("check", model, "--table")
    assert table.exit_code == 0 and "layer ┃ type" in table.output and "\n0  " in table.output


def test_piped_diagnose_keeps_each_layer_on_one_line(tmp_path):
    name = "a_very_long_layer_name_that_a_ci_log_should_keep_whole_for_grep_" * 2
    path = write(tmp_path, f"""
        import torch.nn as nn

        model = nn.Sequential()
        model.add_module({name!r}, nn.Linear(8, 8))
        model.add_module("out", nn.Linear(8, 2))
    """)
    result = run("diagnose", path)  # CliRunner's output is no terminal, as in a pipe
    assert result.exit_code == 0, result.output
    assert any(line.startswith(name + " │ Linear") for line in result.output.splitlines()), result.output


def test_check_without_baseline_gates_on_findings(tmp_path):
    assert run("check", write(tmp_path, SIGMOID)).exit_code == 1
    assert run("check", write(tmp_path, RELU, "relu.py")).exit_code == 0


@pytest.mark.parametrize("content, expected", [
    ("{not json", "is not valid JSON"),
    ('{"format": "other"}', "is not a gradscope baseline"),
    ('{"format": "gradscope-baseline", "version": 99}', "has version 99; this gradscope reads version 1"),
    ('{"format": "gradscope-baseline", "version": 1, "findings": [], "signal": {"0": -1}}', "malformed \"signal\""),
    # an integer past float's range raised OverflowError, arrays nested deep a RecursionError:
    # tracebacks with exit 1, which a CI job reads as a regression
    ('{"format": "gradscope-baseline", "version": 1, "findings": [], "signal": {"0": 1' + "0" * 400 + "}}",
     "malformed \"signal\""),
    ("[" * 100_000 + "]" * 100_000, "nests its JSON too deep to read"),
    ('{"signal": {"0": 1' + "0" * 5000 + "}}", "is not valid JSON"),  # past Python's 4,300 digits
    ('{"format": "gradscope-baseline", "version": true}', "has version True; this gradscope reads version 1"),
])
def test_corrupt_or_incompatible_baseline_exits_2(tmp_path, content, expected):
    baseline = tmp_path / "b.json"
    baseline.write_text(content)
    result = run("check", write(tmp_path, RELU), "--baseline", baseline)
    assert result.exit_code == 2 and expected in " ".join(result.output.split())


def test_github_actions_annotations_and_step_summary(tmp_path):
    summary = tmp_path / "summary.md"
    result = run("check", write(tmp_path, SIGMOID), env={"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)})
    assert result.exit_code == 1
    assert "::error file=" in result.output and "title=GS101 vanishing-gradient::The backpropagated signal" in result.output
    text = summary.read_text()
    assert "## gradscope:" in text and "Gradient-flow check **failed**." in text


def test_rules_and_explain():
    listing = run("rules")
    assert listing.exit_code == 0 and "GS101" in listing.output and "post-ln-transformer" in listing.output
    explained = run("explain", "GS103")
    assert explained.exit_code == 0 and "# GS103 `nonfinite-gradient`" in explained.output
    assert "## Why it matters" in explained.output
    unknown = run("explain", "nope")
    assert unknown.exit_code == 2 and "No rule is called 'nope'" in unknown.output


def train_run(run_dir: Path, steps: int = 40, stop: bool = True):
    import torch
    import torch.nn as nn

    import gradscope

    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(12) for m in (nn.Linear(16, 16), nn.Sigmoid())], nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = gradscope.monitor(model, every=2, optimizer=opt, log_dir=run_dir, flush_every=5).start()
    for _ in range(steps):
        model(torch.randn(8, 16)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    if stop:
        mon.stop()
    return mon


def test_summary_and_report_of_a_run_directory(tmp_path):
    mon = train_run(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "findings.json").read_text())["findings"][0]["rule"] == "vanishing-gradient"
    summary = run("summary", tmp_path / "run")
    assert summary.exit_code == 0, summary.output
    assert "20 logged steps up to step 38 (run complete)" in " ".join(summary.output.split())
    assert "ERROR GS101 vanishing-gradient" in summary.output
    assert [f.rule for f in mon.findings()][0] == "vanishing-gradient"
    result = run("report", tmp_path / "run", "-o", tmp_path / "run.html")
    assert result.exit_code == 0 and "Wrote" in result.output
    page = (tmp_path / "run.html").read_text()
    assert "vanishing-gradient" in page and "log10 backpropagated signal, layers" in page


def test_a_killed_run_loads_up_to_its_last_complete_part(tmp_path):
    mon = train_run(tmp_path / "run", steps=25, stop=False)  # 13 logged steps, parts of 1, 2, 4, 5: 12 on disk
    summary = run("summary", tmp_path / "run", "--json", tmp_path / "s.json")
    mon._stop_pulse()  # (its patches of torch's backward and clipping: not for the tests after)
    assert summary.exit_code == 0, summary.output
    assert "12 logged steps up to step 22 (run running)" in " ".join(summary.output.split())
    (tmp_path / "run" / "history" / "part-000001.parquet").write_bytes(b"garbage")
    broken = run("summary", tmp_path / "run")
    assert broken.exit_code == 2 and "cannot be read" in broken.output
    assert run("summary", tmp_path).exit_code == 2  # not a run directory


def test_diagnose_writes_html(tmp_path):
    result = run("diagnose", write(tmp_path, SIGMOID), "--html", tmp_path / "out" / "r.html")
    assert result.exit_code == 0, result.output
    assert "Plotly.newPlot" in (tmp_path / "out" / "r.html").read_text()


def test_monitor_save_html(tmp_path):
    mon = train_run(tmp_path / "run", steps=6)
    path = mon.save_html(tmp_path / "mon.html")
    assert "GS101" in path.read_text()


BUILD_OPTIMIZER = """
    import torch

    def build_optimizer(model):
        return torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.05)
"""


@pytest.fixture
def verdict_is(monkeypatch):
    """``verdict_is("at-risk")``: diagnose's verdict gets that label (reason GS104 dead-units), so
    that the fronts' gating is tested whatever the rules decide for a model."""
    import dataclasses
    import importlib

    module = importlib.import_module("gradscope.diagnose")  # gradscope.diagnose is the function
    real = module.diagnose

    def set_label(label: str) -> None:
        def diagnose(*args, **kwargs):
            report = real(*args, **kwargs)
            report.verdict = dataclasses.replace(report.verdict, label=label, reasons=["GS104 dead-units"])
            return report

        monkeypatch.setattr(module, "diagnose", diagnose)
    return set_label


def test_the_verdict_comes_first_in_every_output(tmp_path):
    result = run("diagnose", write(tmp_path, SIGMOID), "--json", tmp_path / "r.json", "--markdown", tmp_path / "r.md",
                 "--html", tmp_path / "r.html")
    assert result.exit_code == 0, result.output
    assert said(result).startswith("Verdict: FAILS under SGD lr 0.01 momentum 0.9 (assumed) "
                                   "Decided by: GS101 vanishing-gradient, GS109 collapsed-representations. Loss: ")
    data = json.loads((tmp_path / "r.json").read_text())
    assert list(data)[:2] == ["version", "verdict"] and data["verdict"]["label"] == "fails"
    assert data["options"]["recipe_from"] == "default" and data["verdict"]["recipe"]["assumed"] is True
    assert (tmp_path / "r.md").read_text().split("\n")[2] == "**Verdict: FAILS** under SGD lr 0.01 momentum 0.9 (assumed)"
    page = (tmp_path / "r.html").read_text()
    assert page.index("<b>Verdict: FAILS</b> under SGD lr 0.01 momentum 0.9 (assumed)") < page.index("<main>")


def test_an_assumed_recipe_says_which_default_and_how_to_give_the_real_one(tmp_path):
    output = said(run("diagnose", write(tmp_path, RELU)))
    assert ("Recipe assumed: SGD lr 0.01 momentum 0.9 (gradscope's default), as the model file has no "
            "build_optimizer(model) and no recipe option was given; give the real one with --optimizer, --lr, "
            "--momentum and --weight-decay, or define build_optimizer(model) in the model file.") in output


def test_build_optimizer_in_the_model_file_gives_the_recipe(tmp_path):
    result = run("diagnose", write(tmp_path, RELU + BUILD_OPTIMIZER), "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Verdict: TRAINS under AdamW lr 0.0003 betas (0.9, 0.999) weight decay 0.05\n")
    assert "Recipe from build_optimizer(model) in the model file." in result.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["options"]["recipe_from"] == "build_optimizer()" and data["verdict"]["recipe"]["assumed"] is False
    assert data["options"]["optimizer"] == "AdamW"


def test_command_line_options_override_build_optimizer_and_say_so(tmp_path):
    path = write(tmp_path, RELU + BUILD_OPTIMIZER.replace("return torch.optim", "raise SystemExit(3)  # not called\n        return torch.optim"))
    result = run("diagnose", path, "--optimizer", "adam", "--lr", "0.002", "--momentum", "0.8", "--weight-decay", "0.001",
                 "--clip", "1.5", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Verdict: TRAINS under Adam lr 0.002 betas (0.8, 0.999) weight decay 0.001 clip 1.5\n")
    assert ("Recipe from the command line, which overrides build_optimizer(model) in the model file (not called); "
            "drop --optimizer, --lr, --momentum and --weight-decay to use it.") in said(result)
    recipe = json.loads((tmp_path / "r.json").read_text())["verdict"]["recipe"]
    assert (recipe["optimizer"], recipe["lr"], recipe["momentum"], recipe["weight_decay"], recipe["clip_grad_norm"]) == \
        ("Adam", 0.002, 0.8, 0.001, 1.5)


def test_clip_alone_keeps_the_assumed_optimizer_and_build_optimizer(tmp_path):
    assumed = run("diagnose", write(tmp_path, RELU), "--clip", "2")
    assert assumed.output.startswith("Verdict: TRAINS under SGD lr 0.01 momentum 0.9 clip 2 (assumed)\n")
    from_file = run("diagnose", write(tmp_path, RELU + BUILD_OPTIMIZER, "file.py"), "--clip", "2")
    assert from_file.output.startswith("Verdict: TRAINS under AdamW lr 0.0003 betas (0.9, 0.999) weight decay 0.05 clip 2\n")


def test_adamw_defaults_and_probe_steps(tmp_path):
    path = write(tmp_path, RELU)
    result = run("diagnose", path, "--optimizer", "adamw", "--probe-steps", "3", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Verdict: TRAINS under AdamW lr 0.001 betas (0.9, 0.999) weight decay 0.01\n")
    assert "over 3 probe steps" in result.output and "Recipe from the command line." in result.output
    no_probe = run("diagnose", path, "--probe-steps", "0", "--json", tmp_path / "n.json")
    assert no_probe.output.startswith("Verdict: TRAINS from the findings alone\n")
    assert "No recipe probe ran (0 probe steps), so the verdict rests on the findings alone." in no_probe.output
    assert json.loads((tmp_path / "n.json").read_text())["verdict"]["recipe"] is None


def test_the_probe_steps_help_names_diagnoses_default():
    from gradscope.cli import ProbeSteps
    from gradscope.diagnose import PROBE_STEPS

    assert f"(default {PROBE_STEPS};" in ProbeSteps.__metadata__[0].help


@pytest.mark.parametrize("body, expected", [
    ("return 0.1", r"build_optimizer\(model\) returned float; it must return a torch.optim.Optimizer"),
    ("raise KeyError('lr')", r"build_optimizer\(model\) raised KeyError: 'lr' \(line \d+: raise KeyError"),
    ("return torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)",
     r"returned a SGD, but 2 of its 2 tensors are not parameters of the model it is given"),
])
def test_a_bad_build_optimizer_exits_2_naming_what_it_gave(tmp_path, body, expected):
    path = write(tmp_path, RELU + f"""
    import torch

    def build_optimizer(model):
        {body}
""")
    result = run("diagnose", path)
    assert result.exit_code == 2
    assert re.search(expected, said(result)), result.output
    assert "Traceback" not in result.output


def test_a_build_optimizer_that_exits_is_exit_2(tmp_path):
    path = write(tmp_path, RELU + BUILD_OPTIMIZER.replace("return torch.optim", "raise SystemExit(0)\n        return torch.optim"))
    result = run("check", path)
    assert result.exit_code == 2
    assert "called sys.exit(0)" in result.output and "while gradscope was loading it" in said(result)


def test_fail_on_a_verdict(tmp_path, verdict_is):
    sigmoid, relu = write(tmp_path, SIGMOID), write(tmp_path, RELU, "relu.py")
    assert run("diagnose", sigmoid, "--fail-on", "fails").exit_code == 1
    assert run("diagnose", sigmoid, "--fail-on", "at-risk").exit_code == 1
    assert run("diagnose", relu, "--fail-on", "at-risk").exit_code == 0
    verdict_is("at-risk")
    assert run("diagnose", relu, "--fail-on", "at-risk").exit_code == 1
    assert run("diagnose", relu, "--fail-on", "fails").exit_code == 0
    checked = run("check", relu, "--fail-on", "at-risk")
    assert checked.exit_code == 1
    assert said(checked).startswith("FAIL Verdict at-risk: --fail-on at-risk fails the check on at-risk or fails. "
                                    "Verdict: AT-RISK under SGD lr 0.01 momentum 0.9 (assumed) ")
    assert run("check", relu, "--fail-on", "fails").exit_code == 0


def test_fail_on_a_verdict_does_not_gate_on_findings(tmp_path, verdict_is):
    model = write(tmp_path, SIGMOID)  # an error finding (GS101), here with a verdict of trains
    verdict_is("trains")
    assert run("check", model, "--fail-on", "error").exit_code == 1
    result = run("check", model, "--fail-on", "at-risk")
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.output and "ERROR GS101 vanishing-gradient" in result.output


def test_check_reports_a_better_verdict_without_failing(tmp_path, verdict_is):
    model, baseline = write(tmp_path, RELU), tmp_path / "b.json"
    verdict_is("at-risk")
    assert said(run("check", model, "--baseline", baseline, "--update-baseline")).startswith(
        f"Baseline written to {baseline} (verdict at-risk, 0 findings")
    verdict_is("trains")
    result = run("check", model, "--baseline", baseline)
    assert result.exit_code == 0, result.output
    assert said(result).startswith("Verdict improved against the baseline: at-risk -> trains. Refresh the baseline "
                                   "with --update-baseline, so that going back to at-risk fails. Verdict: TRAINS")
    assert "Gradient-flow check passed." in result.output


def test_check_against_a_baseline_from_before_verdicts(tmp_path):
    model, baseline = write(tmp_path, RELU), tmp_path / "b.json"
    assert run("check", model, "--baseline", baseline, "--update-baseline").exit_code == 0
    old = json.loads(baseline.read_text())
    del old["verdict"]
    baseline.write_text(json.dumps(old))
    result = run("check", model, "--baseline", baseline)
    assert result.exit_code == 0, result.output
    assert said(result).startswith("The baseline predates verdicts (it records none), so the verdict is not "
                                   "compared; refresh it with --update-baseline to record one. Verdict: TRAINS")


def test_an_embedding_model_given_a_float_input_shape_is_told_about_input_dtype(tmp_path):
    source = """
import torch.nn as nn

class LM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.out = nn.Embedding(50, 16), nn.Linear(16, 50)

    def forward(self, ids):
        return self.out(self.emb(ids))

def build_model():
    return LM()
"""
    result = run("diagnose", write(tmp_path, source), "--input-shape", "4,10")
    assert result.exit_code == 2
    assert "add --input-dtype long to --input-shape" in " ".join(result.output.split())
