"""The golden-file normaliser (tests/golden.py): round-off, versions and widths go away; a changed
word, a missing row or finding, a reordered table or a number off by orders of magnitude stay."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from gradscope.cli import app
from tests.golden import FLOAT, GOLDEN_DIR, comparable, normalise, normalise_json

# Raw output of `gradscope diagnose` (the deep sigmoid stack of test_cli.py), before normalisation.
RAW = """\
layer ┃ type    ┃   signal ┃ log10                ┃ weight grad ┃ dead ┃ sat
━━━━━━╇━━━━━━━━━╇━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━╇━━━━━━╇━━━━
0     │ Linear  │ 3.58e-11 │ ▏                    │    2.05e-10 │      │    
1     │ Sigmoid │ 1.57e-10 │ █▎                   │             │      │  0%
24    │ Linear  │ 5.06e-01 │ ████████████████████ │    1.72e+00 │      │    
signal: backpropagated gradient norm at the layer's output; bar: its log10  
from 4e-11 to 5e-01                                                         

ERROR GS101 vanishing-gradient
The backpropagated signal shrinks by 10.1 orders of magnitude from the output side (0.0569) to the 
input side (6.26e-10) across 25 layers, about x0.381 per layer; 15 layers receive less than 1e-3 of 
the output-side signal: 0, 1, 2, 3, 4, 5 and 9 more.
"""


def same(a: str, b: str) -> bool:
    return comparable(normalise(a)) == comparable(normalise(b))


def nudge(text: str, factor: float) -> str:
    """Every float in ``text`` times ``factor``, printed with as many significant digits (``%g``
    style, trailing zeros dropped, as the reporters print) and the same exponent: round-off."""
    def one(match: re.Match) -> str:
        mantissa, _, exponent = match.group().partition("e")
        digits = len(mantissa.replace(".", "").lstrip("0"))
        value = f"{float(mantissa) * factor:#.{digits}g}".rstrip("0").rstrip(".") if "." in mantissa \
            else f"{float(mantissa) * factor:.0f}"
        return value + ("e" + exponent if exponent else "")
    return FLOAT.sub(one, text)


def test_the_nudge_changes_the_printed_digits_and_lengths():
    nudged = nudge(RAW, 1.0018)
    assert "3.59e-11" in nudged and "(0.057)" in nudged and "x0.382" in nudged
    assert nudged != RAW


@pytest.mark.parametrize("factor", [1.0018, 0.9993, 1.0 + 1e-6])
def test_round_off_in_the_last_digits_is_normalised_away(factor):
    assert same(nudge(RAW, factor), RAW)


@pytest.mark.parametrize("mutation", [
    pytest.param(lambda t: t.replace("shrinks", "grows"), id="changed word"),
    pytest.param(lambda t: t.replace("ERROR GS101", "WARNING GS101"), id="changed severity"),
    pytest.param(lambda t: t.replace("15 layers receive", "14 layers receive"), id="changed count"),
    pytest.param(lambda t: t.replace("(6.26e-10)", "(6.26e-07)"), id="number off by 1000x"),
    pytest.param(lambda t: t.replace("(0.0569)", "(0.569)"), id="number off by 10x"),
    pytest.param(lambda t: t.replace("│  0%", "│ 40%"), id="changed percentage"),
    pytest.param(lambda t: t.replace("\n1     │ Sigmoid", "\n1     │ Tanh   "), id="changed layer type"),
    pytest.param(lambda t: re.sub(r"\n1 .*\n", "\n", t), id="missing row"),
    pytest.param(lambda t: re.sub(r"\n(0 .*)\n(1 .*)\n", r"\n\2\n\1\n", t), id="reordered rows"),
    pytest.param(lambda t: t.replace("▏ ", "█▏"), id="changed bar"),
    pytest.param(lambda t: t.replace("    2.05e-10 │", "             │"), id="missing number"),
])
def test_a_regression_is_not_normalised_away(mutation):
    mutated = mutation(RAW)
    assert mutated != RAW  # the mutation applies
    assert not same(mutated, RAW)


@pytest.mark.parametrize("mutation", [
    pytest.param(lambda t: t.replace("vanishing signal", "small signal"), id="changed word"),
    pytest.param(lambda t: t[: t.index("INFO GS201")] + t[t.index("INFO GS204"):], id="missing finding"),
    pytest.param(lambda t: re.sub(r"\n7 .*\n", "\n", t), id="missing row"),
    pytest.param(lambda t: t.replace("    class Residual", "class Residual"), id="lost indentation"),
    pytest.param(lambda t: t.replace("2 errors, 0 warnings, 3 infos", "2 errors, 0 warnings, 2 infos"), id="changed counts"),
])
def test_the_stored_golden_still_catches_regressions(mutation):
    golden = (GOLDEN_DIR / "diagnose_deep_sigmoid.txt").read_text(encoding="utf-8")
    assert normalise(golden) == golden  # normalising is idempotent: the file is in normal form
    mutated = mutation(golden)
    assert mutated != golden and not same(mutated, golden)


def test_json_keeps_structure_and_magnitudes_and_drops_round_off():
    data = json.loads((GOLDEN_DIR / "diagnose_deep_sigmoid.json").read_text(encoding="utf-8"))
    assert normalise_json(data) == data  # the stored file is in normal form
    raw = {"findings": [{"code": "GS101", "severity": "error", "layers": ["0", "1"],
                         "evidence": {"orders": 10.050209398815044, "zero": 0.0, "steps": [0]}}]}
    noisy = json.loads(json.dumps(raw).replace("10.050209398815044", "10.050209398815061"))
    assert normalise_json(noisy) == normalise_json(raw)
    for changed in ({**raw["findings"][0], "severity": "warning"},
                    {**raw["findings"][0], "layers": ["0"]},
                    {**raw["findings"][0], "evidence": {"orders": 1.0050209398815044, "zero": 0.0, "steps": [0]}},
                    {**raw["findings"][0], "evidence": {"orders": 10.050209398815044, "zero": 1e-9, "steps": [0]}}):
        assert normalise_json({"findings": [changed]}) != normalise_json(raw)
    assert normalise_json({"findings": []}) != normalise_json(raw)


def test_versions_and_paths_are_replaced():
    result = CliRunner().invoke(app, ["version"])
    assert result.exit_code == 0
    assert normalise(result.output) == "gradscope <gradscope-version> (torch <torch-version>)\n"
    # only the running versions are replaced: a version the output names for another reason stays
    assert normalise("/tmp/pytest-7/x/model.py: torch 2.4.1", {"/tmp/pytest-7/x": "<tmp>"}) == "<tmp>/model.py: torch 2.4.1"


@pytest.mark.parametrize("text", ["GS101", "log10", "float64", "layer1.0.conv2", "24.weight", "1000x", "1-3 layers",
                                  "0, 1, 2 and 9 more", "shape (16, 32)"])
def test_names_counts_and_shapes_are_kept(text):
    assert normalise(text) == text


def test_wall_clock_times_are_replaced_whatever_their_magnitude():
    fast, slow = {"verdict": {"evidence": {"probe_seconds": 0.04, "loss_first": 2.3}}}, \
        {"verdict": {"evidence": {"probe_seconds": 31.5, "loss_first": 2.3}}}
    assert normalise_json(fast) == normalise_json(slow)
    assert normalise_json(fast)["verdict"]["evidence"] == {"probe_seconds": "<seconds>", "loss_first": "#.##e+00"}
