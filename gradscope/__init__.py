"""gradscope: see gradient flow in any PyTorch model, name the problem, fix it.

Data flows one way: ``hooks`` and ``params`` capture activations and gradients → ``stats``
reduce them on the device → ``buffer`` ships one step to the host in one copy → ``history``
keeps it (and ``sinks`` take each step to TensorBoard and the run directory) → ``rules`` read the
records and emit findings with fixes → ``reporters`` render them. ``monitor`` runs the capture
lifecycle and step clock, ``api`` is the Python front (``diagnose`` runs the whole chain on
example inputs); ``fixes`` holds the fixes that are code. docs/architecture.md has the map.

The public names load on first use (PEP 562), so ``import gradscope``, the pytest plugin and
``gradscope --help`` do not import torch or pandas until something asks for them.
"""

import importlib as _importlib
import sys as _sys
import types as _types
import typing as _typing

if _typing.TYPE_CHECKING:  # what the table below gives, for type checkers and editors
    from gradscope import fixes
    from gradscope.coordcheck import coordcheck
    from gradscope.detectors import Detector
    from gradscope.diagnose import ModelError, diagnose
    from gradscope.errors import GradscopeWarning, UsageError, UsageTypeError
    from gradscope.api import Monitor, monitor
    from gradscope.report import Report
    from gradscope.rules import RULES, Finding
    from gradscope.stats import STATISTICS
    from gradscope.version import __version__

# public name -> (module that defines it, attribute; None when the name is the module itself)
_PUBLIC: dict[str, tuple[str, str | None]] = {
    "Detector": ("gradscope.detectors", "Detector"),
    "Finding": ("gradscope.rules", "Finding"),
    "GradscopeWarning": ("gradscope.errors", "GradscopeWarning"),
    "ModelError": ("gradscope.diagnose", "ModelError"),
    "Monitor": ("gradscope.api", "Monitor"),
    "RULES": ("gradscope.rules", "RULES"),
    "Report": ("gradscope.report", "Report"),
    "STATISTICS": ("gradscope.stats", "STATISTICS"),
    "UsageError": ("gradscope.errors", "UsageError"),
    "UsageTypeError": ("gradscope.errors", "UsageTypeError"),
    "__version__": ("gradscope.version", "__version__"),
    "coordcheck": ("gradscope.coordcheck", "coordcheck"),
    "diagnose": ("gradscope.diagnose", "diagnose"),
    "fixes": ("gradscope.fixes", None),
    "monitor": ("gradscope.api", "monitor"),
}

__all__ = list(_PUBLIC)

# `gradscope.monitor`, `gradscope.diagnose` and `gradscope.coordcheck` are the functions, though submodules of the same
# names exist: importing a submodule binds it on its package, which would hide the function.
_FUNCTIONS_OVER_MODULES = frozenset({"coordcheck", "diagnose", "monitor"})


def __getattr__(name: str) -> object:
    try:
        module, attribute = _PUBLIC[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = _importlib.import_module(module)
    if attribute is not None:
        value = getattr(value, attribute)
    globals()[name] = value  # resolved once; later reads are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


class _Package(_types.ModuleType):
    def __setattr__(self, name: str, value: object) -> None:
        if name in _FUNCTIONS_OVER_MODULES and isinstance(value, _types.ModuleType):
            return  # the import system binding the submodule; __getattr__ gives the function
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package
