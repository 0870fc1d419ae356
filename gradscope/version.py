"""gradscope's version, read from the installed distribution's metadata.

Reading the metadata imports nothing of gradscope, so any module can ask for the version without
loading the package; pyproject.toml holds the one written copy.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

UNKNOWN = "0+unknown"
DISTRIBUTION = "torch-gradscope"
"""The name pip knows gradscope by (pyproject.toml's ``[project] name``): ``gradscope`` on the
package index is an unrelated project. The import name and the command are ``gradscope``."""


def gradscope_version() -> str:
    """The installed version, or ``0+unknown`` when gradscope runs from a source tree that was never
    installed (no metadata to read).

    >>> gradscope_version() != ""
    True
    """
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return UNKNOWN


__version__ = gradscope_version()
