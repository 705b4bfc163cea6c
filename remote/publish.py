"""Publishing: write or update a site (remote.site) from a repository's refs.

Write order, so that a reader of the site never sees the index name a file
that is not complete (every file but the index is content-addressed, so a
file that exists under its final name is complete):

1. each ref's pack is built under a temporary name (``packs/.build-*``);
2. every large object the packs name, digest-checked and compressed from the
   repository (remote.objects) under a temporary name and renamed (no per-file
   fsync); then, with ``deltas_from``, the deltas from the ref's previous
   releases (remote.site_deltas), likewise;
3. ``syncfs`` of the site's filesystem, then each new pack renamed into place;
4. each pack's signatures (added to ``PACK.sig``, one per key, atomically);
5. the new index's signatures (``signatures/<sha256>.sig``), then the index
   itself, both with the atomic-write helper (fsync, rename, fsync dir).

Re-publishing unchanged content rewrites nothing: packs are deterministic,
so an unchanged ref builds a pack that is already there; objects present are
skipped; the index is only replaced when a ref changes or it would expire
within half of the requested validity.  Publishers of one site are
serialised by a lock file (``.publish.lock``).

Offline signing (``unsigned=True``, remote.offline): steps 1 to 3 as above, no
signatures, and step 5 writes the canonical unsigned index to ``.index.unsigned``
(``site.STAGED_INDEX``) instead of ``index``: nothing a client reads changes.
``remote.offline.activate`` later adds the signatures made elsewhere and makes
that index live, in step 4 and 5's order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pack.build import DEFAULT_LEVEL, RELEASE_INLINE_MAX, build_pack
from pack.keys import key_id
from pack.reader import PackReader
from pack.signature import read_signatures, sign, write_signatures
from store.atomic import atomic_file, atomic_write, fsync_dir
from store.errors import DeltaError, ObjectCorrupt, ObjectMissing, UsageError
from store.fsverity import VerityHasher
from store.ids import RawId, to_hex
from store.lock import flock
from store.model import Meta
from store.repo import Repository
from store.syncfs import syncfs

from . import objects, site
from .index import (
    MAX_HISTORY,
    MAX_INDEX,
    ObjectDelta,
    RefEntry,
    Release,
    SiteIndex,
    decode_index,
    encode_index,
    index_sha256,
    sign_index,
)
from .site_deltas import DeltaStats, make_deltas

LOCK = ".publish.lock"
DAY = 86400
DEFAULT_EXPIRES_DAYS = 30
COPY_CHUNK = 1 << 20


@dataclass
class PublishResult:
    """What a publish did: the index (written or kept) and what was added to the site."""

    site: str
    index: SiteIndex
    index_written: bool = False
    packs_written: int = 0
    objects_written: int = 0
    bytes_written: int = 0
    signatures_added: int = 0
    deltas_written: int = 0
    staged: bool = False  # unsigned: the index went to site.STAGED_INDEX, not live
    refs: list[str] = field(default_factory=list)
    deltas_skipped: list[str] = field(default_factory=list)  # why a release got no delta


@dataclass(frozen=True)
class _Built:
    ref: str
    temp: str
    entry: RefEntry
    large: tuple[tuple[RawId, int, Meta], ...]  # (digest, size, one metadata it is stored with)


@contextlib.contextmanager
def _temporaries(paths: list[str]) -> Iterator[None]:
    try:
        yield
    finally:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def read_site_index(site_dir: str) -> SiteIndex | None:
    """The index a site holds now (None when it has none yet); IndexFormatError if it does not
    parse: a publisher never replaces what it cannot read."""
    held = read_site_index_and_bytes(site_dir)
    return None if held is None else held[0]


def read_site_index_and_bytes(site_dir: str) -> tuple[SiteIndex, bytes] | None:
    """``read_site_index`` with the index file's bytes (what its signatures cover)."""
    path = os.path.join(site_dir, site.INDEX)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return None
    return decode_index(data, path), data


def _build(repo: Repository, ref: str, packs_dir: str, inline_max: int, level: int) -> _Built:
    commit_id = repo.resolve(ref)
    temp = os.path.join(packs_dir, f".build-{os.getpid()}-{to_hex(commit_id)[:16]}{site.PACK_SUFFIX}")
    built = build_pack(repo, commit_id, ref, temp, inline_max=inline_max, level=level)
    with PackReader(temp) as reader:
        commit = reader.commit
        large: dict[RawId, tuple[RawId, int, Meta]] = {}
        for row in reader.manifest.large_entries():
            large.setdefault(row.entry.digest, (row.entry.digest, row.entry.size, row.entry.meta))
    entry = RefEntry(built.sha256, built.size, to_hex(commit_id), commit.version, commit.timestamp)
    return _Built(ref, temp, entry, tuple(large.values()))


def _copy_object(repo: Repository, digest: RawId, size: int, meta: Meta, dest: str,
                 cctx: zstandard.ZstdCompressor) -> int:
    """Write a large object's content, compressed (remote.objects), from the repository to
    ``dest`` (atomically, not synced), checking its fs-verity digest and size on the way: a
    site never serves a corrupt object.  Returns the compressed size."""
    source = repo.objects.file_path(digest, meta)
    hasher = VerityHasher()
    try:
        src = open(source, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise ObjectMissing(f"large object {to_hex(digest)} is missing", object_id=to_hex(digest),
                            path=source) from None
    with src, atomic_file(dest, 0o644, durable=False) as out:
        with cctx.stream_writer(out, size=size, closefd=False) as writer:
            while chunk := src.read(COPY_CHUNK):
                hasher.update(chunk)
                writer.write(chunk)
        got = hasher.digest()
        if got != digest or hasher.size != size:
            raise ObjectCorrupt(f"large object is corrupt: fs-verity digest {got.hex()}, "
                                f"{hasher.size} bytes; expected {to_hex(digest)}, {size} bytes",
                                expected=to_hex(digest), got=got.hex(), object_id=to_hex(digest),
                                path=source)
        return out.tell()


def _sign_pack(site_dir: str, sha256: bytes, keys: Sequence[Ed25519PrivateKey]) -> int:
    """Add each key's signature to the pack's signature file if missing; how many were added."""
    path = os.path.join(site_dir, site.pack_signatures(sha256))
    existing = read_signatures(path, missing_ok=True)
    have = {s.key_id for s in existing}
    added = [sign(sha256, key) for key in keys if key_id(key.public_key()) not in have]
    if added:
        write_signatures(path, [*existing, *added])
    return len(added)


def _sign_index(site_dir: str, data: bytes, keys: Sequence[Ed25519PrivateKey]) -> int:
    path = os.path.join(site_dir, site.index_signatures(index_sha256(data)))
    existing = read_signatures(path, missing_ok=True)
    have = {s.key_id for s in existing}
    added = [sign_index(data, key) for key in keys if key_id(key.public_key()) not in have]
    if added:
        write_signatures(path, [*existing, *added])
    return len(added)


def publish(repo: Repository, site_dir: str, keys: Sequence[Ed25519PrivateKey],
            refs: Sequence[str] = (), *, expires_days: float = DEFAULT_EXPIRES_DAYS,
            now: int | None = None, inline_max: int = RELEASE_INLINE_MAX,
            level: int = DEFAULT_LEVEL, object_level: int = objects.DEFAULT_LEVEL,
            deltas_from: int = 0, unsigned: bool = False) -> PublishResult:
    """Write or update the site in ``site_dir`` with the packs of ``refs`` (default: every ref
    of the repository), signed by ``keys``; see the module docstring for the order.  Refs
    the site lists and ``refs`` does not name are kept as they are.  Each ref's entry keeps
    its previous releases (at most MAX_HISTORY, newest first); with ``deltas_from`` K, a
    ref whose pack changed gets deltas from each of its previous K releases.  ``unsigned``:
    no keys; the index is staged, not made live (see the module docstring)."""
    if unsigned and keys:
        raise UsageError("an unsigned publish takes no signing key (sign the staged index "
                         "offline with `sealtree index sign`)")
    if not keys and not unsigned:
        raise UsageError("publishing needs at least one signing key (or --unsigned, to sign "
                         "offline)")
    if not 1 <= object_level <= 22:
        raise UsageError(f"the objects' zstd level must be in 1..22, got {object_level}")
    if not 0 <= deltas_from <= MAX_HISTORY:
        raise UsageError(f"deltas can be made from 0 to {MAX_HISTORY} previous releases, "
                         f"got {deltas_from}")
    if not 0 < expires_days <= 36500:
        raise UsageError(f"the index validity must be more than 0 and at most 36500 days, "
                         f"got {expires_days}")
    now = int(time.time()) if now is None else now
    names = list(refs) or repo.refs.names()
    if not names:
        raise UsageError("the repository has no refs to publish")
    packs_dir = os.path.join(site_dir, site.PACKS_DIR)
    for directory in (site_dir, packs_dir, os.path.join(site_dir, site.SIGNATURES_DIR),
                      os.path.join(site_dir, site.OBJECTS_DIR)):
        os.makedirs(directory, exist_ok=True)
    with flock(os.path.join(site_dir, LOCK), exclusive=True):
        old = read_site_index(site_dir)
        temps: list[str] = []
        with _temporaries(temps):
            built: list[_Built] = []
            for ref in dict.fromkeys(names):
                one = _build(repo, ref, packs_dir, inline_max, level)
                temps.append(one.temp)
                built.append(one)
            result = PublishResult(site_dir, old or SiteIndex(0, 0, 0, {}), refs=[b.ref for b in built])
            _write_objects(repo, site_dir, built, result, object_level)
            built = _with_history(site_dir, old, built, deltas_from, result, temps)
            syncfs(site_dir)
            for one in built:
                final = os.path.join(site_dir, site.pack(one.entry.sha256))
                if not os.path.exists(final):
                    os.rename(one.temp, final)
                    result.packs_written += 1
                    result.bytes_written += one.entry.size
            fsync_dir(packs_dir)
        for one in built:
            result.signatures_added += _sign_pack(site_dir, one.entry.sha256, keys)
        if unsigned:
            _stage_index(site_dir, old, built, now, int(expires_days * DAY), result)
        else:
            _write_index(site_dir, old, built, keys, now, int(expires_days * DAY), result)
    return result


def _write_objects(repo: Repository, site_dir: str, built: list[_Built], result: PublishResult,
                   level: int) -> None:
    cctx = objects.compressor(level)
    done: set[RawId] = set()
    made_dirs: set[str] = set()
    for one in built:
        for digest, size, meta in one.large:
            if digest in done:
                continue
            done.add(digest)
            dest = os.path.join(site_dir, site.large_object(digest))
            if os.path.exists(dest):  # written whole once (renamed into place): never rewritten
                continue
            directory = os.path.dirname(dest)
            if directory not in made_dirs:
                os.makedirs(directory, exist_ok=True)
                made_dirs.add(directory)
            result.bytes_written += _copy_object(repo, digest, size, meta, dest, cctx)
            result.objects_written += 1


def _with_history(site_dir: str, old: SiteIndex | None, built: list[_Built], deltas_from: int,
                  result: PublishResult, temps: list[str]) -> list[_Built]:
    """Each ref's entry with its history and deltas: kept as they are when the ref's pack is
    the site's already; else the previous newest release put first in the history, and
    deltas made from the first ``deltas_from`` releases of it (remote.site_deltas)."""
    stats = DeltaStats()
    stats.temps = temps
    made: dict[tuple[bytes, bytes], ObjectDelta | None] = {}
    out: list[_Built] = []
    for one in built:
        before = old.refs.get(one.ref) if old is not None else None
        if before is not None and before.sha256 == one.entry.sha256:
            entry = dataclasses.replace(one.entry, history=before.history, deltas=before.deltas)
        else:
            previous = (Release(before.sha256, before.size, before.commit), *before.history) \
                if before is not None else ()
            history = tuple(r for r in previous if r.sha256 != one.entry.sha256)[:MAX_HISTORY]

            def skipped(release: Release, err: DeltaError, ref: str = one.ref) -> None:
                result.deltas_skipped.append(f"{ref} from {release.commit}: {err.detail()}")

            deltas = make_deltas(site_dir, one.temp, one.entry.size, history[:deltas_from], stats,
                                 made, skipped) if deltas_from else ()
            entry = dataclasses.replace(one.entry, history=history, deltas=deltas)
        out.append(dataclasses.replace(one, entry=entry))
    result.deltas_written += stats.written
    result.bytes_written += stats.bytes_written
    return out


def _new_refs(old: SiteIndex | None, built: list[_Built]) -> dict[str, RefEntry]:
    refs = dict(old.refs) if old is not None else {}
    refs.update({one.ref: one.entry for one in built})
    return dict(sorted(refs.items()))


def read_staged_index(site_dir: str) -> tuple[SiteIndex, bytes] | None:
    """The unsigned index staged in the site and its bytes (None when there is none);
    IndexFormatError if it does not parse."""
    path = os.path.join(site_dir, site.STAGED_INDEX)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_INDEX + 1)
    except FileNotFoundError:
        return None
    return decode_index(data, path), data


def _stage_index(site_dir: str, old: SiteIndex | None, built: list[_Built], now: int, validity: int,
                 result: PublishResult) -> None:
    """Write the next index, unsigned, to site.STAGED_INDEX.  Nothing when the live index lists
    these refs already and is not half expired; the staged index is kept as it is when it lists
    them and follows the live one (so that signatures made of it stay good)."""
    refs = _new_refs(old, built)
    if old is not None and refs == dict(old.refs) and old.expires - now >= validity // 2:
        return
    serial = old.serial + 1 if old is not None else 1
    staged = read_staged_index(site_dir)
    if staged is not None and staged[0].serial == serial and dict(staged[0].refs) == refs \
            and staged[0].expires - now >= validity // 2:
        result.index, result.staged = staged[0], True
        return
    timestamp = max(now, old.timestamp) if old is not None else now
    index = SiteIndex(serial, timestamp, now + validity, refs)
    atomic_write(os.path.join(site_dir, site.STAGED_INDEX), encode_index(index), 0o644)
    result.index, result.staged, result.index_written = index, True, True


def _write_index(site_dir: str, old: SiteIndex | None, built: list[_Built],
                 keys: Sequence[Ed25519PrivateKey], now: int, validity: int,
                 result: PublishResult) -> None:
    refs = _new_refs(old, built)
    if old is not None and refs == dict(old.refs) and old.expires - now >= validity // 2:
        data = encode_index(old)
        result.signatures_added += _sign_index(site_dir, data, keys)  # a new key signs too
        return
    serial = old.serial + 1 if old is not None else 1
    timestamp = max(now, old.timestamp) if old is not None else now
    index = SiteIndex(serial, timestamp, now + validity, refs)
    data = encode_index(index)
    result.signatures_added += _sign_index(site_dir, data, keys)
    atomic_write(os.path.join(site_dir, site.INDEX), data, 0o644)
    result.index = index
    result.index_written = True

