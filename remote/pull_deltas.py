"""Choosing and applying deltas during a pull (see docs/FORMAT.md sections 11 and 12).

A delta is used only when the repository holds its source and the delta is
smaller than the file it replaces:

- the pack delta whose ``from`` is the SHA-256 of the pack the repository keeps
  for the ref's current commit (``pack.importer.kept_pack_path``); the rebuilt
  pack has the size and SHA-256 the index names (pack.delta checks it) and is
  then verified with its signatures like a downloaded one;
- an object delta of that pack delta whose ``from`` object the repository holds
  (found through the old pack's manifest) and whose ``to`` is a large object the
  pull needs; the rebuilt object is accepted only with the fs-verity digest the
  signed pack names (store.object_delta).

Fault model: a delta file whose bytes are not the index's SHA-256 and size is
the server's fault (``WrongBytes``): that server is asked for no more deltas
(``Mirrors.refuse_deltas``) and the next one is asked for the delta; it still
serves full files, which are checked as always, so a site with one server and
one corrupt delta still updates (a liar wastes at most one delta's bytes).  A
delta that has the listed bytes but does not apply is the publisher's (or a
zstd that compresses differently): no server is blamed.  Either way the pull
falls back to the full file when no server gives a delta that works, and says
so (``Fallback``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pack.delta import apply_pack_delta
from pack.reader import PackReader
from pack.signature import pack_sha256
from store.errors import DeltaError, PackError
from store.ids import RawId, to_hex
from store.model import Meta
from store.object_delta import ObjectDeltaJob, apply_object_deltas
from store.repo import Repository

from . import site
from .errors import IndexFormatError, RemoteError
from .index import ObjectDelta, PackDelta, RefEntry, decode_object_deltas

# (site path, destination, size, SHA-256): download and check one delta file, or RemoteError
FetchDelta = Callable[[str, str, int, bytes], None]


@dataclass(frozen=True)
class Fallback:
    """A delta that was not used after all, and why (the full file was fetched instead)."""

    path: str  # the delta's path on the site
    reason: str
    blamed_server: bool  # the server served other bytes than listed (and was dropped)


@dataclass(frozen=True)
class Source:
    """What the repository holds of a ref's current release: its kept pack, the pack delta the
    index lists from it (if any), and its large objects by digest (a metadata each is stored with)."""

    pack: str
    delta: PackDelta
    objects: dict[RawId, Meta]




def find_source(kept_pack: str, entry: RefEntry) -> Source | None:
    """The source the deltas of ``entry`` can start from, when the repository keeps the pack
    ``kept_pack`` and the index lists a delta from it; else None (full files)."""
    if not entry.deltas or not os.path.exists(kept_pack):
        return None
    sha256 = pack_sha256(kept_pack)
    delta = next((d for d in entry.deltas if d.from_ == sha256), None)
    if delta is None:
        return None
    try:
        with PackReader(kept_pack, expected_sha256=sha256) as reader:
            large = {row.entry.digest: row.entry.meta for row in reader.manifest.large_entries()}
    except PackError:
        return None  # a kept pack that does not read: no delta from it
    return Source(kept_pack, delta, large)


def rebuild_pack(source: Source, entry: RefEntry, fetch: FetchDelta, work_dir: str, out: str
                 ) -> Fallback | None:
    """Fetch the pack delta and rebuild the new pack into ``out`` (which then has the
    index's size and SHA-256); None on success, else why not (``out`` not written)."""
    delta = source.delta
    path = site.pack_delta(delta.sha256)
    dest = os.path.join(work_dir, os.path.basename(path))
    try:
        fetch(path, dest, delta.size, delta.sha256)
    except RemoteError as err:
        return Fallback(path, str(err), True)
    try:
        rebuilt = apply_pack_delta(source.pack, dest, out)
    except DeltaError as err:
        return Fallback(path, err.detail(), False)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dest)
    if rebuilt.sha256 != entry.sha256 or rebuilt.size != entry.size:  # the delta's own header
        os.unlink(out)                                                  # was checked, not the index
        return Fallback(path, f"rebuilds pack {rebuilt.sha256.hex()}, the index names "
                              f"{entry.sha256.hex()}", False)
    return None


def fetch_object_deltas(source: Source, fetch: FetchDelta, work_dir: str
                        ) -> tuple[tuple[ObjectDelta, ...], Fallback | None]:
    """The object deltas listed for the source's release (the list file is fetched and checked
    against the index's SHA-256 and size), or none and why not."""
    listed = source.delta.objects
    if listed is None:
        return (), None
    path = site.object_delta_list(listed.sha256)
    dest = os.path.join(work_dir, os.path.basename(path))
    try:
        fetch(path, dest, listed.size, listed.sha256)
    except RemoteError as err:
        return (), Fallback(path, str(err), True)
    try:
        with open(dest, "rb") as handle:
            return decode_object_deltas(handle.read(), path), None
    except IndexFormatError as err:  # the listed bytes, so the publisher's fault
        return (), Fallback(path, err.detail(), False)
    finally:
        os.unlink(dest)


@dataclass(frozen=True)
class ObjectPlan:
    """An object to rebuild: its delta and the repository's file of its source."""

    delta: ObjectDelta
    source_file: str


def plan_objects(repo: Repository, source: Source, deltas: Sequence[ObjectDelta],
                 wanted: Sequence[tuple[RawId, str]]) -> dict[RawId, ObjectPlan]:
    """For each wanted object (digest, where its checked content goes), the object delta
    that rebuilds it, when the index lists one from an object the repository holds and it is
    smaller than the compressed object; content already there from an earlier pull is not
    rebuilt."""
    by_result = {o.to: o for o in deltas}
    plans: dict[RawId, ObjectPlan] = {}
    for digest, content in wanted:
        delta = by_result.get(bytes(digest))
        if delta is None or delta.size >= delta.full or os.path.exists(content):
            continue
        meta = source.objects.get(RawId(delta.from_))
        if meta is None:
            continue
        source_file = repo.objects.file_path(RawId(delta.from_), meta)
        if os.path.exists(source_file):
            plans[digest] = ObjectPlan(delta, source_file)
    return plans


def rebuild_objects(plans: dict[RawId, ObjectPlan], contents: dict[RawId, str], fetch: FetchDelta,
                    work_dir: str, workers: int) -> tuple[list[RawId], list[Fallback]]:
    """Fetch the planned object deltas (``workers`` at once) and rebuild each object into its
    content path (``contents``); the objects rebuilt, and a Fallback per one that was not."""
    fallbacks: list[Fallback] = []
    fetched: list[tuple[RawId, str]] = []

    def one(digest: RawId) -> tuple[RawId, str, Fallback | None]:
        delta = plans[digest].delta
        path = site.object_delta(delta.sha256)
        dest = os.path.join(work_dir, os.path.basename(path))
        try:
            fetch(path, dest, delta.size, delta.sha256)
        except RemoteError as err:
            return digest, dest, Fallback(path, str(err), True)
        return digest, dest, None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for digest, dest, failed in pool.map(one, list(plans)):
            if failed is None:
                fetched.append((digest, dest))
            else:
                fallbacks.append(failed)
    jobs = [ObjectDeltaJob(plans[d].source_file, dest, d, contents[d]) for d, dest in fetched]
    results = apply_object_deltas(jobs) if jobs else []
    rebuilt: list[RawId] = []
    for (digest, dest), outcome in zip(fetched, results, strict=True):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dest)
        if isinstance(outcome, DeltaError):
            fallbacks.append(Fallback(site.object_delta(plans[digest].delta.sha256),
                                      f"object {to_hex(digest)}: {outcome.detail()}", False))
        else:
            rebuilt.append(digest)
    return rebuilt, fallbacks
