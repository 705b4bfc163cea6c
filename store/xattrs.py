"""Extended attributes as raw bytes, never following symlinks.

Through ``os.listxattr``/``getxattr``/``setxattr`` (the standard library, as in an
initramfs): their ``str`` names are the surrogateescape'd bytes, so nothing is lost,
and they take bytes names as they are.  (The ``xattr`` package, used before, cost a
cffi library's load on every start-up and did nothing these do not.)
"""

from __future__ import annotations

import errno
import os

Xattrs = tuple[tuple[bytes, bytes], ...]


def _list(path: str | bytes | int, nofollow: bool) -> list[bytes]:
    return [os.fsencode(name) for name in os.listxattr(path, follow_symlinks=not nofollow)]


def _get(path: str | bytes | int, name: bytes, nofollow: bool) -> bytes:
    return os.getxattr(path, name, follow_symlinks=not nofollow)


def _set(path: str | bytes | int, name: bytes, value: bytes, nofollow: bool) -> None:
    os.setxattr(path, name, value, follow_symlinks=not nofollow)


def read(path: str | bytes | int) -> Xattrs:
    """All xattrs of ``path`` (a path or an fd) sorted by name; () where the fs has none."""
    nofollow = not isinstance(path, int)
    try:
        names = _list(path, nofollow)
        if not names:
            return ()
        return tuple(sorted((name, _get(path, name, nofollow)) for name in names))
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.ENODATA):
            return ()
        raise


def write(path: str | bytes | int, xattrs: Xattrs) -> None:
    """Set every xattr in ``xattrs`` on ``path`` (a path or an fd)."""
    nofollow = not isinstance(path, int)
    for name, value in xattrs:
        _set(path, name, value, nofollow)
