"""Removing a directory tree of any depth, never following a symlink.

``shutil.rmtree`` recurses (one Python frame per level), so a tree deeper than
the recursion limit cannot be removed with it, and full paths of a deep tree
exceed PATH_MAX.  ``remove_tree`` walks with one open directory at a time,
relative to it (``openat``/``unlinkat``), going down into a child and back up
through ``..``, which it checks is the directory it came from.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _first_subdirectory(fd: int) -> str | None:
    """Unlink every non-directory in the directory ``fd``; the name of a subdirectory left,
    or None when the directory is now empty."""
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                return entry.name
            with contextlib.suppress(FileNotFoundError):  # removed meanwhile: what we want
                os.unlink(entry.name, dir_fd=fd)
    return None


def remove_tree(path: str) -> None:
    """Remove ``path`` and everything below it; a symlink (at ``path`` or below) is removed,
    never followed.  A ``path`` that does not exist, or an entry removed meanwhile, is not an
    error.  Iterative, and relative
    to one open directory at a time, so any depth and any path length is removed.  An OSError
    (a mount point below, a directory that changed under us) stops it, leaving the rest."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    fd = os.open(path, _OPEN_DIR)
    # the names walked down from ``path``, each with the identity of the directory holding it
    above: list[tuple[str, tuple[int, int]]] = []
    try:
        while True:
            child = _first_subdirectory(fd)
            if child is not None:
                try:
                    child_fd = os.open(child, _OPEN_DIR, dir_fd=fd)
                except FileNotFoundError:  # removed meanwhile
                    continue
                above.append((child, _identity(fd)))
                os.close(fd)
                fd = child_fd
                continue
            if not above:
                break
            name, parent = above.pop()
            parent_fd = os.open("..", _OPEN_DIR, dir_fd=fd)
            os.close(fd)
            fd = parent_fd
            if _identity(fd) != parent:
                raise OSError(errno.ESTALE, "a directory was moved while it was being removed",
                              path)
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(name, dir_fd=fd)
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(path)
