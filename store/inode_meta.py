"""Giving an inode the metadata a tree records: owner, mode, xattrs, in that order.

Order matters: chown clears the setuid and setgid bits and drops
``security.capability``, so owner first, then mode, then xattrs.
"""

from __future__ import annotations

import os

from . import xattrs
from .model import Meta


def apply_meta(fd: int, meta: Meta) -> None:
    """Give an open file or directory the tree's metadata."""
    os.fchown(fd, meta.uid, meta.gid)
    os.fchmod(fd, meta.mode)
    if meta.xattrs:
        xattrs.write(fd, meta.xattrs)


def apply_xattrs(fd: int, meta: Meta) -> None:
    """Give an open file the tree's xattrs (its owner and mode are right already)."""
    if meta.xattrs:
        xattrs.write(fd, meta.xattrs)


def apply_meta_path(path: str | bytes, meta: Meta, *, symlink: bool = False) -> None:
    """Set a path's owner, mode (not for symlinks) and xattrs, never following a symlink."""
    os.chown(path, meta.uid, meta.gid, follow_symlinks=False)
    if not symlink:
        os.chmod(path, meta.mode)
    if meta.xattrs:
        xattrs.write(path, meta.xattrs)


def apply_symlink_meta_at(dir_fd: int, name: bytes, meta: Meta) -> None:
    """Set the owner and xattrs of the symlink ``name`` in the directory ``dir_fd`` (a symlink
    has no mode of its own and cannot be opened for its xattrs: they are set through the
    directory's ``/proc/self/fd`` entry, so the path stays short however deep it is)."""
    os.chown(name, meta.uid, meta.gid, dir_fd=dir_fd, follow_symlinks=False)
    if meta.xattrs:
        xattrs.write(f"/proc/self/fd/{dir_fd}/".encode() + name, meta.xattrs)
