"""The failure policy: an error inside gradscope never stops the user's training. A statistic
that fails is reported once per (layer, what) as a ``GradscopeWarning`` and skipped; with
``strict=True`` the error is raised instead."""

from __future__ import annotations

import warnings

from gradscope.errors import GradscopeWarning


class FailurePolicy:
    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self._warned: set[tuple[str, str]] = set()

    def guard(self, layer: str, statistic: str, fn, *args) -> None:
        """Run ``fn(*args)``; a failure is reported (or raised when strict) and skipped."""
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - reported, then the statistic is skipped
            if self.strict:
                raise
            self.report(layer, statistic, e)

    def report(self, layer: str, statistic: str, error: Exception) -> None:
        self.warn_once(
            layer, statistic,
            f"computing {statistic} for layer {layer!r} failed ({type(error).__name__}: {error}); "
            "the statistic is skipped and training goes on. Pass strict=True to raise instead.",
        )

    def warn_once(self, layer: str, what: str, message: str) -> None:
        if (layer, what) not in self._warned:
            self._warned.add((layer, what))
            warnings.warn(f"gradscope: {message}", GradscopeWarning, stacklevel=4)
