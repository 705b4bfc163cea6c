"""Making commits on a branch, and reading history."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from .commits import MAX_TIMESTAMP, MIN_TIMESTAMP, Commit
from .errors import UsageError
from .ids import RawId
from .model import Meta
from .repo import Repository
from .transaction import Transaction


def check_timestamp(value: int, source: str) -> int:
    """``value`` if a commit may have it as its timestamp (years 1 to 9999), else UsageError."""
    if not MIN_TIMESTAMP <= value <= MAX_TIMESTAMP:
        raise UsageError(f"{source} {value} is out of range: a commit timestamp must be "
                         f"{MIN_TIMESTAMP} .. {MAX_TIMESTAMP} (years 1 to 9999 UTC)")
    return value


def requested_timestamp(explicit: int | None = None, source: str = "timestamp") -> int | None:
    """``explicit`` (called ``source`` in errors), else SOURCE_DATE_EPOCH, else None for now;
    checked, so that a command can refuse a bad one before it reads its source tree."""
    if explicit is not None:
        return check_timestamp(explicit, source)
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env:
        try:
            value = int(env)
        except ValueError:
            raise UsageError(f"SOURCE_DATE_EPOCH is not an integer: {env!r}") from None
        return check_timestamp(value, "SOURCE_DATE_EPOCH")
    return None


def commit_timestamp(explicit: int | None = None, source: str = "timestamp") -> int:
    """``explicit``, else SOURCE_DATE_EPOCH, else now (seconds since the epoch)."""
    requested = requested_timestamp(explicit, source)
    return int(time.time()) if requested is None else requested


def check_text(field: str, value: str) -> str:
    """``value`` if it can be stored as UTF-8 (no lone surrogates, as undecodable
    command-line bytes become), else UsageError naming ``field`` and the bytes."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{field} is not valid UTF-8: {_shown(value)}") from None
    return value


def _shown(value: str) -> str:
    """``value`` quoted on one line, its undecodable bytes (surrogate escapes) as ``\\xNN``."""
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that stands for no byte
        return ascii(value)
    text = raw.decode("utf-8", "backslashreplace")
    return "'" + "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text) + "'"


def check_commit_text(subject: str, body: str, version: str,
                      metadata: tuple[tuple[str, str], ...]) -> None:
    """Refuse any commit text that cannot be encoded (see ``check_text``)."""
    for field, value in (("subject", subject), ("body", body), ("version", version)):
        check_text(field, value)
    for key, value in metadata:
        check_text("metadata key", key)
        check_text(f"metadata value of {key!r}", value)


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
