"""Writing a file atomically: the new content goes to a temporary file in the same directory, which
then replaces the target in one ``os.replace``. A reader sees the old file or the new one, never
half of one; a full disk or a killed process leaves the old file (or none) and no temporary file.
Every file gradscope writes for its user (reports, baselines, the run directory's JSON files) goes
through here. A symlink is written through to its target; a path that exists and is not a regular
file (a named pipe, ``/dev/stdout``) is written to directly, never replaced."""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Replace ``path`` with ``data`` (text is written as UTF-8), creating its parent directories.

    An ``OSError`` (no space, read-only filesystem, a directory in the way) propagates with the
    target unchanged and the temporary file removed.

    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "out" / "report.json"
    >>> write_atomic(target, '{"ok": true}').read_text()
    '{"ok": true}'
    """
    given = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    # a symlink is written through (a shared baseline linked into a checkout stays shared), and
    # the rename happens beside its target
    path = Path(os.path.realpath(given)) if given.is_symlink() else given
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(given))
    if path.exists() and not path.is_file():
        # a named pipe, a terminal, /dev/stdout: renaming over it would replace it with a file
        with open(path, "wb") as handle:
            handle.write(payload)
        return given
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as e:  # a file where a directory is needed
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), e.filename) from e
    temp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        # 0o666 lets the umask decide the mode, as open(path, "w") would
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:  # name the directory that refused, not the temporary file
        raise type(e)(e.errno, f"the directory {path.parent} takes no new file ({e.strerror})",
                      str(path.parent)) from e
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        if path.is_file():
            os.chmod(temp, path.stat().st_mode & 0o7777)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return given


def append_atomic(path: str | os.PathLike, text: str) -> Path:
    """Append ``text`` to ``path`` (created when missing) by rewriting it whole through
    :func:`write_atomic`: on failure the file keeps exactly what it had."""
    path = Path(path)
    before = path.read_bytes() if path.exists() else b""
    return write_atomic(path, before + text.encode("utf-8"))
