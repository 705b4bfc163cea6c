"""Making a site's deltas (``publish --deltas-from K``): from each of the previous K releases
of a ref to its newest, a pack delta (pack.delta) and object deltas (store.object_delta) for
the large objects that changed.

Sources come from the site itself, never from the publisher's repository
(which may have pruned an old release): the old pack is still on the site
(``packs/<sha256>.pack``, content-addressed, never removed), and so are the
old and new large objects (``objects/``), read back and checked against their
fs-verity digests.  Every delta is checked by applying it where it is made
(pack.delta, store.object_delta), written under a temporary name and renamed
to its SHA-256 (``site.pack_delta``, ``site.object_delta``), not fsynced (the
publisher syncs the filesystem once before the index names anything).  A
delta is listed only when smaller than what it replaces.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import zstandard

from pack.delta import make_pack_delta, object_delta_pairs
from pack.reader import PackReader
from store.atomic import atomic_file
from store.errors import DeltaError
from store.fsverity import digest_bytes
from store.object_delta import MAX_OBJECT, make_object_delta

from . import objects, site
from .index import FileRef, ObjectDelta, PackDelta, Release, encode_object_deltas


@dataclass
class DeltaStats:
    """What making deltas wrote."""

    written: int = 0
    bytes_written: int = 0
    temps: list[str] = field(default_factory=list)  # removed by the caller whatever happens


def _site_object(site_dir: str, digest: bytes, size: int) -> bytes | None:
    """A large object's content read back from the site, or None when it is absent, larger
    than an object delta allows, or not the object its digest names."""
    if size > MAX_OBJECT:
        return None
    path = os.path.join(site_dir, site.large_object(digest))
    dctx = zstandard.ZstdDecompressor(max_window_size=objects.MAX_WINDOW)
    try:
        with open(path, "rb") as handle, dctx.stream_reader(handle, read_across_frames=True) as reader:
            data = reader.read(size + 1)
    except (FileNotFoundError, zstandard.ZstdError):
        return None
    if len(data) != size or not hmac.compare_digest(digest_bytes(data), digest):
        return None
    return data


def _place(site_dir: str, temp: str, final_rel: str) -> bool:
    """Rename a delta made under ``temp`` to its final name; False when it was there already."""
    final = os.path.join(site_dir, final_rel)
    if os.path.exists(final):
        os.unlink(temp)
        return False
    os.rename(temp, final)
    return True


def _write_placed(site_dir: str, data: bytes, sha256: bytes, suffix: str, final_rel: str,
                  stats: DeltaStats) -> bool:
    """Write ``data`` (whose SHA-256 is ``sha256``) under a build name of the deltas directory
    and ``_place`` it at ``final_rel``; False when it was there already."""
    temp = os.path.join(site_dir, site.DELTAS_DIR, f".build-{os.getpid()}-{sha256.hex()[:16]}{suffix}")
    stats.temps.append(temp)
    with atomic_file(temp, 0o644, durable=False) as handle:
        handle.write(data)
    return _place(site_dir, temp, final_rel)


def _object_deltas(site_dir: str, old_pack: str, new_pack: str, stats: DeltaStats,
                   made: dict[tuple[bytes, bytes], ObjectDelta | None]) -> FileRef | None:
    """The object deltas from ``old_pack``'s large objects to ``new_pack``'s, made or reused,
    and the list file naming them (None when there are none)."""
    with PackReader(old_pack) as old, PackReader(new_pack) as new:
        pairs, _whole = object_delta_pairs(old.manifest, new.manifest)
    listed: list[ObjectDelta] = []
    for pair in pairs:
        source, result = pair.source.entry, pair.result.entry
        key = (bytes(source.digest), bytes(result.digest))
        if key not in made:
            made[key] = _object_delta(site_dir, key, source.size, result.size, stats)
        one = made[key]
        if one is not None:
            listed.append(one)
    if not listed:
        return None
    data = encode_object_deltas(listed)
    sha256 = hashlib.sha256(data).digest()
    if _write_placed(site_dir, data, sha256, ".list", site.object_delta_list(sha256), stats):
        stats.bytes_written += len(data)
    return FileRef(sha256, len(data))


def _object_delta(site_dir: str, key: tuple[bytes, bytes], source_size: int, result_size: int,
                  stats: DeltaStats) -> ObjectDelta | None:
    source = _site_object(site_dir, key[0], source_size)
    result = _site_object(site_dir, key[1], result_size)
    if source is None or result is None:
        return None
    delta = make_object_delta(source, result)
    full = os.path.getsize(os.path.join(site_dir, site.large_object(key[1])))
    if delta is None or len(delta) >= full:
        return None
    sha256 = hashlib.sha256(delta).digest()
    if _write_placed(site_dir, delta, sha256, "", site.object_delta(sha256), stats):
        stats.written += 1
        stats.bytes_written += len(delta)
    return ObjectDelta(key[0], key[1], sha256, len(delta), full)


def make_deltas(site_dir: str, new_pack: str, new_size: int, sources: tuple[Release, ...],
                stats: DeltaStats, made: dict[tuple[bytes, bytes], ObjectDelta | None],
                skipped: Callable[[Release, DeltaError], None] | None = None) -> tuple[PackDelta, ...]:
    """The deltas from each release of ``sources`` whose pack is on the site to ``new_pack``
    (a pack being published, whose large objects are on the site already).  A release no
    delta can be made from (``DeltaError``: a pack this zstd does not rebuild) is passed to
    ``skipped`` and left out; so is a pack delta not smaller than the pack."""
    os.makedirs(os.path.join(site_dir, site.DELTAS_DIR), exist_ok=True)
    deltas: list[PackDelta] = []
    for release in sources:
        old_pack = os.path.join(site_dir, site.pack(release.sha256))
        if not os.path.exists(old_pack):
            continue
        temp = os.path.join(site_dir, site.DELTAS_DIR,
                            f".build-{os.getpid()}-{release.sha256.hex()[:16]}{site.PACK_DELTA_SUFFIX}")
        stats.temps.append(temp)
        try:
            made_delta = make_pack_delta(old_pack, new_pack, temp)
        except DeltaError as err:
            if skipped is not None:
                skipped(release, err)
            continue
        if made_delta.size >= new_size:
            os.unlink(temp)
            continue
        if _place(site_dir, temp, site.pack_delta(made_delta.sha256)):
            stats.written += 1
            stats.bytes_written += made_delta.size
        deltas.append(PackDelta(release.sha256, made_delta.sha256, made_delta.size,
                                _object_deltas(site_dir, old_pack, new_pack, stats, made)))
    return tuple(deltas)
