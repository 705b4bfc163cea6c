"""What a tree can store: metadata and symlink targets checked before they enter a tree.

Sources (directory, tar, git) read metadata from the outside world; these checks
refuse, naming the source path, what the tree format or Linux cannot hold.
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import SourceError
from .inode_rules import meta_problem
from .model import MAX_TARGET, MAX_XATTR_NAME, MAX_XATTR_VALUE, MAX_XATTRS, PERMISSION_BITS, Kind, Meta
from .names import show

MAX_ID = (1 << 32) - 1
# Linux refuses xattrs outside these namespaces (EOPNOTSUPP), so a tree must not hold them.
XATTR_NAMESPACES = (b"security.", b"system.", b"trusted.", b"user.")


def check_storable_meta(meta: Meta, where: str | bytes, kind: Kind | None = None) -> Meta:
    """``meta`` when a tree can hold it (permission bits only, 32-bit ids, at most MAX_XATTRS
    sorted, unique, Linux-namespaced xattrs within the size limits) and, with ``kind``, when
    Linux gives an inode of that kind this metadata (``store.inode_rules``); else SourceError
    about ``where``."""
    if meta.mode & ~PERMISSION_BITS:
        raise SourceError(f"mode {meta.mode:#o} has bits outside {PERMISSION_BITS:#o}",
                          path=where)
    for number, what in ((meta.uid, "uid"), (meta.gid, "gid")):
        if not 0 <= number <= MAX_ID:
            raise SourceError(f"{what} {number} is out of range", path=where)
    if len(meta.xattrs) > MAX_XATTRS:
        raise SourceError(f"{len(meta.xattrs)} xattrs exceed the limit of {MAX_XATTRS}",
                          path=where)
    previous = None
    for name, value in meta.xattrs:
        if not name.startswith(XATTR_NAMESPACES) or b"\0" in name or len(name) > MAX_XATTR_NAME:
            raise SourceError(f"xattr name {show(name)} is not valid on Linux (it needs a "
                              f"namespace such as 'user.', no NUL, at most {MAX_XATTR_NAME} bytes)",
                              path=where)
        if len(value) > MAX_XATTR_VALUE:
            raise SourceError(f"xattr {show(name)} value of {len(value)} bytes exceeds "
                              f"{MAX_XATTR_VALUE}", path=where)
        if previous is not None and name <= previous:
            raise SourceError(f"xattr {show(name)} given twice", path=where)
        previous = name
    problem = meta_problem(kind, meta) if kind is not None else None
    if problem is not None:
        raise SourceError(problem, path=where)
    return meta


def sorted_xattrs(pairs: Iterable[tuple[bytes, bytes]]) -> tuple[tuple[bytes, bytes], ...]:
    return tuple(sorted(pairs))


def check_target(target: bytes, where: str | bytes) -> bytes:
    """``target`` when a symlink in a tree can hold it (1 to MAX_TARGET bytes, no NUL);
    else SourceError about ``where``."""
    if not 0 < len(target) <= MAX_TARGET or b"\0" in target:
        raise SourceError(f"symlink target must be 1 to {MAX_TARGET} bytes without NUL "
                          f"(got {len(target)} bytes)", path=where)
    return target
