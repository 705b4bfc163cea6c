"""Removing what no ref (or extra root, such as a deployment) reaches."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .ids import RawId
from .model import Kind
from .repo import Repository
from .transaction import clean_stale_staging


@dataclass
class PruneReport:
    removed: int = 0
    freed: int = 0
    kept: int = 0


def reachable(repo: Repository, commits: Iterable[RawId], *, history: bool = True) -> set[str]:
    """Object file paths reachable from ``commits`` (and their ancestors if ``history``)."""
    objects = repo.objects
    keep: set[str] = set()
    seen_trees: set[bytes] = set()
    for start in commits:
        commit_id: RawId | None = start
        while commit_id is not None:
            path = objects.path("commit", commit_id)
            if path in keep or not os.path.exists(path):
                break
            keep.add(path)
            commit = objects.read_commit(commit_id)
            stack = [commit.root_tree]
            while stack:
                tree = stack.pop()
                if tree in seen_trees:
                    continue
                seen_trees.add(tree)
                keep.add(objects.path("tree", tree))
                for entry in objects.read_tree(tree):
                    if entry.kind is Kind.DIR:
                        stack.append(entry.tree)
                    elif entry.kind is Kind.FILE:
                        keep.add(objects.file_path(entry.digest, entry.meta))
            commit_id = commit.parent if history else None
    return keep


def prune(repo: Repository, extra_roots: Callable[[], Iterable[RawId]] = tuple, *,
          dry_run: bool = False) -> PruneReport:
    """Delete every object no ref or extra root reaches.  Holds the repository exclusively.

    ``extra_roots`` is called once the lock is held: a deploy that held the shared lock
    until it recorded its deployment has finished, so its commit is among them.
    """
    report = PruneReport()
    with repo.exclusive():
        keep = reachable(repo, list(repo.refs.list().values()) + list(extra_roots()))
        for obj in repo.objects.iter_objects():
            if obj.path in keep:
                report.kept += 1
                continue
            report.removed += 1
            st = os.lstat(obj.path)
            report.freed += st.st_size
            if dry_run:
                continue
            if stat.S_ISDIR(st.st_mode):  # a stray directory among the objects
                shutil.rmtree(obj.path)
            else:
                os.unlink(obj.path)
        if not dry_run:
            clean_stale_staging(os.path.join(repo.path, "tmp"))
    return report
