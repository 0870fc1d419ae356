"""``gradscope coordcheck FILE``, run as a user would (typer's CliRunner)."""

from __future__ import annotations

import json

from tests.test_cli import run, said, write

SP_MLP = """
    import torch, torch.nn as nn

    def build_model(width):
        return nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 4))

    def example_input(width):
        return torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
"""

MUP_MLP = """
    import torch, torch.nn as nn

    class MLP(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.input, self.hidden, self.readout = nn.Linear(16, width), nn.Linear(width, width), nn.Linear(width, 4, bias=False)
            nn.init.zeros_(self.readout.weight)
            self.multiplier = 32 / width

        def forward(self, x):
            return self.readout(torch.relu(self.hidden(torch.relu(self.input(x))))) * self.multiplier

    def build_model(width):
        return MLP(width)

    def example_input():
        return torch.randn(64, 16, generator=torch.Generator().manual_seed(0))

    def build_optimizer(model):
        width = model.hidden.in_features
        rest = [p for p in model.parameters() if p is not model.hidden.weight]
        return torch.optim.Adam([{"params": [model.hidden.weight], "lr": 0.005 * 32 / width},
                                 {"params": rest, "lr": 0.005}])
"""

OPTIONS = ["--widths", "32,64,128", "--steps", "3", "--seeds", "2"]


def test_sp_model_is_flagged_and_fail_on_gates(tmp_path):
    model = write(tmp_path, SP_MLP)
    result = run("coordcheck", model, *OPTIONS, "--lr", "0.005", "--json", tmp_path / "r.json",
                 "--markdown", tmp_path / "r.md", "--html", tmp_path / "r.html")
    assert result.exit_code == 0, result.output
    text = said(result)
    assert "ERROR GS301 readout-grows-with-width" in text and "Readout layers: 4." in text
    assert "inputs example_input(width)" in text
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["options"]["widths"] == [32, 64, 128] and report["options"]["optimizer"].startswith("Adam lr 0.005")
    assert {f["rule"] for f in report["findings"]} >= {"readout-grows-with-width"}
    assert "| layer | type | role | verdict |" in (tmp_path / "r.md").read_text()
    assert "Activation size against width" in (tmp_path / "r.html").read_text()
    assert run("coordcheck", model, *OPTIONS, "--lr", "0.005", "--fail-on", "error").exit_code == 1
    assert run("coordcheck", model, *OPTIONS, "--lr", "0.005", "--fail-on", "never").exit_code == 0


def test_mup_model_with_its_own_optimizer_has_no_finding(tmp_path):
    result = run("coordcheck", write(tmp_path, MUP_MLP), *OPTIONS, "--fail-on", "info")
    assert result.exit_code == 0, result.output
    text = said(result)
    assert "No findings" in text and "0 errors, 0 warnings, 0 infos" in text
    assert "inputs example_input()" in text


def test_a_factory_without_width_and_bad_options_exit_2(tmp_path):
    no_width = write(tmp_path, "import torch.nn as nn\ndef build_model():\n    return nn.Linear(4, 4)\n", "nowidth.py")
    result = run("coordcheck", no_width, *OPTIONS)
    assert result.exit_code == 2 and "build_model() takes no width" in said(result)
    result = run("coordcheck", write(tmp_path, SP_MLP), "--widths", "64")
    assert result.exit_code == 2 and "'64' is not a list of 2 or more different positive widths" in said(result)
    result = run("coordcheck", write(tmp_path, SP_MLP), *OPTIONS, "--fail-on", "at-risk")
    assert result.exit_code == 2 and "--fail-on at-risk gates on diagnose's verdict" in said(result)
