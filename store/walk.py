"""Walking committed trees: the one tree walker, and looking one path up.

Every walk of a committed tree in sealtree goes through ``steps`` (or ``walk``,
its plain form): iterative, so a tree of any depth is walked without reaching
Python's recursion limit, depth first, each directory's entries in name order.
"""

from __future__ import annotations

from collections.abc import Iterator

from .errors import NotInTree
from .ids import RawId
from .model import Entry, Kind
from .objects import ObjectStore
from .record import Frozen


class Step(Frozen):
    """One step of a walk: an entry reached (``leave`` False) or, after every entry below a
    directory, that directory left (``leave`` True; for metadata set after the children)."""

    __slots__ = ("path", "entry", "leave")
    _fields = __slots__
    path: bytes
    entry: Entry
    leave: bool

    def __init__(self, path: bytes, entry: Entry, leave: bool = False) -> None:
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "entry", entry)
        object.__setattr__(self, "leave", leave)


def steps(objects: ObjectStore, tree: RawId, prefix: bytes = b"") -> Iterator[Step]:
    """Every entry below ``tree`` as a Step, depth first in name order, paths ``prefix + a/b``;
    a directory's entering step comes before its children and its leaving step after them."""
    stack: list[tuple[bytes, Iterator[Entry], Step | None]] = [
        (prefix, iter(objects.read_tree(tree)), None)]
    while stack:
        base, entries, directory = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            if directory is not None:
                yield Step(directory.path, directory.entry, leave=True)
            continue
        path = base + entry.name
        step = Step(path, entry)
        yield step
        if entry.kind is Kind.DIR:
            stack.append((path + b"/", iter(objects.read_tree(entry.tree)), step))


def walk(objects: ObjectStore, tree: RawId, prefix: bytes = b"") -> Iterator[tuple[bytes, Entry]]:
    """Yield ``(path, entry)`` depth first in sorted order; paths are ``a/b`` bytes."""
    for step in steps(objects, tree, prefix):
        if not step.leave:
            yield step.path, step.entry


def lookup(objects: ObjectStore, root: RawId, path: bytes) -> Entry | None:
    """The entry at ``path`` (``a/b``, no leading slash), or None.  ``b""`` is the root."""
    tree = root
    parts = [p for p in path.split(b"/") if p]
    entry: Entry | None = None
    for i, part in enumerate(parts):
        found = next((e for e in objects.read_tree(tree) if e.name == part), None)
        if found is None:
            return None
        if i < len(parts) - 1:
            if found.kind is not Kind.DIR:
                return None
            tree = found.tree
        entry = found
    return entry


def require(objects: ObjectStore, root: RawId, path: bytes, shown: str | None = None) -> Entry:
    """The entry at ``path`` (see ``lookup``).  A path the tree does not have is the caller's
    mistake, not a damaged repository: NotInTree about ``shown`` (the path as the user wrote
    it; default ``/path``)."""
    entry = lookup(objects, root, path)
    if entry is None:
        raise NotInTree("no such path in the tree", path=shown if shown is not None else b"/" + path)
    return entry
