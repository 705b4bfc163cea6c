"""Differences between two trees, path by path."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .ids import RawId
from .model import Entry, Kind
from .objects import ObjectStore
from .walk import walk


@dataclass(frozen=True)
class Change:
    status: str  # "A" added, "D" deleted, "M" modified
    path: bytes
    old: Entry | None
    new: Entry | None

    def what(self) -> list[str]:
        """For "M": which aspects changed (content, type, mode, owner, xattrs, target)."""
        if self.old is None or self.new is None:
            return []
        o, n = self.old, self.new
        out = []
        if o.kind != n.kind:
            return ["type"]
        if o.kind is Kind.FILE and (o.digest != n.digest or o.size != n.size):
            out.append("content")
        if o.kind is Kind.SYMLINK and o.target != n.target:
            out.append("target")
        if o.meta.mode != n.meta.mode:
            out.append("mode")
        if (o.meta.uid, o.meta.gid) != (n.meta.uid, n.meta.gid):
            out.append("owner")
        if o.meta.xattrs != n.meta.xattrs:
            out.append("xattrs")
        return out


def _subtree(objects: ObjectStore, status: str, path: bytes, entry: Entry) -> Iterator[Change]:
    yield Change(status, path, entry if status == "D" else None, entry if status == "A" else None)
    if entry.kind is Kind.DIR:
        for sub_path, sub in walk(objects, entry.tree, path + b"/"):
            yield Change(status, sub_path, sub if status == "D" else None, sub if status == "A" else None)


def _pairs(objects: ObjectStore, old: RawId, new: RawId
           ) -> Iterator[tuple[bytes, Entry | None, Entry | None]]:
    """The names of two directories in order, each with its entry in the old and the new one."""
    a = {e.name: e for e in objects.read_tree(old)}
    b = {e.name: e for e in objects.read_tree(new)}
    return ((name, a.get(name), b.get(name)) for name in sorted(a.keys() | b.keys()))


def diff_trees(objects: ObjectStore, old: RawId, new: RawId, prefix: bytes = b"") -> Iterator[Change]:
    """Yield changes from ``old`` to ``new`` in path order; equal subtrees are skipped unread.

    Iterative (a stack of the directories being compared), so any depth is compared."""
    if old == new:
        return
    stack = [(prefix, _pairs(objects, old, new))]
    while stack:
        base, pairs = stack[-1]
        pair = next(pairs, None)
        if pair is None:
            stack.pop()
            continue
        name, o, n = pair
        path = base + name
        if o is None and n is not None:
            yield from _subtree(objects, "A", path, n)
        elif n is None and o is not None:
            yield from _subtree(objects, "D", path, o)
        elif o is None or n is None:
            continue  # a name is in one of the two at least; never here
        elif o.kind != n.kind:
            yield from _subtree(objects, "D", path, o)
            yield from _subtree(objects, "A", path, n)
        elif o.kind is Kind.DIR:
            if o.meta != n.meta:
                yield Change("M", path, o, n)
            if o.tree != n.tree:
                stack.append((path + b"/", _pairs(objects, o.tree, n.tree)))
        elif o != n:
            yield Change("M", path, o, n)
