"""Rollback protection: per ref, the newest pack accepted; an older one is refused.

Packs are ordered by ``(version, timestamp)`` of their commit: the version
string first, compared naturally by ``store.versions`` (runs of digits as
numbers of any length, other runs as text, a digit run after a text run, a
version after its own prefix, so ``1.9 < 1.10`` and ``"" < anything``), then
the commit timestamp.  A pack is
accepted when it is newer than the remembered one, or is the remembered
commit itself (re-importing the same pack); anything else, including a
different commit with an equal version and timestamp, is a downgrade.

The state is one small JSON file written with ``store.atomic.atomic_write``::

    {"format": 1, "refs": {"<ref>": {"commit": "<hex>", "version": "...", "timestamp": N}}}

A state file that does not parse is an error, never an empty state: that
would silently turn the protection off.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator

from store.atomic import atomic_write
from store.commits import Commit
from store.errors import DowngradeError, FormatError
from store.ids import HexId, RawId, parse_hex, to_hex
from store.lock import flock
from store.names import show
from store.record import Frozen
from store.refs import check_ref_name
from store.versions import VersionKey, version_key

STATE_FORMAT = 1
MAX_STATE = 16 << 20


class Accepted(Frozen):
    """What is remembered of the newest pack accepted for a ref."""

    __slots__ = ("commit", "version", "timestamp")
    _fields = __slots__
    commit: HexId
    version: str
    timestamp: int

    def __init__(self, commit: HexId, version: str, timestamp: int) -> None:
        self._set_fields(commit, version, timestamp)

    @classmethod
    def of(cls, commit_id: RawId, commit: Commit) -> Accepted:
        return cls(to_hex(commit_id), commit.version, commit.timestamp)

    def key(self) -> tuple[VersionKey, int]:
        return version_key(self.version), self.timestamp

    def describe(self) -> str:
        return f"commit {self.commit[:12]} version {self.version or '(none)'} timestamp {self.timestamp}"


def is_acceptable(candidate: Accepted, newest: Accepted | None) -> bool:
    return newest is None or candidate.commit == newest.commit or candidate.key() > newest.key()


def load(path: str | os.PathLike[str]) -> dict[str, Accepted]:
    """The remembered newest pack per ref ({} when there is no state file yet)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_STATE + 1)
    except FileNotFoundError:
        return {}
    try:
        if len(raw) > MAX_STATE:
            raise ValueError("too large")
        doc = json.loads(raw)
        if doc.get("format") != STATE_FORMAT or not isinstance(doc.get("refs"), dict):
            raise ValueError(f"not format {STATE_FORMAT}")
        out = {}
        for ref, item in doc["refs"].items():
            timestamp = item["timestamp"]
            if not isinstance(timestamp, int) or not isinstance(item["version"], str):
                raise ValueError(f"bad entry for {show(ref)}")
            out[check_ref_name(ref)] = Accepted(parse_hex(item["commit"]), item["version"], timestamp)
        return out
    except (ValueError, TypeError, KeyError, AttributeError, FormatError) as err:
        raise FormatError(f"freshness state does not parse ({err}); refusing to guess "
                          f"what was accepted", path=path) from err


def save(path: str | os.PathLike[str], state: dict[str, Accepted]) -> None:
    doc = {"format": STATE_FORMAT,
           "refs": {ref: {"commit": a.commit, "version": a.version, "timestamp": a.timestamp}
                    for ref, a in sorted(state.items())}}
    atomic_write(path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())


@contextlib.contextmanager
def locked(path: str | os.PathLike[str]) -> Iterator[None]:
    """Serialise check-then-record against other importers of the same state file."""
    with flock(os.fspath(path) + ".lock", exclusive=True):
        yield


def check(path: str | os.PathLike[str], ref: str, candidate: Accepted, *,
          allow_downgrade: bool = False) -> Accepted | None:
    """Raise DowngradeError if ``candidate`` is older than what ``ref`` last accepted,
    unless ``allow_downgrade``.  Returns the remembered entry (None if none)."""
    newest = load(path).get(ref)
    if newest is not None and not allow_downgrade and not is_acceptable(candidate, newest):
        raise DowngradeError(f"ref {ref}: pack ({candidate.describe()}) is not newer than the one "
                             f"already accepted ({newest.describe()})", path=os.fspath(path))
    return newest


def record(path: str | os.PathLike[str], ref: str, candidate: Accepted) -> None:
    """Remember ``candidate`` for ``ref`` if it is newer than what is remembered.

    After an allowed downgrade the newer pack stays remembered: the newest
    ever accepted is what later packs must beat.
    """
    state = load(path)
    newest = state.get(ref)
    if newest is None or candidate.key() > newest.key():
        state[ref] = candidate
        save(path, state)
