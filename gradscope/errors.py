"""The exception and warning types gradscope raises to its users."""

from __future__ import annotations


class UsageError(ValueError):
    """An argument or input that gradscope cannot work with.

    The message says what was given, what was expected and what to do. It subclasses
    ``ValueError`` so callers that catch argument errors the usual way keep working.
    """


class UsageTypeError(UsageError, TypeError):
    """A usage error about the type of an argument; also a ``TypeError``."""


def first_line(message: object, limit: int = 200) -> str:
    """An error's message cut to its first line (torch's dispatcher errors list every backend)."""
    text = str(message).strip()
    return text.splitlines()[0][:limit] if text else ""


class GradscopeWarning(UserWarning):
    """A statistic could not be computed and was skipped; training went on."""
