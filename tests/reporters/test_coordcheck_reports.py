"""The coordinate check's renderings: the terminal table, markdown, and the self-contained HTML
page with the classic figure; model names stay text."""

from __future__ import annotations

import io

import torch
import torch.nn as nn
from rich.console import Console

import gradscope
from gradscope.reporters.html import coord_groups, render_coordcheck_html
from gradscope.reporters.markdown import coordcheck_markdown
from gradscope.reporters.terminal import CoordTerminalReport


class Odd(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.add_module("</script>", nn.Linear(4, width))
        self.out = nn.Linear(width, 2)

    def forward(self, x):
        return self.out(torch.tanh(getattr(self, "</script>")(x)))


def report():
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    return gradscope.coordcheck(Odd, [8, 16, 32], x, lambda out: out.pow(2).mean(), "adam", lr=0.01, steps=2, seeds=2)


def test_html_page_has_one_panel_per_group_and_escapes_names():
    found = report()
    page = render_coordcheck_html(found, "odd")
    assert page.count("<script>") == 1 + 2  # plotly.js once, then the two figures
    assert "</script>\"" not in page and "&lt;/script&gt;" in page
    assert [name for name, _ in coord_groups(found.sweep)] == ["input layers and embeddings", "model output"]
    assert "Activation size against width" in page and "Slopes against width" in page


def test_terminal_and_markdown_list_every_measured_layer():
    found = report()
    console = Console(file=io.StringIO(), width=160, color_system=None)
    CoordTerminalReport(found, "odd").print(console)
    text = console.file.getvalue()
    assert "(model output)" in text and "</script>" in text and "flat: |slope| < 0.25" in text
    markdown = coordcheck_markdown(found, "odd")
    assert markdown.count("\n| ") == 2 + len(found.sweep.layers)
