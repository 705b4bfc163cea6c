"""Mirroring: make or update a full, verified copy of a published site from its upstream.

The copy is a site like the one ``publish`` writes (``remote.site``), in the
same write order: every object and pack the upstream index names is fetched
(only those missing or of the wrong size), checked (packs: size and SHA-256
from the index, signatures with the keyring when one is given, the pack parses
and is the one the index names; objects: size and fs-verity digest from the
pack's manifest, decompressing it; deltas and object-delta lists: size and
SHA-256 from the index or list), renamed into place, the filesystem synced, and only then the
index's signatures and the index written.  A mirror copies from its upstream
alone; nothing it already holds is fetched again.

Without a keyring, signatures are copied but not checked (the copy is then only
as trustworthy as the upstream's bytes; every client still checks them).  An
upstream index older than the one the copy holds is refused (a mirror never
rolls back), an expired one unless allowed.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from pack.keys import Keyring
from pack.reader import PackReader
from pack.signature import decode_signatures
from pack.verify import check_trust
from store.atomic import atomic_write, fsync_dir
from store.ids import RawId
from store.lock import flock
from store.syncfs import syncfs

from . import objects, site
from .checks import (
    MAX_SIGNATURE_FILE,
    check_not_expired,
    check_pack_matches,
    fetch_signed_index,
    sha256_check,
)
from .errors import IndexRollback
from .http import Client, Hasher, HttpPolicy, NoHash
from .index import PackDelta, decode_object_deltas, index_sha256
from .mirrors import Mirrors, Verify
from .publish import LOCK, read_site_index

DEFAULT_WORKERS = 4


@dataclass
class MirrorResult:
    upstream: str
    serial: int
    index_written: bool = False
    packs_fetched: int = 0
    objects_fetched: int = 0
    deltas_fetched: int = 0
    bytes_fetched: int = 0
    refs: list[str] = field(default_factory=list)


def _temp(path: str) -> str:
    """Where a file of the copy is downloaded before it is checked (a name no server serves)."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".part-{name}")


def _get(mirrors: Mirrors, rel: str, root: str, size: int, new_hasher: Callable[[], Hasher],
         check: Callable[[str], Verify], *, exact: bool = True) -> bool:
    """Fetch ``rel`` into the copy unless it is there (written whole once, by a rename);
    ``check(temp)`` makes the check of the downloaded file.  True if fetched."""
    final = os.path.join(root, rel)
    if os.path.exists(final):
        return False
    os.makedirs(os.path.dirname(final), exist_ok=True)
    temp = _temp(final)
    mirrors.get_file(rel, temp, size, new_hasher, check(temp), exact=exact)
    os.chmod(temp, 0o644)
    os.rename(temp, final)
    return True


def _constant(check: Verify) -> Callable[[str], Verify]:
    """The same check whatever the temporary file (a pack's: it checks the hasher)."""
    return lambda _temp: check


def mirror(url: str, root: str, keyring: Keyring | None = None, *, min_signatures: int = 1,
           allow_expired: bool = False, workers: int = DEFAULT_WORKERS, policy: HttpPolicy | None = None,
           now: int | None = None) -> MirrorResult:
    """Make or update the copy of the site at ``url`` in ``root`` (see the module docstring).
    Raises SignatureError, IndexExpired, IndexRollback, Mismatch, PackError, RemoteError."""
    now = int(time.time()) if now is None else now
    client = Client(policy)
    mirrors = Mirrors((url,), client)
    os.makedirs(root, exist_ok=True)
    try:
        with flock(os.path.join(root, LOCK), exclusive=True):
            signed = fetch_signed_index(mirrors, url, keyring, min_signatures)
            if not allow_expired:
                check_not_expired(signed, now)
            index, data, where = signed.index, signed.data, signed.where
            held = read_site_index(root)
            if held is not None and index.serial < held.serial:
                raise IndexRollback(f"upstream index serial {index.serial} is older than serial "
                                    f"{held.serial} the copy holds", path=where)
            result = MirrorResult(url, index.serial, refs=list(index.refs))
            for ref, entry in index.refs.items():
                rel = site.pack(entry.sha256)
                check = _constant(sha256_check(entry.sha256))
                if _get(mirrors, rel, root, entry.size, hashlib.sha256, check):
                    result.packs_fetched += 1
                _url, raw = mirrors.get_bytes(site.pack_signatures(entry.sha256), MAX_SIGNATURE_FILE)
                if keyring is not None:
                    check_trust(entry.sha256, decode_signatures(raw, site.pack_signatures(entry.sha256)),
                                keyring, min_signatures)
                atomic_write(os.path.join(root, site.pack_signatures(entry.sha256)), raw, 0o644)
                with PackReader(os.path.join(root, rel), expected_sha256=entry.sha256) as reader:
                    check_pack_matches(reader, ref, entry, rel)
                    large = {row.entry.digest: row.entry.size for row in reader.manifest.large_entries()}
                result.objects_fetched += _objects(mirrors, root, large, workers)
                for delta in entry.deltas:
                    result.deltas_fetched += _deltas(mirrors, root, delta, workers)
            syncfs(root)
            fsync_dir(os.path.join(root, site.PACKS_DIR))
            os.makedirs(os.path.join(root, site.SIGNATURES_DIR), exist_ok=True)
            atomic_write(os.path.join(root, site.index_signatures(signed.sha256)), signed.signatures, 0o644)
            if held is None or signed.sha256 != index_sha256(_read(root)):
                atomic_write(os.path.join(root, site.INDEX), data, 0o644)
                result.index_written = True
    finally:
        client.close()
    result.bytes_fetched = mirrors.bytes_fetched
    return result


def _read(root: str) -> bytes:
    with open(os.path.join(root, site.INDEX), "rb") as handle:
        return handle.read()


def _by_sha256(mirrors: Mirrors, root: str, rel: str, sha256: bytes, size: int) -> bool:
    return _get(mirrors, rel, root, size, hashlib.sha256, _constant(sha256_check(sha256)))


def _deltas(mirrors: Mirrors, root: str, delta: PackDelta, workers: int) -> int:
    """Copy a pack delta, its object-delta list and the object deltas it lists; how many
    files were fetched."""
    fetched = int(_by_sha256(mirrors, root, site.pack_delta(delta.sha256), delta.sha256, delta.size))
    if delta.objects is None:
        return fetched
    rel = site.object_delta_list(delta.objects.sha256)
    fetched += _by_sha256(mirrors, root, rel, delta.objects.sha256, delta.objects.size)
    with open(os.path.join(root, rel), "rb") as handle:
        listed = decode_object_deltas(handle.read(), rel)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        done = list(pool.map(lambda o: _by_sha256(mirrors, root, site.object_delta(o.sha256), o.sha256,
                                                  o.size), listed))
    return fetched + sum(done)


def _objects(mirrors: Mirrors, root: str, large: dict[RawId, int], workers: int) -> int:
    def one(digest: RawId, size: int) -> bool:
        def check(temp: str) -> Verify:
            return lambda _hasher, _size: objects.check_compressed(temp, size, digest)

        return _get(mirrors, site.large_object(digest), root, objects.compress_bound(size), NoHash, check,
                    exact=False)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(one, digest, size) for digest, size in large.items()]
        finished, _pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            future.cancel()
        for future in finished:
            error = future.exception()
            if error is not None:
                raise error
    return sum(1 for future in futures if future.result())

