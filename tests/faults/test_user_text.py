"""Text from the user (a file path, an option value, an exception message) is printed as it is:
rich markup in it neither crashes the command (``[/x]``), nor disappears (``[mask]``), nor becomes a
hyperlink (``[link=...]``)."""

from __future__ import annotations

import pytest

from tests.faults.cli import SIGMOID, assert_exit, files, invoke, model_file

MARKUP = ["[/x]", "[mask]", "[link=http://example.com]here"]


def _said(result, text: str) -> bool:
    return text in "".join(result.output.split("\n"))


@pytest.mark.parametrize("text", MARKUP)
def test_markup_in_a_file_path_is_printed_as_text(tmp_path, text):
    path = model_file(tmp_path / f"d{text.replace('/', '')}", "import torch\nmodel = 3\n", name=f"{text.replace('/', '')}.py")
    before = files(tmp_path)
    result = invoke("diagnose", path)
    assert_exit(result, 2)
    assert _said(result, str(path))
    assert "\x1b]8;" not in result.output  # no hyperlink
    assert files(tmp_path) == before


@pytest.mark.parametrize("text", MARKUP)
def test_markup_in_a_factory_name_is_printed_as_text(tmp_path, text):
    path = model_file(tmp_path, SIGMOID)
    result = invoke("check", path, "--factory", text)  # not a name: evaluated as an expression, which fails
    assert_exit(result, 2)
    assert _said(result, f"--factory {text!r}")


@pytest.mark.parametrize("text", MARKUP)
def test_markup_in_an_exception_from_the_model_is_printed_as_text(tmp_path, text):
    path = model_file(tmp_path, f"""
        def build_model():
            raise ValueError({text!r})
    """)
    result = invoke("diagnose", path)
    assert_exit(result, 2)
    assert _said(result, f"build_model() raised ValueError: {text}")


def test_markup_in_a_baseline_path_is_printed_as_text(tmp_path):
    path = model_file(tmp_path, SIGMOID)
    result = invoke("check", path, "--baseline", tmp_path / "[/x]" / "[mask].json")
    assert_exit(result, 2)
    assert _said(result, "No baseline at " + str(tmp_path / "[/x]" / "[mask].json"))
