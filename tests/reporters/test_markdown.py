"""The Markdown report keeps a fix's prose and code in their order, as the terminal and HTML do."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

import gradscope
from gradscope.reporters.markdown import findings_markdown


def test_a_fixs_prose_and_code_alternate_in_their_order():
    report = gradscope.diagnose(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), torch.randn(8, 4))
    finding = gradscope.rules.Finding(
        "GS101", "vanishing-gradient", "error", ["0"], "The signal shrinks.",
        "Re-initialise:\n    reinit(model)\nor add skips:\n    model = Residual(model)\nthen train.", {})
    text = findings_markdown(dataclasses.replace(report, findings=[finding]))
    order = [text.index(part) for part in ("**Fix:** Re-initialise:", "reinit(model)", "or add skips:",
                                             "model = Residual(model)", "then train.")]
    assert order == sorted(order)
    assert text.count("```python") == 2
