"""The terminal report's layout: on a terminal the layer table fits the console; piped (CI logs,
``| grep``) each layer stays on one line, however long its name, and the rest keeps its width."""

from __future__ import annotations

import io
import re

import pytest
import torch
import torch.nn as nn
from rich.console import Console

import gradscope
from gradscope.reporters.terminal import TerminalReport

BLOCK = "residual_attention_block_with_a_long_descriptive_name"
NAME = f"encoder.{BLOCK}.feed_forward_projection_into_the_hidden_width"
"""A 106-character layer name, longer than an 80-column console."""


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.feed_forward_projection_into_the_hidden_width = nn.Linear(8, 8)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.feed_forward_projection_into_the_hidden_width(x))


@pytest.fixture(scope="module")
def report():
    torch.manual_seed(0)
    encoder = nn.Sequential()
    encoder.add_module(BLOCK, Block())
    model = nn.Sequential()
    model.add_module("encoder", encoder)
    model.add_module("head", nn.Linear(8, 2))
    return gradscope.diagnose(model, torch.randn(16, 8), probe_steps=0)


def printed(report, terminal: bool, **options) -> str:
    console = Console(file=io.StringIO(), width=80, color_system=None, force_terminal=terminal)
    TerminalReport(report, title="model.py").print(console, **options)
    return console.file.getvalue()


def row(text: str, name: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(name + " "))


def test_piped_output_keeps_a_long_layer_name_and_its_row_on_one_line(report):
    assert len(NAME) > 80
    text = printed(report, terminal=False)
    line = row(text, NAME)
    assert line.split("│")[1].strip() == "Linear" and "e-" in line.split("│")[2]  # the whole row
    assert row(text, "head").startswith("head ")


def test_piped_output_widens_only_the_table(report):
    lines = printed(report, terminal=False).splitlines()
    table = [line for line in lines if "│" in line]
    assert max(map(len, table)) > 80
    caption = next(line for line in lines if line.startswith("signal: backpropagated"))
    assert re.search(r"its log10 from \S+ to \S+$", caption.rstrip())  # the caption takes the table's width too
    prose = [line for line in lines if "│" not in line and "━" not in line and "┃" not in line and line != caption]
    assert max(len(line.rstrip()) for line in prose) <= 80  # the verdict and findings keep the width


def test_a_terminal_folds_a_long_name_to_fit_its_width(report):
    text = printed(report, terminal=True)
    assert all(len(line) <= 80 for line in text.splitlines())
    assert NAME not in text  # folded over lines, within the layer column
    assert NAME in "".join(line.split("│")[0].strip() for line in text.splitlines() if "│" in line)


def test_the_table_can_be_left_out(report):
    text = printed(report, terminal=False, table=False)
    assert NAME not in text and "┃" not in text
    assert text.startswith("Verdict:") and "model.py" in text


@pytest.mark.filterwarnings("ignore:gradscope. the model is compiled")
def test_a_run_without_a_backpropagated_signal_says_so_under_the_table():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    compiled = torch.compile(model, backend="aot_eager")  # no module hooks: no signal
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.monitor(compiled, optimizer=opt) as mon:
        compiled(torch.randn(16, 8)).pow(2).mean().backward()
        opt.step()
    text = printed(mon.report(), terminal=False)
    assert "bar: its log10 (no finite signal was recorded)" in " ".join(text.split())
