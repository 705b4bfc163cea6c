"""Removing what no ref (or extra root, such as a deployment) reaches.

A bundle (store.bundles) is deleted whole when none of its records is reachable; one with
any reachable record is kept whole ("bundles kept"), its unreachable records with it.  A
bundle whose table cannot be read is kept (fsck reports it): what it holds is unknown.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from .atomic import remove_stale_temporaries
from .errors import ObjectMissing
from .ids import RawId
from .layout import REFS
from .reach import reachable as walk_reachable
from .remove import remove_tree
from .repo import Repository
from .transaction import clean_stale_staging


@dataclass
class PruneReport:
    removed: int = 0
    freed: int = 0
    kept: int = 0
    leftovers: int = 0  # temporary files of killed writers removed
    bundles_removed: int = 0
    bundles_kept: int = 0


def reachable(repo: Repository, commits: Iterable[RawId], *, history: bool = True) -> set[str]:
    """Object file paths reachable from ``commits`` (and their ancestors if ``history``).

    A missing commit ends a history (one imported from a pack is truncated); any other object
    that cannot be read raises its error: what it reaches is unknown, so nothing may be
    deleted."""
    return _reachable(repo, commits, history)[0]


def _reachable(repo: Repository, commits: Iterable[RawId], history: bool
               ) -> tuple[set[str], list[RawId]]:
    """``reachable``, and the commits reached (present ones), in the order reached; the set
    holds the bundles holding a reachable record too."""
    keep: set[str] = set()
    kept_commits: list[RawId] = []
    for reached in walk_reachable(repo.objects, (("", c) for c in commits), history=history):
        if reached.error is None:
            keep.add(reached.file)
            if reached.bundle:
                keep.add(reached.bundle)
            if reached.kind == "commit":
                kept_commits.append(reached.object_id)
        elif not (reached.kind == "commit" and isinstance(reached.error, ObjectMissing)):
            raise reached.error
    return keep, kept_commits


def _no_images(_commits: Sequence[RawId]) -> Iterable[str]:
    return ()


def _temporary_dirs(repo: Repository) -> Iterator[str]:
    """The directories of the repository that atomic writes write into: its root (config),
    every directory under ``refs/``, ``packs/`` and ``deploy/``."""
    layout = repo.layout
    yield layout.root
    for top, dirs, _files in os.walk(os.path.join(layout.root, REFS)):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        yield top
    yield layout.packs
    yield layout.deploy


def prune(repo: Repository, extra_roots: Callable[[], Iterable[RawId]] = tuple, *,
          dry_run: bool = False, temporary_dirs: Iterable[str] = (),
          images: Callable[[Sequence[RawId]], Iterable[str]] = _no_images) -> PruneReport:
    """Delete every object no ref or extra root reaches, and the temporary files killed
    atomic writes left in the repository's directories and in ``temporary_dirs`` (those of
    other layers, such as remotes).  Holds the repository exclusively.

    Image objects (``.image``) are reached through packs, which ``store`` does not read:
    ``images`` gets the commits kept and names the image objects to keep (pack.importer's
    ``kept_images``: those of the kept packs of these commits); every other one goes.

    ``extra_roots`` is called once the lock is held: a deploy that held the shared lock
    until it recorded its deployment has finished, so its commit is among them.
    """
    report = PruneReport()
    with repo.exclusive():
        index = repo.objects.bundle_index
        if index is not None:
            index.reload()  # as the lock found it: no writer publishes meanwhile
        keep, commits = _reachable(repo, list(repo.refs.list().values()) + list(extra_roots()),
                                   True)
        keep.update(images(commits))
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
                remove_tree(obj.path)
            else:
                os.unlink(obj.path)
        for path in repo.objects.bundle_paths():
            if path in keep or index is None or path in index.bad:
                report.bundles_kept += 1
                continue
            try:
                size = os.lstat(path).st_size
            except FileNotFoundError:
                continue
            report.bundles_removed += 1
            report.freed += size
            if not dry_run:
                os.unlink(path)
        if index is not None and not dry_run:
            index.reload()
        if not dry_run:
            clean_stale_staging(repo.layout.tmp)
            for directory in [*_temporary_dirs(repo), *temporary_dirs]:
                report.leftovers += remove_stale_temporaries(directory)
    return report
