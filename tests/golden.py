"""Golden files: rendered output compared with the files in tests/golden/, after normalising what
varies from machine to machine, as torchinfo's tests do.

What varies, and what is kept:

- Floats depend on the BLAS, the CPU and the torch version in their last digits. Every float in
  the text keeps its shape (sign, leading zeros, exponent, number of digits) and loses its
  significant digits: ``3.58e-11`` becomes ``#.##e-11``, ``0.0569`` becomes ``0.0###``, ``x0.381``
  becomes ``x0.###``. The order of magnitude stays, so a signal off by a factor of ten, or a zero
  that is no longer zero, still fails. Integers (layer names, counts, percentages) stay as they
  are: they come from the model's structure, not from round-off.
- Versions of gradscope and torch become ``<gradscope-version>`` and ``<torch-version>``.
- Wall-clock times (JSON keys ending in ``_seconds``)
  become ``<seconds>``: their order of magnitude depends on the machine.
- Paths of temporary files are replaced by the caller (``paths``), e.g. with ``<tmp>``.
- Widths: rich reads ``COLUMNS`` and ``FORCE_COLOR`` once, when a console is created at import, so
  :func:`pin_consoles` fixes every gradscope console at :data:`WIDTH` columns, without colour.
- Trailing spaces at the ends of lines (rich pads to the width; editors strip them) are dropped.

Comparison also counts a run of ``#`` as one: a 3-significant-digit value printed as ``0.0569``
on one machine and ``0.057`` on another is the same number. Everything else — words, line order,
table rows, indentation — must match the file exactly.

Regenerate the files with ``pytest --update-golden`` and review the diff before committing it.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import torch
from rich.console import Console

import gradscope

GOLDEN_DIR = Path(__file__).parent / "golden"
WIDTH = 100

# A float literal: digits with a decimal point and/or an exponent. Not part of a name or a dotted
# path ("layer1.0.conv", "float64", "GS101"); a leading "x" (a factor, "x0.381") is allowed.
FLOAT = re.compile(
    r"(?:(?<![\w.])|(?<=(?<![\w.])x))"
    r"(?:\d+\.\d+(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+)"
    r"(?!\.\w)(?!x\w)(?![^\Wx])"
)
MASKED_DIGITS = re.compile(r"#+")


def mask_number(literal: str) -> str:
    """``literal`` with its significant digits replaced by ``#``: sign, leading zeros, decimal
    point and exponent kept.

    >>> [mask_number(s) for s in ("3.58e-11", "0.0569", "10.1", "0.0", "-4e+02")]
    ['#.##e-11', '0.0###', '##.#', '0.0', '-#e+02']
    """
    mantissa, exponent = re.fullmatch(r"([-+]?[\d.]+)([eE][-+]?\d+)?", literal).groups()
    first = re.search(r"[1-9]", mantissa)
    if first:
        mantissa = mantissa[: first.start()] + re.sub(r"\d", "#", mantissa[first.start():])
    return mantissa + (exponent or "")


def _versions() -> dict[str, str]:
    found = {}
    for name, version in (("torch", torch.__version__), ("gradscope", gradscope.__version__)):
        for form in (str(version), str(version).split("+")[0]):
            found.setdefault(form, f"<{name}-version>")
    return found


def normalise(text: str, paths: dict[str, str] | None = None) -> str:
    """``text`` with paths, versions and float digits replaced and trailing spaces dropped.

    >>> normalise("signal 3.58e-11 at layer1.0.conv, x0.381 per layer, 15 layers", {})
    'signal #.##e-11 at layer1.0.conv, x0.### per layer, 15 layers'
    """
    for path, token in sorted((paths or {}).items(), key=lambda item: -len(item[0])):
        text = text.replace(path, token)
    for version, token in sorted(_versions().items(), key=lambda item: -len(item[0])):
        text = re.sub(rf"(?<![\w.]){re.escape(version)}(?![\w.+])", token, text)
    text = FLOAT.sub(lambda m: mask_number(m.group()), text)
    return "\n".join(line.rstrip() for line in text.split("\n"))


def normalise_json(data, paths: dict[str, str] | None = None):
    """A JSON document with every float written as its masked ``.2e`` form (exact zeros kept),
    every wall-clock time as ``<seconds>`` and every string passed through :func:`normalise`;
    keys, their order, ints, bools and nulls kept."""
    if isinstance(data, dict):
        return {key: "<seconds>" if key.endswith("_seconds") else normalise_json(value, paths)
                for key, value in data.items()}
    if isinstance(data, list):
        return [normalise_json(value, paths) for value in data]
    if isinstance(data, float):
        return data if data == 0 else mask_number(f"{data:.2e}")
    if isinstance(data, str):
        return normalise(data, paths)
    return data


def json_text(data, paths: dict[str, str] | None = None) -> str:
    """The normalised JSON document as the text stored in a golden file."""
    return json.dumps(normalise_json(data, paths), indent=2, ensure_ascii=False) + "\n"


def comparable(text: str) -> str:
    """The form two normalised texts are compared in: a run of masked digits counts as one."""
    return MASKED_DIGITS.sub("#", text)


def check_golden(name: str, normalised: str, update: bool) -> None:
    """Assert that ``normalised`` matches ``tests/golden/<name>``; with ``update``, rewrite it."""
    path = GOLDEN_DIR / name
    if update:
        path.write_text(normalised, encoding="utf-8")
    assert path.exists(), f"{path} is missing: run `pytest --update-golden` to create it"
    expected = path.read_text(encoding="utf-8")
    if comparable(normalised) != comparable(expected):
        assert normalised == expected, f"output differs from {path}; if the change is intended, run `pytest --update-golden`"


def pin_consoles(monkeypatch, width: int = WIDTH) -> None:
    """Render every gradscope console at ``width`` columns, as a plain (non-terminal) stream.

    rich reads COLUMNS and FORCE_COLOR when the console is created, at import, so a developer's
    exported COLUMNS would otherwise change the golden output; patched per console, undone by
    ``monkeypatch`` after the test.
    """
    for module in [m for name, m in sys.modules.items() if name.split(".")[0] == "gradscope"]:
        for console in [v for v in vars(module).values() if isinstance(v, Console)]:
            monkeypatch.setattr(console, "_width", width)
            monkeypatch.setattr(console, "_force_terminal", False)
            monkeypatch.setattr(console, "_color_system", None)


class Golden:
    """The ``golden`` fixture: ``golden.text(name, output)`` and ``golden.json(name, data)``
    normalise and compare with ``tests/golden/<name>`` (rewritten under ``--update-golden``)."""

    def __init__(self, update: bool, paths: dict[str, str]) -> None:
        self.update = update
        self.paths = paths

    def text(self, name: str, output: str) -> None:
        check_golden(name, normalise(output, self.paths), self.update)

    def json(self, name: str, data) -> None:
        check_golden(name, json_text(data, self.paths), self.update)
