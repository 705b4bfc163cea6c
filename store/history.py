"""Making commits on a branch, and reading history."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from .commits import Commit
from .errors import UsageError
from .ids import RawId
from .model import Meta
from .repo import Repository
from .transaction import Transaction


def commit_timestamp(explicit: int | None = None) -> int:
    """``explicit``, else SOURCE_DATE_EPOCH, else now (seconds since the epoch)."""
    if explicit is not None:
        return explicit
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env:
        try:
            return int(env)
        except ValueError:
            raise UsageError(f"SOURCE_DATE_EPOCH is not an integer: {env!r}") from None
    return int(time.time())


def finish_commit(repo: Repository, tx: Transaction, branch: str, tree: RawId, root_meta: Meta, *,
                  subject: str = "", body: str = "", version: str = "", timestamp: int | None = None,
                  metadata: tuple[tuple[str, str], ...] = ()) -> RawId:
    """Write the commit object, publish every staged object, then move ``branch`` (CAS)."""
    parent = repo.refs.read(branch)
    commit = Commit(tree, root_meta, commit_timestamp(timestamp), parent, subject, body,
                    version, metadata)
    commit_id = tx.add_commit(commit)
    tx.publish()
    repo.refs.update(branch, commit_id, parent)
    return commit_id


def log(repo: Repository, start: RawId, limit: int | None = None) -> Iterator[tuple[RawId, Commit]]:
    commit_id: RawId | None = start
    count = 0
    while commit_id is not None and (limit is None or count < limit):
        commit = repo.objects.read_commit(commit_id)
        yield commit_id, commit
        commit_id = commit.parent
        count += 1
        if commit_id is not None and not repo.objects.has("commit", commit_id):
            return  # history truncated (imported from a pack): stop quietly
