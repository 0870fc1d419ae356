"""The code in every fix runs as printed on the model it was written for, and where it is the
whole fix, the finding is gone afterwards."""

from __future__ import annotations

import math
import textwrap

import pytest
import torch
import torch.nn as nn

import gradscope
from gradscope.rules.pairs import PAIRS
from tests.zoo import BROKEN


def snippets(fix: str) -> str:
    """The indented code blocks of a fix, as one program."""
    blocks, current = [], []
    for line in fix.splitlines() + [""]:
        if line.startswith("    "):
            current.append(line)
        elif current:
            blocks.append(textwrap.dedent("\n".join(current)))
            current = []
    return "\n".join(blocks)


def run_fix(finding, model, optimizer=None):
    namespace = {"model": model, "nn": nn, "torch": torch, "gradscope": gradscope, "math": math,
                 "optimizer": optimizer or torch.optim.SGD(model.parameters(), lr=0.1)}
    code = snippets(finding.fix)
    if "loss.backward()" in code or "loss_fn(" in code:
        return  # training-loop snippets (clipping, anomaly detection) need the user's loop
    exec(compile(code, f"<fix for {finding.rule}>", "exec"), namespace)


CASES = [(slug, lambda slug=slug: PAIRS[slug](bad=True)) for slug in PAIRS] + [
    (name, lambda name=name: dict(zip(("model", "inputs"), BROKEN[name][0]()))) for name in BROKEN
]


@pytest.mark.parametrize("name, make", CASES, ids=[c[0] for c in CASES])
def test_fix_code_runs_on_its_model(name, make):
    torch.manual_seed(0)
    args = make()
    for finding in gradscope.diagnose(**args).findings:
        run_fix(finding, args["model"], args.get("optimizer"))


@pytest.mark.parametrize("slug", ["dead-units", "saturated-activations", "init-mismatch",
                                  "batchnorm-small-batch", "deep-bounded-activations"])
def test_applying_the_fix_removes_the_finding(slug):
    torch.manual_seed(0)
    args = PAIRS[slug](bad=True)
    [finding] = [f for f in gradscope.diagnose(**args).findings if f.rule == slug]
    run_fix(finding, args["model"])
    assert slug not in [f.rule for f in gradscope.diagnose(**args).findings]
