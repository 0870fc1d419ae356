"""What the light entry points import: the pytest plugin (loaded in every pytest run where gradscope
is installed), ``gradscope --help`` and ``import gradscope`` load no torch, pandas or numpy; the
package's public names still resolve, each to what it always was."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import gradscope

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "pandas", "numpy")


def heavy_imported(code: str) -> list[str]:
    """The heavy modules in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = textwrap.dedent(code) + f"\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT,
                            env={"PYTHONPATH": str(ROOT), "PATH": "", "COLUMNS": "100"}, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_pytest_plugin_imports_nothing_heavy():
    assert heavy_imported("import gradscope.pytest_plugin") == []


def test_package_root_imports_nothing_heavy():
    assert heavy_imported("import gradscope; gradscope.__version__; gradscope.UsageError") == []


@pytest.mark.parametrize("args", [["--help"], ["diagnose", "--help"]])
def test_cli_help_imports_nothing_heavy(args):
    assert heavy_imported(f"""
        import contextlib, io, sys
        sys.argv = ["gradscope", *{args!r}]
        from gradscope.cli import app
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
            app()
    """) == []


def test_public_names_resolve_to_the_api():
    from gradscope.diagnose import diagnose
    from gradscope.api import monitor

    import gradscope.diagnose as diagnose_module  # binds the submodule, which must not hide the function
    import gradscope.monitor as monitor_module  # noqa: F401

    assert gradscope.monitor is monitor and gradscope.diagnose is diagnose
    assert diagnose_module is diagnose  # `import a.b as c` reads the attribute, as before
    assert sorted(gradscope.__all__) == sorted(set(gradscope.__all__))
    assert set(gradscope.__all__) <= set(dir(gradscope))
    for name in gradscope.__all__:
        assert getattr(gradscope, name) is not None
    with pytest.raises(AttributeError, match="module 'gradscope' has no attribute 'nope'"):
        gradscope.nope  # noqa: B018


def test_version_is_the_distribution_version():
    from importlib.metadata import version

    from gradscope.version import DISTRIBUTION

    assert gradscope.__version__ == version(DISTRIBUTION)
    assert f'name = "{DISTRIBUTION}"' in (Path(__file__).parents[1] / "pyproject.toml").read_text()
