"""The example scripts, loaded as modules for the tests that run them."""

from __future__ import annotations

import importlib.util
import sys
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Iterator

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@contextmanager
def example(name: str) -> Iterator[ModuleType]:
    """``examples/<name>.py`` as a module while the block runs."""
    spec = importlib.util.spec_from_file_location(f"{name}_example", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]
