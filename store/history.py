"""Making commits on a branch, and reading history."""

from __future__ import annotations

from collections.abc import Iterator

from .commit_fields import check_commit_text, commit_timestamp
from .commits import Commit
from .ids import RawId
from .model import Meta
from .repo import Repository
from .transaction import Transaction


def finish_commit(repo: Repository, tx: Transaction, branch: str, tree: RawId, root_meta: Meta, *,
                  subject: str = "", body: str = "", version: str = "", timestamp: int | None = None,
                  metadata: tuple[tuple[str, str], ...] = ()) -> RawId:
    """Write the commit object, publish every staged object, then move ``branch`` (CAS)."""
    check_commit_text(subject, body, version, metadata)
    repo.refs.check_free(branch)
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
