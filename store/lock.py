"""Advisory file locks (flock) as context managers."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator

from .errors import RepositoryError


@contextlib.contextmanager
def flock(path: str, *, exclusive: bool, wait: bool = True) -> Iterator[None]:
    """Hold a shared or exclusive lock on ``path`` (created if missing) for the block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        op = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, op)
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise RepositoryError("locked by another sealtree process", path=path) from err
            raise
        yield
    finally:
        os.close(fd)


def try_flock(path: str) -> bool:
    """True if nobody holds any lock on ``path`` (checked by taking it briefly)."""
    try:
        with flock(path, exclusive=True, wait=False):
            return True
    except RepositoryError:
        return False
    except FileNotFoundError:
        return True
