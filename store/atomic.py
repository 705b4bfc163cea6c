"""The one atomic-write helper: temp file in the target directory, fsync, rename, fsync dir.

A reader never sees a half-written file under the final name, and after
``atomic_write`` returns the new content survives a power cut.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import BinaryIO

StrPath = str | os.PathLike[str]


def fsync_dir(path: StrPath) -> None:
    """Make a directory's entries (renames, creations) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: StrPath, mode: int = 0o644, *, durable: bool = True) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` atomically when the block exits cleanly.

    On an exception the temporary file is removed and ``path`` is untouched.
    ``durable=False`` skips the fsyncs, for callers that sync the whole
    filesystem once at the end of a transaction instead.
    """
    path = os.fspath(path)
    directory, name = os.path.split(path)
    directory = directory or "."
    tmp = os.path.join(directory, f".{name}.tmp{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except OSError as err:  # name what the caller knows (the directory), not our temp name
        raise type(err)(err.errno, err.strerror, directory) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(directory)


def atomic_write(path: StrPath, data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically (see ``atomic_file``)."""
    with atomic_file(path, mode, durable=durable) as handle:
        handle.write(data)
