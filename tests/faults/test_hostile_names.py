"""Layer names are the user's (``add_module`` takes almost any string without a dot): in every
output they stay text. The terminal shows control characters as escapes and no line of ours starts
a GitHub Actions workflow command; the markdown step summary holds no heading, image or HTML from a
name; the JUnit XML parses, with no control character."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from tests.faults.cli import assert_exit, files, invoke, model_file

HOSTILE = ["::error file=x::pwned", "\x1b[31mred", "<script>alert(1)</script>", "# heading",
           "![img](http://x)", "line\n::warning::two", "[/x]"]

MODEL = f"""
    import torch.nn as nn

    NAMES = {HOSTILE!r}

    def build_model():
        model = nn.Sequential()
        for name in NAMES:
            model.add_module(name, nn.Linear(8, 8))
            model.add_module(name + " act", nn.Sigmoid())
        return model
"""


@pytest.fixture
def checked(tmp_path):
    model = model_file(tmp_path / "src", MODEL)
    summary, junit = tmp_path / "summary.md", tmp_path / "junit.xml"
    before = files(tmp_path / "src")
    result = invoke("check", model, "--table", "--junit", junit,
                    env={"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)})
    assert_exit(result, 1)  # the deep sigmoid stack fails the gate
    assert files(tmp_path / "src") == before
    return model, result, summary.read_text(encoding="utf-8"), junit


def test_the_terminal_shows_names_as_text(checked):
    model, result, _, _ = checked
    for stream in (result.stdout, result.stderr):
        assert "\x1b" not in stream and "\r" not in stream
        for line in stream.splitlines():
            if line.lstrip().startswith("::"):  # only gradscope's own annotations
                assert re.match(rf"::(error|warning) file={re.escape(str(model))},title=", line), line
    assert "\\x1b[31mred" in result.stdout
    assert "\\::error file=x::pwned" in result.stdout  # a name at the start of a table row


def test_the_step_summary_escapes_names(checked):
    _, _, summary, _ = checked
    prose = re.sub(r"(`{3,})python\n.*?\n\1\n", "", summary, flags=re.DOTALL)  # code blocks show code
    assert "<script>" in summary and "<script>" not in prose
    summary = prose
    assert "<script>" not in summary and "![img]" not in summary and "\x1b" not in summary
    headings = [line for line in summary.splitlines() if line.lstrip().startswith("#")]
    assert all(line.startswith(("## gradscope: ", "### ")) for line in headings), headings
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in summary and "\\# heading" in summary
    for line in summary.splitlines():
        if line.startswith("| ") and "Linear" in line:
            assert line.count(" | ") == 5  # a name holds no unescaped cell separator


def test_the_junit_xml_is_valid_and_holds_the_names_as_text(checked):
    _, _, _, junit = checked
    raw = junit.read_bytes()
    assert b"\x1b" not in raw
    text = "".join(ET.parse(junit).getroot().itertext()) + " ".join(
        v for e in ET.parse(junit).iter() for v in e.attrib.values())
    assert "<script>alert(1)</script>" in text and "\\x1b[31mred" in text
