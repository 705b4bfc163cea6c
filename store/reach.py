"""What a set of commits reaches: the one reachability traversal (prune keeps it, fsck checks it).

Each commit, tree and file object is reported once per call, with where it was
first reached (the root's label and the path in its tree); a commit or tree that
cannot be read (missing, corrupt) is reported with its error and not descended
into, so that the caller decides: fsck records a problem, prune refuses to delete.
Iterative, so trees of any depth are traversed.  A tree or file object kept in a bundle
(store.bundles) is reached as any other, with the bundle holding it (``bundle``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .errors import SealtreeError
from .ids import RawId
from .model import Kind
from .objects import ObjectStore


@dataclass(frozen=True)
class Reached:
    """One object reached: ``kind`` "commit", "tree" or "file", its id and object ``file``;
    ``label`` names the root it was reached from and ``where`` its path in that root's tree
    (``b"/"`` for the root tree, ``b""`` for a commit).  ``error``: why a commit or tree
    could not be read (its children are then unknown); files are not opened.  ``bundle``:
    the bundle holding a record of the object ("" when none does; the object may be loose
    as well)."""

    kind: str
    object_id: RawId
    file: str
    label: str
    where: bytes = b""
    error: SealtreeError | None = None
    bundle: str = ""


def reachable(objects: ObjectStore, roots: Iterable[tuple[str, RawId]], *, history: bool
              ) -> Iterator[Reached]:
    """Every object reached from the commits ``roots`` (``(label, commit id)``), and from
    their ancestors when ``history``; a missing ancestor ends that history quietly (one
    imported from a pack is truncated) after it is reported."""
    seen_commits: set[bytes] = set()
    seen_trees: set[bytes] = set()
    seen_files: set[str] = set()
    for label, start in roots:
        commit_id: RawId | None = start
        while commit_id is not None and commit_id not in seen_commits:
            file = objects.path("commit", commit_id)
            try:
                commit = objects.read_commit(commit_id)
            except SealtreeError as err:  # ObjectMissing or ObjectCorrupt
                yield Reached("commit", commit_id, file, label, error=err)
                break
            seen_commits.add(commit_id)
            yield Reached("commit", commit_id, file, label)
            yield from _trees(objects, label, commit.root_tree, seen_trees, seen_files)
            commit_id = commit.parent if history else None


def _trees(objects: ObjectStore, label: str, root: RawId, seen_trees: set[bytes],
           seen_files: set[str]) -> Iterator[Reached]:
    stack = [(b"/", root)]
    while stack:
        where, tree = stack.pop()
        if tree in seen_trees:
            continue
        seen_trees.add(tree)
        file = objects.path("tree", tree)
        bundle = objects.bundle_of("tree", tree) or ""
        try:
            entries = objects.read_tree(tree)
        except SealtreeError as err:  # ObjectMissing or ObjectCorrupt
            yield Reached("tree", tree, file, label, where, err, bundle)
            continue
        yield Reached("tree", tree, file, label, where, None, bundle)
        for entry in entries:
            path = where + entry.name
            if entry.kind is Kind.DIR:
                stack.append((path + b"/", entry.tree))
            elif entry.kind is Kind.FILE:
                object_file = objects.file_path(entry.digest, entry.meta)
                if object_file not in seen_files:
                    seen_files.add(object_file)
                    yield Reached("file", entry.digest, object_file, label, path, None,
                                  objects.bundle_of("file", entry.digest, entry.meta) or "")
