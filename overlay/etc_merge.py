"""Carrying /etc to a new deployment: a three-way merge, the way ostree does it.

Three directories: the old deployment's /etc as its vendor shipped it (the base),
the user's /etc (the old deployment's writable /etc, as the system left it), and
the new deployment's /etc as its vendor ships it.  Per path (file, directory,
symlink, special file; compared by type, content or target, mode, owner and
xattrs):

* the user changed nothing (user == base): the new vendor's version, or nothing
  when the new release removed it: **vendor changes are applied**;
* the user changed it (modified, added, removed) and the vendor did not
  (new == base), or both made the same change: **the user's version is kept**;
* both changed it differently: a **conflict**, named by path; the user's version
  is kept (as ostree does: a user's configuration is never lost), and the caller
  reports the conflict (``status``, the deploy output) so that it is looked at.

A path whose directory the user removed or replaced by something else cannot be
placed: it is dropped and named as a conflict too (only the topmost such path).
Hardlinks between /etc files are not kept (each path gets its own copy).

:func:`plan_merge` decides on three :func:`read_tree` snapshots, without touching
the disk; :func:`write_merged` builds the merged /etc in a new directory from
the user's and the new vendor's files; :func:`merge_etc` does both.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping
from enum import Enum

from store import xattrs
from store.errors import DeployError
from store.model import Meta
from store.names import show
from store.record import Frozen

__all__ = ["Conflict", "EtcMergeError", "MergePlan", "Node", "Side", "merge_etc", "plan_merge",
           "read_tree", "write_merged"]

_CHUNK = 1 << 20


class EtcMergeError(DeployError):
    """An /etc could not be read or the merged one could not be written (``path`` says which file)."""


class Node(Frozen):
    """What one path of an /etc is, as far as the merge compares it."""

    __slots__ = ("type_bits", "meta", "content")
    _fields = __slots__
    type_bits: int  # stat.S_IFMT of the inode
    meta: Meta
    content: bytes  # a file's SHA-256, a symlink's target, a device's rdev; b"" for a directory

    def __init__(self, type_bits: int, meta: Meta, content: bytes) -> None:
        self._set_fields(type_bits, meta, content)

    @property
    def is_dir(self) -> bool:
        return self.type_bits == stat.S_IFDIR


Tree = Mapping[bytes, Node]  # "a/b" (relative to the /etc root; b"" is the root) -> node


class Side(Enum):
    """Where a path of the merged /etc comes from."""

    USER = "user"
    VENDOR = "vendor"


class Conflict(Frozen):
    """A path both the user and the new release changed, differently: the user's version is kept;
    or a path of the new release whose directory the user removed or replaced: it is dropped."""

    __slots__ = ("path", "user", "vendor")
    _fields = __slots__
    path: bytes
    user: str  # "added", "modified", "removed", or "removed or replaced its directory"
    vendor: str  # "added", "modified", "removed"

    def __init__(self, path: bytes, user: str, vendor: str) -> None:
        self._set_fields(path, user, vendor)

    def describe(self) -> str:
        return f"{show(self.path)}: {self.user} by the user, {self.vendor} by the new release"


class MergePlan(Frozen):
    """The merged /etc: each path and the side its node comes from; and what it costs."""

    __slots__ = ("result", "kept", "updated", "conflicts")
    _fields = __slots__
    result: dict[bytes, tuple[Side, Node]]
    kept: tuple[bytes, ...]  # the user's changes carried over (including removals)
    updated: tuple[bytes, ...]  # the new release's changes applied (including removals)
    conflicts: tuple[Conflict, ...]

    def __init__(self, result: dict[bytes, tuple[Side, Node]], kept: tuple[bytes, ...],
                 updated: tuple[bytes, ...], conflicts: tuple[Conflict, ...]) -> None:
        self._set_fields(result, kept, updated, conflicts)


# -- reading ---------------------------------------------------------------------------------------

def _digest(path: bytes) -> bytes:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            sha.update(chunk)
    return sha.digest()


def _node(path: bytes, st: os.stat_result) -> Node:
    meta = Meta(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, xattrs.read(path))
    kind = stat.S_IFMT(st.st_mode)
    if kind == stat.S_IFREG:
        return Node(kind, meta, _digest(path))
    if kind == stat.S_IFLNK:
        return Node(kind, meta, os.readlink(path))
    if kind in (stat.S_IFCHR, stat.S_IFBLK):
        return Node(kind, meta, str(st.st_rdev).encode())
    return Node(kind, meta, b"")  # a directory, fifo or socket


def read_tree(root: str | bytes) -> dict[bytes, Node]:
    """Every path under ``root`` (``root`` itself as b""), symlinks not followed.

    Raises EtcMergeError naming the path that cannot be read.
    """
    top = os.fsencode(root)
    tree: dict[bytes, Node] = {}
    todo = [b""]
    while todo:
        rel = todo.pop()
        path = os.path.join(top, rel) if rel else top
        try:
            tree[rel] = node = _node(path, os.lstat(path))
            if node.is_dir:
                todo.extend(os.path.join(rel, name) if rel else name for name in os.listdir(path))
        except OSError as err:
            raise EtcMergeError(f"cannot read: {err.strerror}", path=path) from err
    return tree


# -- deciding --------------------------------------------------------------------------------------

def _change(before: Node | None, after: Node | None) -> str:
    if before is None:
        return "added"
    return "removed" if after is None else "modified"


def _parent(path: bytes) -> bytes:
    return path.rpartition(b"/")[0]


def plan_merge(base: Tree, user: Tree, new: Tree) -> MergePlan:
    """The three-way merge of the module docstring, on snapshots (nothing is read or written)."""
    chosen: dict[bytes, tuple[Side, Node | None]] = {}
    kept: list[bytes] = []
    updated: list[bytes] = []
    conflicts: list[Conflict] = []
    for path in sorted(set(base) | set(user) | set(new)):
        b, u, n = base.get(path), user.get(path), new.get(path)
        if u == b:
            chosen[path] = (Side.VENDOR, n)
            if n != b:
                updated.append(path)
        elif n == b or n == u:
            chosen[path] = (Side.USER, u)
            kept.append(path)
        else:
            chosen[path] = (Side.USER, u)
            kept.append(path)
            conflicts.append(Conflict(path, _change(b, u), _change(b, n)))
    # Sorted, a directory comes before everything in it: drop what has no directory to go in.
    result: dict[bytes, tuple[Side, Node]] = {}
    dropped: set[bytes] = set()
    for path, (side, node) in chosen.items():
        if node is None:
            continue
        if path:
            parent = result.get(_parent(path))
            if parent is None or not parent[1].is_dir:
                if _parent(path) not in dropped:
                    conflicts.append(Conflict(path, "removed or replaced its directory",
                                              _change(base.get(path), new.get(path))))
                dropped.add(path)
                continue
        result[path] = (side, node)
    return MergePlan(result, tuple(kept), tuple(updated),
                     tuple(sorted(conflicts, key=lambda c: c.path)))


# -- writing ---------------------------------------------------------------------------------------

def _copy_file(src: bytes, dst: bytes) -> None:
    with open(src, "rb") as source, open(dst, "xb") as out:
        while chunk := source.read(_CHUNK):
            out.write(chunk)


def _create(src: bytes, dst: bytes, node: Node) -> None:
    kind = node.type_bits
    if kind == stat.S_IFDIR:
        os.mkdir(dst, 0o700)  # its own mode once everything in it is written
    elif kind == stat.S_IFREG:
        _copy_file(src, dst)
    elif kind == stat.S_IFLNK:
        os.symlink(node.content, dst)
    else:
        rdev = int(node.content) if node.content else 0
        os.mknod(dst, kind | 0o600, rdev)
    os.lchown(dst, node.meta.uid, node.meta.gid)
    xattrs.write(dst, node.meta.xattrs)
    if kind not in (stat.S_IFDIR, stat.S_IFLNK):
        os.chmod(dst, node.meta.mode)


def write_merged(plan: MergePlan, user_root: str | bytes, new_root: str | bytes, out: str | bytes) -> None:
    """Build the merged /etc at ``out`` (which must not exist) from the user's and the new
    vendor's files, each path with exactly the metadata the plan compared.

    A file changed since it was read is copied as it is now (the caller holds the
    deployment so that nothing writes the old /etc meanwhile).  Raises EtcMergeError.
    """
    roots = {Side.USER: os.fsencode(user_root), Side.VENDOR: os.fsencode(new_root)}
    top = os.fsencode(out)
    paths = sorted(plan.result)
    for path in paths:
        side, node = plan.result[path]
        src = os.path.join(roots[side], path) if path else roots[side]
        dst = os.path.join(top, path) if path else top
        try:
            _create(src, dst, node)
        except OSError as err:
            raise EtcMergeError(f"cannot write the merged /etc: {err.strerror}",
                                path=err.filename or dst) from err
    for path in reversed(paths):  # directories last, deepest first: a read-only one is then full
        side, node = plan.result[path]
        if node.is_dir:
            dst = os.path.join(top, path) if path else top
            try:
                os.chmod(dst, node.meta.mode)
            except OSError as err:
                raise EtcMergeError(f"cannot write the merged /etc: {err.strerror}", path=dst) from err


def merge_etc(base_root: str | bytes, user_root: str | bytes, new_root: str | bytes,
              out: str | bytes) -> MergePlan:
    """Read the three /etc directories, merge them into ``out`` (new); return the plan."""
    plan = plan_merge(read_tree(base_root), read_tree(user_root), read_tree(new_root))
    write_merged(plan, user_root, new_root, out)
    return plan
