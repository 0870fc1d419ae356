"""The code in every fix runs as printed on the model it was written for, and where it is the
whole fix, the finding is gone afterwards. Training-loop snippets (clipping, anomaly detection) run
as the body of a tiny training loop, with the names they expect defined as a user's loop would."""

from __future__ import annotations

import math
import re
import textwrap

import pytest
import torch
import torch.nn as nn

import gradscope
from gradscope.rules import DIAGNOSE_RULES, find_rule
from tests.zoo import BROKEN

LOOP_STEPS = 2


def snippets(fix: str) -> list[str]:
    """The indented code blocks of a fix, each as a program."""
    blocks, current = [], []
    for line in fix.splitlines() + [""]:
        if line.startswith("    "):
            current.append(line)
        elif current:
            blocks.append(textwrap.dedent("\n".join(current)))
            current = []
    return blocks


def in_loop(block: str) -> bool:
    """A block that is the body of the user's training loop rather than a one-off change."""
    return "loss.backward()" in block or "loss_fn(" in block


def loss_fn(output: torch.Tensor) -> torch.Tensor:
    return output.float().pow(2).mean()


def run_fix(finding, model, inputs, optimizer=None) -> dict:
    """Run the fix's one-off code once, then its loop code as the body of a tiny training loop
    (the forward and ``loss`` before it, as in a user's loop); returns the namespace."""
    namespace = {"model": model, "nn": nn, "torch": torch, "gradscope": gradscope, "math": math,
                 "inputs": inputs, "loss_fn": loss_fn,
                 "optimizer": optimizer or torch.optim.SGD(model.parameters(), lr=0.1)}
    blocks = snippets(finding.fix)
    for block in [b for b in blocks if not in_loop(b)]:
        exec(compile(block, f"<fix for {finding.rule}>", "exec"), namespace)
    body = "\n".join(b for b in blocks if in_loop(b))
    if body:
        for _ in range(LOOP_STEPS):
            namespace["optimizer"].zero_grad()
            namespace["loss"] = loss_fn(model(inputs))
            exec(compile(body, f"<loop body of the fix for {finding.rule}>", "exec"), namespace)
    return namespace


def total_grad_norm(model: nn.Module) -> float:
    return math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters() if p.grad is not None))


CASES = [(rule.slug, lambda rule=rule: rule.pair(bad=True)) for rule in DIAGNOSE_RULES
         if not rule.needs_training_run] + [
    (name, lambda name=name: dict(zip(("model", "inputs"), BROKEN[name][0]()))) for name in BROKEN
]


@pytest.mark.parametrize("name, make", CASES, ids=[c[0] for c in CASES])
def test_fix_code_runs_on_its_model(name, make):
    torch.manual_seed(0)
    args = make()
    for finding in gradscope.diagnose(**args).findings:
        if finding.rule == "nonfinite-gradient" and finding.evidence["phase"] == "forward":
            # anomaly detection's job: stop at the backward op that makes the NaN, naming it
            with pytest.raises(RuntimeError, match=r"Function '\w+Backward\d*' returned nan values"), \
                    pytest.warns(UserWarning, match="Error detected in"):  # the forward traceback
                run_fix(finding, args["model"], args["inputs"], args.get("optimizer"))
        else:
            run_fix(finding, args["model"], args["inputs"], args.get("optimizer"))


def test_clipping_snippet_bounds_the_gradient_norm_and_steps():
    torch.manual_seed(0)
    rule = find_rule("exploding-gradient")
    args = rule.pair(bad=True)
    [finding] = [f for f in gradscope.diagnose(**args).findings if f.rule == rule.slug]
    [clip] = [b for b in snippets(finding.fix) if "clip_grad_norm_" in b]
    max_norm = float(re.search(r"max_norm=([0-9.e+-]+)", clip).group(1))
    model = args["model"]
    before = [p.detach().clone() for p in model.parameters()]
    namespace = run_fix(finding, model, args["inputs"])
    assert "loss" in namespace and LOOP_STEPS >= 1
    assert total_grad_norm(model) <= max_norm * (1 + 1e-5)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))  # optimizer.step() ran


def test_anomaly_snippet_names_the_op_that_makes_the_nan():
    torch.manual_seed(0)
    model, inputs = BROKEN["nan-born-in-forward"][0]()
    [finding] = [f for f in gradscope.diagnose(model, inputs).findings if f.rule == "nonfinite-gradient"]
    assert any("set_detect_anomaly" in b for b in snippets(finding.fix))
    with pytest.raises(RuntimeError, match=r"Function '\w+Backward\d*' returned nan values"), \
            pytest.warns(UserWarning, match="Error detected in"):  # the forward traceback
        run_fix(finding, model, inputs)


def test_anomaly_snippet_runs_through_an_inf_that_never_becomes_nan():
    # sqrt at 0 passes an Inf back, and the ReLU before it zeroes it: anomaly mode (which checks
    # for NaN) has nothing to stop at, and the fix says so
    torch.manual_seed(0)
    args = find_rule("nonfinite-gradient").pair(bad=True)
    [finding] = [f for f in gradscope.diagnose(**args).findings if f.rule == "nonfinite-gradient"]
    assert finding.evidence["phase"] == "backward" and "NaN, not Inf" in finding.fix
    namespace = run_fix(finding, args["model"], args["inputs"])
    assert math.isfinite(float(namespace["loss"].detach())) and math.isfinite(total_grad_norm(args["model"]))


@pytest.mark.parametrize("slug", ["dead-units", "saturated-activations", "init-mismatch",
                                  "batchnorm-small-batch", "deep-bounded-activations"])
def test_applying_the_fix_removes_the_finding(slug):
    torch.manual_seed(0)
    args = find_rule(slug).pair(bad=True)
    [finding] = [f for f in gradscope.diagnose(**args).findings if f.rule == slug]
    run_fix(finding, args["model"], args["inputs"])
    assert slug not in [f.rule for f in gradscope.diagnose(**args).findings]
