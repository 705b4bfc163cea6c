"""A repository on disk: opening and creating it, its locks, and resolving revisions.

Where its parts live is ``store.layout`` (docs/FORMAT.md, section 1).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .atomic import atomic_write, fsync_dir
from .commits import Commit
from .errors import NotARepository, RefError, RepositoryError
from .ids import RawId, to_hex
from .layout import CREATED, RepoLayout
from .lock import flock
from .objects import ObjectStore
from .refs import Refs

if TYPE_CHECKING:  # imported by writing(): commands that only read start faster without it
    from .transaction import Transaction

FORMAT_VERSION = 1
CONFIG_MAGIC = "sealtree-repo"
_SUFFIX = re.compile(r"(\^+|~\d+)$")


class Repository:
    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.layout = RepoLayout(self.path)
        self.objects = ObjectStore(self.layout.objects, self.layout.bundles)
        self.refs = Refs(self.layout)

    @classmethod
    def init(cls, path: str) -> Repository:
        """Create an empty repository at ``path`` (which may exist but must be empty)."""
        if os.path.exists(path) and os.listdir(path):
            raise RepositoryError("exists and is not empty", path=path)
        for sub in CREATED:
            os.makedirs(os.path.join(path, sub), exist_ok=True)
        atomic_write(RepoLayout(path).config, f"{CONFIG_MAGIC} {FORMAT_VERSION}\n".encode())
        fsync_dir(os.path.dirname(os.path.abspath(path)))
        return cls(path)

    @classmethod
    def open(cls, path: str) -> Repository:
        config = RepoLayout(path).config
        try:
            with open(config, encoding="utf-8") as handle:
                words = handle.read().split()
        except (FileNotFoundError, NotADirectoryError):
            raise NotARepository("not a sealtree repository (no config)", path=path) from None
        except UnicodeDecodeError:
            words = []
        if len(words) != 2 or words[0] != CONFIG_MAGIC or words[1] != str(FORMAT_VERSION):
            raise RepositoryError(f"not a sealtree repository of format {FORMAT_VERSION}",
                                  path=config)
        return cls(path)

    # -- locking and writing ----------------------------------------------------
    @contextlib.contextmanager
    def writing(self, *, bundle: bool = False) -> Iterator[Transaction]:
        """A transaction under the shared writer lock; publish it before moving refs.
        ``bundle``: its trees and small files go into one bundle (store.bundles)."""
        from .transaction import Transaction  # noqa: PLC0415 - deploy and boot never write objects

        with flock(self.layout.lock, exclusive=False):
            with Transaction(self.layout, bundle=bundle) as tx:
                yield tx

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        """Hold the writers' shared lock without a transaction (deploy): prune waits, so
        every object present now stays for the block."""
        with flock(self.layout.lock, exclusive=False):
            yield

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the repository exclusively (prune): no writer runs meanwhile."""
        with flock(self.layout.lock, exclusive=True):
            yield

    # -- revisions ----------------------------------------------------------------
    def resolve(self, rev: str) -> RawId:
        """A ref name, a commit id or a unique id prefix (>= 4 hex), with ``^``/``~N`` suffixes."""
        base, steps = rev, 0
        while match := _SUFFIX.search(base):
            suffix = match.group(1)
            steps += len(suffix) if suffix.startswith("^") else int(suffix[1:])
            base = base[:match.start()]
        commit_id = self._resolve_base(base, rev)
        for _ in range(steps):
            parent = self.objects.read_commit(commit_id).parent
            if parent is None:
                raise RefError(f"commit {to_hex(commit_id)} has no parent", path=rev)
            commit_id = parent
        return commit_id

    def _resolve_base(self, base: str, rev: str) -> RawId:
        if not base:
            raise RefError("the revision is empty" if not rev else "no ref or commit before the suffix",
                           path=rev)
        if "/" in base or not re.fullmatch(r"[0-9a-f]{4,64}", base):
            found = self.refs.read(base)
            if found is None:
                raise RefError("no such ref", path=rev)
            return found
        found = self.refs.read(base)
        if found is not None:
            return found
        if len(base) == 64:
            raw = RawId(bytes.fromhex(base))
            if self.objects.has("commit", raw):
                return raw
            raise RefError("no such commit", path=rev)
        directory = os.path.join(self.objects.root, base[:2])
        try:
            names = [n for n in os.listdir(directory) if n.endswith(".commit") and n.startswith(base[2:])]
        except FileNotFoundError:
            names = []
        if len(names) != 1:
            raise RefError("ambiguous commit prefix" if names else "no such ref or commit", path=rev)
        return RawId(bytes.fromhex(base[:2] + names[0].split(".")[0]))

    def commit_of(self, rev: str) -> tuple[RawId, Commit]:
        commit_id = self.resolve(rev)
        return commit_id, self.objects.read_commit(commit_id)
