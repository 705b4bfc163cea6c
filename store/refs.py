"""Refs: names that point at commits, one small file each under ``refs/heads/``.

A ref changes only by compare-and-swap: under the refs lock, the current value
is re-read and must equal what the caller expects, then the new value is
written atomically and durably.
"""

from __future__ import annotations

import contextlib
import os
import re

from .atomic import atomic_write, is_temporary_name
from .errors import FormatError, RefError
from .ids import RawId, parse_hex, to_hex, to_raw
from .layout import RepoLayout
from .lock import flock
from .names import show

_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]*")


MAX_REF_NAME = 255


def check_ref_name(name: str) -> str:
    """Return ``name`` if it is a valid ref name (``a/b-1.2``), else raise RefError about it.

    A name (and so each component) is at most 255 bytes, what a directory entry may be;
    the temporary file a ref is written under is short enough for any such component
    (``store.atomic.temporary_name``)."""
    parts = name.split("/")
    if not name or len(name) > MAX_REF_NAME or not all(_COMPONENT.fullmatch(p) for p in parts) \
            or any(p.endswith(".lock") or ".." in p for p in parts):
        raise RefError("invalid ref name: use letters, digits, '._+-', separated by '/'",
                       path=name)
    return name


class Refs:
    def __init__(self, layout: RepoLayout) -> None:
        self.root = layout.refs_heads
        self.lock_path = layout.refs_lock

    def _path(self, name: str) -> str:
        return os.path.join(self.root, check_ref_name(name))

    def read(self, name: str) -> RawId | None:
        """The commit ``name`` points at, or None if there is no such ref."""
        path = self._path(name)
        try:
            with open(path, encoding="ascii") as handle:
                text = handle.read().strip()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except UnicodeDecodeError:
            raise RefError("not ASCII", path=name, file=path) from None
        try:
            return to_raw(parse_hex(text))
        except FormatError as err:
            raise RefError(f"corrupt ({err})", path=name, file=path) from err

    def names(self) -> list[str]:
        """Every file under ``refs/heads/`` as a ref name, sorted, unread and unchecked."""
        out = []
        for directory, _dirs, files in os.walk(self.root):
            for file in files:
                if not file.startswith("."):  # a temporary file of an update in progress
                    out.append(os.path.relpath(os.path.join(directory, file), self.root))
        return sorted(out)

    def list(self) -> dict[str, RawId]:
        """Every ref and its commit; RefError for the first bad one (``fsck`` reports them all)."""
        out: dict[str, RawId] = {}
        for name in self.names():
            value = self.read(name)
            if value is not None:
                out[name] = value
        return out

    def conflict(self, name: str) -> str | None:
        """An existing ref that ``name`` cannot coexist with, as files and directories
        under ``refs/heads/``: ``a`` and ``a/b`` exclude each other.  None if there is none."""
        parts = check_ref_name(name).split("/")
        for end in range(1, len(parts)):
            prefix = "/".join(parts[:end])
            path = os.path.join(self.root, prefix)
            if os.path.lexists(path) and not os.path.isdir(path):
                return prefix
        return self._first_below(os.path.join(self.root, name))

    def _first_below(self, directory: str) -> str | None:
        """The first (sorted) ref in ``directory`` or below; None if none or not a directory."""
        names = (os.path.relpath(os.path.join(parent, file), self.root)
                 for parent, _dirs, files in os.walk(directory)
                 for file in files if not file.startswith("."))
        return min(names, default=None)

    def check_free(self, name: str) -> None:
        """Raise RefError if ``name`` conflicts with an existing ref (see ``conflict``)."""
        other = self.conflict(name)
        if other is not None:
            raise RefError(f"conflicts with existing ref {show(other)}", path=name,
                           file=os.path.join(self.root, other))

    def update(self, name: str, new: RawId | None, expected: RawId | None) -> None:
        """Set ``name`` to ``new`` (None deletes) if it still points at ``expected``."""
        path = self._path(name)
        with flock(self.lock_path, exclusive=True):
            self._remove_temporaries(os.path.dirname(path))
            current = self.read(name)
            if current != expected:
                raise RefError(f"changed: expected {to_hex(expected) if expected else 'none'}, "
                               f"found {to_hex(current) if current else 'none'}", path=name,
                               file=path)
            if new is None:
                os.unlink(path)
                self._remove_empty_parents(path)
                return
            self.check_free(name)
            self._remove_empty_dirs(name, path)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_write(path, (to_hex(new) + "\n").encode())

    @staticmethod
    def _remove_temporaries(directory: str) -> None:
        """Remove the temporary files of ref updates in ``directory`` that a crash left: every
        update holds the refs lock, which we hold, so none of them is in progress."""
        try:
            names = os.listdir(directory)
        except (FileNotFoundError, NotADirectoryError):
            return
        for file in names:
            if is_temporary_name(file):
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    os.unlink(os.path.join(directory, file))

    def _remove_empty_parents(self, path: str) -> None:
        """Remove the directories above a deleted ref that are now empty (``a/`` of ``a/b``),
        so that the name ``a`` is free again."""
        directory = os.path.dirname(path)
        while directory != self.root:
            try:
                os.rmdir(directory)
            except OSError:
                return
            directory = os.path.dirname(directory)

    def _remove_empty_dirs(self, name: str, path: str) -> None:
        """Remove empty directories at ``path`` (left by refs deleted by hand), which hold
        no ref (``check_free`` said so); a directory still there after it is a conflict."""
        for parent, _dirs, _files in os.walk(path, topdown=False):
            with contextlib.suppress(OSError):
                os.rmdir(parent)
        if os.path.isdir(path):
            raise RefError(f"{show(path)} is a directory holding files that are not refs",
                           path=name, file=path)

