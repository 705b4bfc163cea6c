"""Extended attributes as raw bytes, never following symlinks.

Through the ``xattr`` package where it is installed; otherwise (an initramfs
with only the standard library) through ``os.listxattr``/``getxattr``/``setxattr``,
whose ``str`` names are the surrogateescape'd bytes, so nothing is lost.
"""

from __future__ import annotations

import errno
import os

try:
    from xattr import pyxattr_compat as _x
except ImportError:  # the boot verifier in an initramfs: stdlib only
    _x = None

Xattrs = tuple[tuple[bytes, bytes], ...]


def _list(path: str | bytes | int, nofollow: bool) -> list[bytes]:
    if _x is not None:
        names: list[bytes] = _x.list(path, nofollow=nofollow)
        return names
    return [os.fsencode(name) for name in os.listxattr(path, follow_symlinks=not nofollow)]


def _get(path: str | bytes | int, name: bytes, nofollow: bool) -> bytes:
    if _x is not None:
        value: bytes = _x.get(path, name, nofollow=nofollow)
        return value
    return os.getxattr(path, name, follow_symlinks=not nofollow)


def _set(path: str | bytes | int, name: bytes, value: bytes, nofollow: bool) -> None:
    if _x is not None:
        _x.set(path, name, value, nofollow=nofollow)
    else:
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
