"""An in-memory directory tree that sources without a real directory (tar, git) fill in.

A source adds leaves (files, symlinks) and directories by path, then
``TreeBuilder.write`` stores every tree object bottom-up and returns the root
tree id, as ``store.source_dir.read_directory`` does for a directory.  The
builder enforces what a tree must be, whatever the source says: every name
valid (``model.check_name``), every path given once, no path below a
non-directory, metadata and symlink targets a tree can hold (``store.storable``).
Directories that only appear as parents of other paths ("implied") get the
builder's ``implied_meta`` unless the source lists them later.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import SourceError
from .ids import RawId
from .model import Entry, Kind, Meta, check_name
from .names import show
from .storable import check_storable_meta, check_target
from .transaction import Transaction


class DirNode:
    """A directory: its metadata and its children (leaf entries or directories) by name."""

    __slots__ = ("meta", "children", "listed")

    def __init__(self, meta: Meta, children: dict[bytes, Entry | DirNode] | None = None,
                 listed: bool = True) -> None:
        self.meta = meta
        self.children: dict[bytes, Entry | DirNode] = {} if children is None else children
        self.listed = listed  # False while the directory is only implied by a path below it


def _check_name(name: bytes, where: str) -> None:
    problem = check_name(name)
    if problem:
        raise SourceError(f"bad name {show(name)}: {problem}", path=where)


class TreeBuilder:
    """Collects a tree by path; ``write(tx)`` stores it and returns the root tree id."""

    def __init__(self, root_meta: Meta, implied_meta: Meta) -> None:
        self.root = DirNode(root_meta, listed=False)
        self.implied_meta = implied_meta
        self._checked: set[tuple[Meta, Kind]] = set()  # metadata found storable, by kind

    def _check_meta(self, meta: Meta, where: str, kind: Kind) -> None:
        """``check_storable_meta``, once per distinct metadata and kind (most entries of a
        tree share a few)."""
        if (meta, kind) not in self._checked:
            check_storable_meta(meta, where, kind)
            self._checked.add((meta, kind))

    def set_root_meta(self, meta: Meta, where: str) -> None:
        if self.root.listed:
            raise SourceError("the root directory is given twice", path=where)
        self.root.meta = check_storable_meta(meta, where, Kind.DIR)
        self.root.listed = True

    def _parent(self, parts: Sequence[bytes], where: str) -> DirNode:
        """The directory holding ``parts[-1]``, creating implied directories on the way.  Every
        name is checked (``model.check_name``): the last one here, those of directories as
        they are made (a name already in the tree was checked when it entered)."""
        if not parts:
            raise SourceError("empty path", path=where)
        _check_name(parts[-1], where)
        node = self.root
        for depth, name in enumerate(parts[:-1]):
            child = node.children.get(name)
            if child is None:
                _check_name(name, where)
                child = node.children[name] = DirNode(self.implied_meta, listed=False)
            elif not isinstance(child, DirNode):
                above = show(b"/".join(parts[:depth + 1]))
                raise SourceError(f"its parent {above} is a {child.kind.name.lower()}, "
                                  f"not a directory", path=where)
            node = child
        return node

    def add_leaf(self, parts: Sequence[bytes], entry: Entry, where: str) -> None:
        """Add a file or symlink; ``entry.name`` is replaced by ``parts[-1]``."""
        parent = self._parent(parts, where)
        self._check_meta(entry.meta, where, entry.kind)
        if entry.kind is Kind.SYMLINK:
            check_target(entry.target, where)
        existing = parent.children.get(parts[-1])
        if isinstance(existing, DirNode) and not existing.listed:
            raise SourceError(f"is a directory of paths given before it, not a "
                              f"{entry.kind.name.lower()}", path=where)
        if existing is not None:
            raise SourceError("path given twice (refused: a tree holds one entry per path)",
                              path=where)
        parent.children[parts[-1]] = Entry(parts[-1], entry.kind, entry.meta, size=entry.size,
                                           digest=entry.digest, target=entry.target)

    def add_dir(self, parts: Sequence[bytes], meta: Meta, where: str) -> None:
        """Add a directory, or give its metadata to one implied so far."""
        parent = self._parent(parts, where)
        self._check_meta(meta, where, Kind.DIR)
        existing = parent.children.get(parts[-1])
        if existing is None:
            parent.children[parts[-1]] = DirNode(meta)
        elif isinstance(existing, DirNode) and not existing.listed:
            existing.meta = meta
            existing.listed = True
        else:
            raise SourceError("path given twice (refused: a tree holds one entry per path)",
                              path=where)

    def add_parents(self, parts: Sequence[bytes], where: str) -> None:
        """Imply the directories above a path that is left out (a skipped device, say)."""
        self._parent(parts, where)

    def get(self, parts: Sequence[bytes]) -> Entry | DirNode | None:
        node: Entry | DirNode = self.root
        for name in parts:
            if not isinstance(node, DirNode) or name not in node.children:
                return None
            node = node.children[name]
        return node

    def write(self, tx: Transaction) -> RawId:
        """Store every directory's tree object, children before parents; return the root's id.

        Iterative, so that a deep path cannot exhaust Python's recursion limit.
        """
        written: dict[int, RawId] = {}
        stack: list[tuple[DirNode, bool]] = [(self.root, False)]
        while stack:
            node, children_done = stack.pop()
            if not children_done:
                stack.append((node, True))
                stack.extend((child, False) for child in node.children.values()
                             if isinstance(child, DirNode))
                continue
            entries = []
            for name, child in node.children.items():
                if isinstance(child, DirNode):
                    entries.append(Entry(name, Kind.DIR, child.meta, tree=written.pop(id(child))))
                else:
                    entries.append(child)
            written[id(node)] = tx.add_tree(entries)
        return written[id(self.root)]
