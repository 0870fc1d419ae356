"""The gradscope command line, run as a user would (typer's CliRunner), on model files written
for each test."""

from __future__ import annotations

import json
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradscope.cli import app

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


def test_diagnose_prints_the_layer_table_and_findings_without_colour_codes(tmp_path):
    result = run("diagnose", write(tmp_path, SIGMOID))
    assert result.exit_code == 0, result.output
    assert "ERROR GS101 vanishing-gradient" in result.output
    assert "inputs inferred from the first layer (Linear): shape (16, 32)" in result.output
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
    ("nn.Conv2d(3, 8, 3)", "Conv2d): shape (16, 3, 32, 32)"),
    ("nn.Conv1d(4, 8, 3)", "Conv1d): shape (16, 4, 32)"),
    ("nn.Embedding(50, 8)", "Embedding): token ids of shape (16, 32)"),
])
def test_inputs_inferred_from_the_first_layer(tmp_path, first, expected):
    path = write(tmp_path, f"""
        import torch.nn as nn
        model = nn.Sequential({first}, nn.Flatten(), nn.LazyLinear(2))
    """)
    result = run("diagnose", path)
    assert result.exit_code == 0, result.output
    assert expected in result.output


def test_lstm_without_inputs_says_what_to_add_and_input_shape_works(tmp_path):
    path = write(tmp_path, """
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
    """)
    result = run("diagnose", path)
    assert result.exit_code == 2
    assert "its first layer is LSTM" in result.output and "def example_input()" in result.output
    assert "Traceback" not in result.output
    assert run("diagnose", path, "--input-shape", "4,10,8").exit_code == 0


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
    assert run("diagnose", path).exit_code == 2
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


def test_missing_file(tmp_path):
    result = run("diagnose", tmp_path / "nope.py")
    assert result.exit_code == 2 and "No such file" in result.output


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
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    assert suite.get("failures") == "2" and suite.get("tests") == "12"
    # a looser tolerance does not forgive the new error finding; gating on nothing passes
    assert run("check", broken, "--baseline", baseline, "--tolerance", "20").exit_code == 1
    assert run("check", broken, "--fail-on", "never").exit_code == 0


def test_check_without_baseline_gates_on_findings(tmp_path):
    assert run("check", write(tmp_path, SIGMOID)).exit_code == 1
    assert run("check", write(tmp_path, RELU, "relu.py")).exit_code == 0


@pytest.mark.parametrize("content, expected", [
    ("{not json", "is not valid JSON"),
    ('{"format": "other"}', "is not a gradscope baseline"),
    ('{"format": "gradscope-baseline", "version": 99}', "has version 99; this gradscope reads version 1"),
    ('{"format": "gradscope-baseline", "version": 1, "findings": [], "signal": {"0": -1}}', "malformed \"signal\""),
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
    train_run(tmp_path / "run", steps=25, stop=False)  # 13 logged steps, parts of 5: 10 on disk
    summary = run("summary", tmp_path / "run", "--json", tmp_path / "s.json")
    assert summary.exit_code == 0, summary.output
    assert "10 logged steps up to step 18 (run running)" in " ".join(summary.output.split())
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
