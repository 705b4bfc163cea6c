"""Walking committed trees: every path with its entry, and looking one path up."""

from __future__ import annotations

from collections.abc import Iterator

from .errors import SealtreeError
from .ids import RawId
from .model import Entry, Kind
from .objects import ObjectStore


def walk(objects: ObjectStore, tree: RawId, prefix: bytes = b"") -> Iterator[tuple[bytes, Entry]]:
    """Yield ``(path, entry)`` depth first in sorted order; paths are ``a/b`` bytes.

    Iterative, so that trees of any depth are walked without hitting the recursion limit.
    """
    stack = [iter([(prefix + e.name, e) for e in objects.read_tree(tree)])]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        path, entry = item
        yield path, entry
        if entry.kind is Kind.DIR:
            stack.append(iter([(path + b"/" + e.name, e) for e in objects.read_tree(entry.tree)]))


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
    mistake, not a damaged repository: a plain SealtreeError naming ``shown`` (the path as the
    user wrote it; default ``/path``)."""
    entry = lookup(objects, root, path)
    if entry is None:
        name = shown if shown is not None else "/" + path.decode(errors="backslashreplace")
        raise SealtreeError("no such path in the tree", path=name)
    return entry
