"""Pulling: the index, then each ref's pack, then the large objects the repository lacks.

In order, for one remote:

1. the index from the first server that serves one that is signed by enough
   keys of the remote's keyring (checked before it is parsed), parses, has not
   expired (freeze) and is not older than the newest accepted from this remote
   (rollback: ``config.accepted.json``); a server whose index fails is dropped;
2. per ref: nothing when the ref already names the index's commit; else the
   freshness of the index's claim (``pack.freshness``, before any download),
   the pack (size and SHA-256 from the index) and its signatures (keyring);
   once the import (4) has opened it, that it is the pack the index names
   (ref, commit, version, time, SHA-256);
3. then the large objects its manifest names that the repository lacks, by forked
   worker processes (``remote.fetching``; on threads when cross-checking),
   each decompressed into ``tmp/pull/objects/`` as it arrives and checked
   against its fs-verity digest and size before it is adopted into the import's
   transaction;

with deltas (remote.pull_deltas, unless ``no_deltas``): the pack rebuilt from
the pack kept for the ref's current commit and a pack delta, objects rebuilt
from objects present and object deltas, each checked as a downloaded file is;
a delta that fails falls back to the full file;
4. ``pack.importer.import_pack``, running while the workers fetch: it verifies
   the pack again (``on_open``: 2 and 3 start from its reader, so the manifest is
   decoded once) and stages its trees and inline files, then (``before_publish``)
   waits for the workers and stages their checked downloads in the same
   transaction, publishes everything, keeps the pack and moves the ref: a ref
   only ever names a commit whose objects are all present.

Downloads go to ``REPO/tmp/pull/`` (``PARTIAL_DIR``) and survive an
interrupted pull: the next one continues them with Range requests, and checks
a file found complete before using it.  One pull at a time per repository
(``tmp/pull/lock``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pack import freshness
from pack.importer import freshness_path, import_pack, kept_pack_path, missing_objects
from pack.keys import Keyring
from pack.reader import PackReader
from pack.signature import decode_signatures
from pack.verify import check_trust
from store.errors import FormatError, SealtreeError, SignatureError
from store.ids import HexId, RawId, to_hex
from store.lock import flock
from store.model import Meta
from store.repo import Repository
from store.transaction import Transaction

from . import config, pull_deltas, site
from .checks import (
    MAX_SIGNATURE_FILE,
    SignedIndex,
    check_not_expired,
    check_pack_matches,
    fetch_signed_index,
    sha256_check,
)
from .crosscheck import get_file_cross_checked
from .errors import FetchError, IndexRollback, Mismatch, RemoteError
from .fetching import Fetching, Wanted, content_path, fetch_on_threads, give_meta
from .http import Client, Hasher, HttpPolicy
from .index import MAX_INDEX, RefEntry
from .mirrors import Mirrors, Verify

PARTIAL_DIR = os.path.join("tmp", "pull")  # REPO/tmp/pull/{packs,objects}/, kept between pulls
DEFAULT_WORKERS = 4

Progress = Callable[["PullProgress"], None]


@dataclass
class PullProgress:
    """Running totals, for a progress line."""

    bytes_done: int = 0
    bytes_total: int = 0
    objects_done: int = 0
    objects_total: int = 0


@dataclass(frozen=True)
class PullOptions:
    refs: Sequence[str] = ()
    allow_expired: bool = False
    allow_downgrade: bool = False
    min_signatures: int = 1
    workers: int = DEFAULT_WORKERS
    policy: HttpPolicy = field(default_factory=HttpPolicy)
    now: int | None = None
    cross_check: int = 0  # >= 2: every file as ranges from that many servers (remote.crosscheck)
    seed: int | None = None  # for the random choice of servers (tests)
    no_deltas: bool = False  # fetch full files even where a delta would do


@dataclass
class RefPulled:
    ref: str
    commit: HexId
    previous: HexId | None
    updated: bool
    pack_bytes: int = 0
    objects_fetched: int = 0
    object_bytes: int = 0
    deltas_used: int = 0
    delta_bytes: int = 0  # bytes of delta files fetched (also those that fell back)
    replaced_bytes: int = 0  # what the files rebuilt from deltas cost whole


@dataclass
class PullResult:
    remote: str
    index_serial: int
    index_server: str
    index_not_modified: bool = False  # the server answered 304: the kept index was used
    refs: list[RefPulled] = field(default_factory=list)
    bytes_fetched: int = 0
    bytes_full: int = 0  # what the same pull would have fetched without deltas
    packs_fetched: int = 0
    objects_fetched: int = 0
    deltas_used: int = 0
    fallbacks: list[pull_deltas.Fallback] = field(default_factory=list)
    servers: dict[str, dict[str, object]] = field(default_factory=dict)


def partial_dir(repo: Repository) -> str:
    return os.path.join(repo.path, PARTIAL_DIR)


# -- the index ----------------------------------------------------------------------------

def _accept_index(remote: config.Remote, accepted: config.AcceptedIndex | None, keyring: Keyring,
                  mirrors: Mirrors, url: str, options: PullOptions, now: int,
                  cached: config.CachedIndex | None) -> SignedIndex:
    signed = fetch_signed_index(mirrors, url, keyring, options.min_signatures, cached)
    if not options.allow_expired:
        check_not_expired(signed, now)
    index, where = signed.index, signed.where
    if accepted is not None and not options.allow_downgrade:
        if index.serial < accepted.serial:
            raise IndexRollback(f"index serial {index.serial} is older than serial {accepted.serial} "
                                f"already accepted from remote {remote.name} (replayed or stale)",
                                path=where)
        if index.serial == accepted.serial and signed.sha256.hex() != accepted.sha256:
            raise IndexRollback(f"index serial {index.serial} differs from the index of the same "
                                f"serial already accepted from remote {remote.name}", path=where)
    return signed


def _cached_index(repo: Repository, remote: config.Remote,
                  accepted: config.AcceptedIndex | None) -> config.CachedIndex | None:
    """The kept copy of the index accepted last, when it is that index (else None)."""
    if accepted is None:
        return None
    cached = config.load_cached_index(repo, remote.name, MAX_INDEX, MAX_SIGNATURE_FILE)
    return cached if cached is not None and cached.sha256 == accepted.sha256 else None


def _validators(signed: SignedIndex) -> config.Validators | None:
    """What the server sent to validate its index with, as far as it can be sent back."""
    def usable(value: str | None) -> str | None:
        ok = value is not None and 0 < len(value) <= config.MAX_VALIDATOR and value.isascii() \
            and value.isprintable()
        return value if ok else None
    etag, modified = usable(signed.etag), usable(signed.last_modified)
    return config.Validators(etag, modified) if etag or modified else None


def _keep_index(repo: Repository, remote: config.Remote, signed: SignedIndex, url: str,
                cached: config.CachedIndex | None) -> None:
    """Keep the accepted index and this server's validators for the next pull's conditional GET
    (each server's validators apply to the index it served; another index forgets them)."""
    servers = dict(cached.servers) if cached is not None and cached.sha256 == signed.sha256.hex() else {}
    validators = _validators(signed)
    if validators is None:
        servers.pop(url, None)
    else:
        servers[url] = validators
    if cached is not None and cached.sha256 == signed.sha256.hex() and servers == cached.servers:
        return
    config.save_cached_index(repo, remote.name, config.CachedIndex(
        signed.data, signed.signatures, signed.sha256.hex(), servers))


def fetch_index(repo: Repository, remote: config.Remote, keyring: Keyring, mirrors: Mirrors,
                options: PullOptions) -> tuple[SignedIndex, str]:
    """The index of the first server that serves an acceptable one (see the module docstring),
    recorded as accepted; returns it and the server.  A server whose index fails is dropped.
    The GET is conditional when the repository keeps the accepted index with that server's
    validators (``config.CachedIndex``); a 304 reuses it, checked again in full (signatures
    with today's keyring, expiry, rollback)."""
    now = int(time.time()) if options.now is None else options.now
    failures: list[SealtreeError] = []
    accepted = config.load_accepted(repo, remote.name)
    cached = _cached_index(repo, remote, accepted)
    for url in mirrors.live():
        try:
            signed = _accept_index(remote, accepted, keyring, mirrors, url, options, now, cached)
        except (FetchError, SignatureError, FormatError) as err:  # this server's index fails
            mirrors.drop(url, err)
            failures.append(err)
            continue
        index = signed.index
        if accepted is None or index.serial > accepted.serial:
            config.save_accepted(repo, remote.name, config.AcceptedIndex(
                index.serial, index.timestamp, index.expires, signed.sha256.hex()))
        if accepted is None or index.serial >= accepted.serial:  # not a downgrade allowed
            _keep_index(repo, remote, signed, url, cached)
        return signed, url
    if len(failures) == 1:
        raise failures[0]
    raise mirrors.failed(site.INDEX, failures)


# -- packs and objects ---------------------------------------------------------------------

def _get_file(mirrors: Mirrors, options: PullOptions, path: str, dest: str, size: int,
              new_hasher: Callable[[], Hasher], verify: Verify, on_bytes: Callable[[int], None], *,
              exact: bool = True) -> None:
    """One file into ``dest``, verified: from one server after another, or cross-checked."""
    if options.cross_check < 2:
        mirrors.get_file(path, dest, size, new_hasher, verify, on_bytes, exact=exact)
        return
    rng = random.Random(None if options.seed is None else f"{options.seed}:{path}")
    while True:  # a server that fails is dropped; cross-check with the ones left, while enough are
        try:
            get_file_cross_checked(mirrors, path, dest, size, new_hasher, verify, options.cross_check,
                                   rng, on_bytes, exact=exact)
            return
        except FetchError:
            if len(mirrors.live()) < 2:
                raise


def _pack_dest(repo: Repository, entry: RefEntry) -> str:
    directory = os.path.join(partial_dir(repo), "packs")
    os.makedirs(directory, exist_ok=True)
    return os.path.join(directory, os.path.basename(site.pack(entry.sha256)))


def _fetch_pack(repo: Repository, entry: RefEntry, keyring: Keyring, mirrors: Mirrors,
                options: PullOptions, progress: PullProgress, report: Progress | None, *,
                rebuilt: bool = False) -> tuple[str, str]:
    """The verified pack and its signature file, in the partial directory; ``rebuilt``: the
    pack is there already (rebuilt from a delta with the index's SHA-256): signatures only."""
    path = site.pack(entry.sha256)
    dest = _pack_dest(repo, entry)

    def on_bytes(n: int) -> None:
        progress.bytes_done += n
        if report is not None:
            report(progress)

    if not rebuilt:
        progress.bytes_total += entry.size
        _get_file(mirrors, options, path, dest, entry.size, hashlib.sha256, sha256_check(entry.sha256),
                  on_bytes)
    sig_path = site.pack_signatures(entry.sha256)
    _url, raw = mirrors.get_bytes(sig_path, MAX_SIGNATURE_FILE)
    check_trust(entry.sha256, decode_signatures(raw, sig_path), keyring, options.min_signatures)
    sig_dest = dest + ".sig"
    with open(sig_dest, "wb") as handle:
        handle.write(raw)
    return dest, sig_dest


def _fetch_on_threads(repo: Repository, wanted: list[Wanted], mirrors: Mirrors, options: PullOptions,
                      progress: PullProgress, report: Progress | None) -> tuple[dict[RawId, str], int]:
    """Download and check each wanted object into the partial directory on threads (a
    cross-checked pull: remote.crosscheck); path per digest, and how many were downloaded."""
    progress.bytes_total += sum(w.size for w in wanted)
    progress.objects_total += len(wanted)

    def on_bytes(n: int) -> None:
        progress.bytes_done += n  # a race here only blurs a progress line
        if report is not None:
            report(progress)

    def on_object() -> None:
        progress.objects_done += 1
        if report is not None:
            report(progress)

    def get_file(path: str, dest: str | None, most: int, new_hasher: Callable[[], Hasher],
                 verify: Verify, on_bytes: Callable[[int], None]) -> None:
        if dest is None:  # fetch_one spools every object here (a cross-check needs the file)
            raise ValueError("a cross-checked object needs a file")
        _get_file(mirrors, options, path, dest, most, new_hasher, verify, on_bytes, exact=False)

    return fetch_on_threads(get_file, _objects_dir(repo), wanted, options.workers, on_bytes, on_object)


def _start_fetching(repo: Repository, wanted: list[Wanted], mirrors: Mirrors, options: PullOptions,
                    progress: PullProgress, report: Progress | None) -> Fetching:
    """Start fetching the wanted objects in worker processes (remote.fetching)."""
    progress.bytes_total += sum(w.size for w in wanted)
    progress.objects_total += len(wanted)
    objects_before, bytes_before = progress.objects_done, progress.bytes_done

    def on_progress(done: int, received: int) -> None:
        progress.objects_done, progress.bytes_done = objects_before + done, bytes_before + received
        if report is not None:
            report(progress)

    return Fetching(_objects_dir(repo), wanted, mirrors, options.policy, options.workers,
                    on_progress if report is not None else None)


def _stage_objects(tx: Transaction, wanted: list[Wanted], files: dict[RawId, str]) -> None:
    """Stage every checked download (its inode given its first metadata already) with each
    metadata it is needed with, in the import's transaction."""
    for item in wanted:
        verified = files.get(item.digest)
        if verified is None:
            raise RemoteError("not fetched (a bug: the import would leave it missing)",
                              path=to_hex(item.digest))
        for meta in item.metas[1:]:  # another inode per extra metadata: copy
            fd = os.open(verified, os.O_RDONLY | os.O_CLOEXEC)
            try:
                digest, _size = tx.add_file_stream(fd, meta)
            finally:
                os.close(fd)
            if digest != item.digest:
                raise RemoteError(f"changed on disk after it was verified ({to_hex(digest)})",
                                  path=verified)
        tx.adopt_file(verified, item.digest, item.metas[0])


def _objects_dir(repo: Repository) -> str:
    directory = os.path.join(partial_dir(repo), "objects")
    os.makedirs(directory, exist_ok=True)
    return directory


def _wanted(repo: Repository, reader: PackReader) -> list[Wanted]:
    by_digest: dict[RawId, list[Meta]] = {}
    sizes: dict[RawId, int] = {}
    for missing in missing_objects(repo, reader.manifest.large_entries()):
        entry = missing.entry.entry
        by_digest.setdefault(entry.digest, []).append(entry.meta)
        sizes[entry.digest] = entry.size
    return [Wanted(d, sizes[d], tuple(metas)) for d, metas in by_digest.items()]


def _pack_by_delta(repo: Repository, source: pull_deltas.Source, entry: RefEntry,
                   fetch_delta: pull_deltas.FetchDelta, mirrors: Mirrors, result: PullResult,
                   pulled: RefPulled) -> bool:
    """Rebuild the pack into the partial directory from the source's pack delta when that is
    smaller than the pack; whether it was (else the full pack is fetched)."""
    pack_dest = _pack_dest(repo, entry)
    if source.delta.size >= entry.size or os.path.exists(pack_dest):  # or one is there already
        return False
    before = mirrors.bytes_fetched
    failed = pull_deltas.rebuild_pack(source, entry, fetch_delta, _delta_dir(repo), pack_dest)
    pulled.delta_bytes += mirrors.bytes_fetched - before
    if failed is not None:
        result.fallbacks.append(failed)
        return False
    pulled.deltas_used += 1
    pulled.replaced_bytes += entry.size
    return True


def _objects_by_delta(repo: Repository, source: pull_deltas.Source, wanted: list[Wanted],
                      fetch_delta: pull_deltas.FetchDelta, mirrors: Mirrors, options: PullOptions,
                      result: PullResult, pulled: RefPulled) -> dict[RawId, str]:
    """The wanted objects rebuilt from object deltas into the partial directory (checked
    content with its first metadata, as downloads leave it), by digest; the others are
    fetched whole."""
    if not wanted:
        return {}
    before = mirrors.bytes_fetched
    directory = _objects_dir(repo)
    contents = {w.digest: content_path(directory, w.digest) for w in wanted}
    listed, unlisted = pull_deltas.fetch_object_deltas(source, fetch_delta, _delta_dir(repo))
    if unlisted is not None:
        result.fallbacks.append(unlisted)
    plans = pull_deltas.plan_objects(repo, source, listed, list(contents.items()))
    done, failures = pull_deltas.rebuild_objects(plans, contents, fetch_delta, _delta_dir(repo),
                                                 options.workers)
    result.fallbacks.extend(failures)
    pulled.deltas_used += len(done)
    pulled.replaced_bytes += sum(plans[digest].delta.full for digest in done)
    pulled.delta_bytes += mirrors.bytes_fetched - before
    metas = {w.digest: w.metas[0] for w in wanted}
    for digest in done:
        give_meta(contents[digest], metas[digest])
    return {digest: contents[digest] for digest in done}


class _LargeObjects:
    """The large objects of one ref's pull, the pack's import running meanwhile: ``start``
    (given the import's reader, so the manifest is decoded once) checks that the pack is the
    one the index names and starts fetching what the repository lacks, rebuilt from deltas
    where it can, in worker processes (on threads, before the import goes on, when cross-
    checking); ``stage`` waits for them and stages them in the import's transaction."""

    def __init__(self, repo: Repository, ref: str, entry: RefEntry, source: pull_deltas.Source | None,
                 fetch_delta: pull_deltas.FetchDelta, mirrors: Mirrors, options: PullOptions,
                 result: PullResult, pulled: RefPulled, progress: PullProgress,
                 report: Progress | None) -> None:
        self.repo, self.ref, self.entry, self.source = repo, ref, entry, source
        self.fetch_delta, self.mirrors, self.options = fetch_delta, mirrors, options
        self.result, self.pulled, self.progress, self.report = result, pulled, progress, report
        self.wanted: list[Wanted] = []
        self.files: dict[RawId, str] = {}
        self.fetching: Fetching | None = None
        self.on_threads = 0  # objects downloaded on threads
        self.bytes_before = mirrors.bytes_fetched  # before the whole objects (after deltas)

    def start(self, reader: PackReader) -> None:
        entry, repo, options = self.entry, self.repo, self.options
        check_pack_matches(reader, self.ref, entry, site.pack(entry.sha256))
        if reader.expected_sha256 != entry.sha256:  # the file changed since it was checked
            raise Mismatch(f"the pack's SHA-256 is not {entry.sha256.hex()}, the index's",
                           path=site.pack(entry.sha256))
        self.wanted = _wanted(repo, reader)
        if self.source is not None:
            self.files = _objects_by_delta(repo, self.source, self.wanted, self.fetch_delta, self.mirrors,
                                           options, self.result, self.pulled)
        whole = [w for w in self.wanted if w.digest not in self.files]
        self.bytes_before = self.mirrors.bytes_fetched
        if options.cross_check >= 2 or not whole:
            fetched, self.on_threads = _fetch_on_threads(repo, whole, self.mirrors, options,
                                                         self.progress, self.report)
            self.files.update(fetched)
        else:  # fetched while the import stages the pack's trees and inline files
            self.fetching = _start_fetching(repo, whole, self.mirrors, options, self.progress,
                                            self.report)

    def stage(self, tx: Transaction) -> None:
        if self.fetching is not None:
            self.files.update(self.fetching.wait())
        _stage_objects(tx, self.wanted, self.files)

    def downloaded(self) -> int:
        return self.on_threads if self.fetching is None else self.fetching.downloaded

    def cancel(self) -> None:
        if self.fetching is not None:
            self.fetching.cancel()


def _pull_ref(repo: Repository, ref: str, entry: RefEntry, keyring: Keyring, mirrors: Mirrors,
              options: PullOptions, result: PullResult, progress: PullProgress,
              report: Progress | None) -> RefPulled:
    current = repo.refs.read(ref)
    previous = to_hex(current) if current is not None else None
    pulled = RefPulled(ref, entry.commit, previous, False)
    if previous == entry.commit and os.path.exists(kept_pack_path(repo, RawId(bytes.fromhex(entry.commit)))):
        return pulled
    claim = freshness.Accepted(entry.commit, entry.version, entry.timestamp)
    freshness.check(freshness_path(repo), ref, claim, allow_downgrade=options.allow_downgrade)
    source = None
    if not options.no_deltas and current is not None:
        source = pull_deltas.find_source(kept_pack_path(repo, current), entry)
    fetch_delta = _delta_fetcher(repo, mirrors, options, progress, report)
    before = mirrors.bytes_fetched
    rebuilt = source is not None and _pack_by_delta(repo, source, entry, fetch_delta, mirrors, result,
                                                    pulled)
    pack_path, sig_path = _fetch_pack(repo, entry, keyring, mirrors, options, progress, report,
                                      rebuilt=rebuilt)
    pulled.pack_bytes = mirrors.bytes_fetched - before
    result.packs_fetched += 1 if pulled.pack_bytes and not rebuilt else 0
    large = _LargeObjects(repo, ref, entry, source, fetch_delta, mirrors, options, result, pulled,
                          progress, report)
    try:
        imported = import_pack(repo, pack_path, keyring, min_signatures=options.min_signatures,
                               allow_downgrade=options.allow_downgrade, sig_path=sig_path,
                               on_open=large.start, before_publish=large.stage)
    finally:
        large.cancel()
    pulled.object_bytes = mirrors.bytes_fetched - large.bytes_before
    pulled.objects_fetched = large.downloaded()  # downloaded, not found complete from an earlier pull
    if imported.missing:  # cannot happen: every missing object was staged before the ref moved
        raise RemoteError(f"{len(imported.missing)} large objects still missing after the pull",
                          path=ref)
    for path in (pack_path, sig_path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    pulled.updated = True
    return pulled


def _delta_dir(repo: Repository) -> str:
    directory = os.path.join(partial_dir(repo), "deltas")
    os.makedirs(directory, exist_ok=True)
    return directory


def _delta_fetcher(repo: Repository, mirrors: Mirrors, options: PullOptions, progress: PullProgress,
                   report: Progress | None) -> pull_deltas.FetchDelta:
    """Download one delta file, checked against the SHA-256 and size the index lists."""
    def on_bytes(n: int) -> None:
        progress.bytes_done += n
        if report is not None:
            report(progress)

    def fetch(path: str, dest: str, size: int, sha256: bytes) -> None:
        progress.bytes_total += size
        if options.cross_check >= 2:  # cross-checking names and drops a liar, as for any file
            _get_file(mirrors, options, path, dest, size, hashlib.sha256, sha256_check(sha256), on_bytes)
        else:
            mirrors.get_file(path, dest, size, hashlib.sha256, sha256_check(sha256), on_bytes, delta=True)
    return fetch


def _servers(remote: config.Remote, client: Client) -> tuple[str, ...]:
    """The remote's servers, then those of its mirrorlist when it has one.  A mirrorlist is not
    signed: a server it names is trusted with nothing (every file is checked), and one that
    cannot be fetched leaves the configured servers to do the work."""
    if remote.mirrorlist is None:
        return remote.servers
    base, _sep, name = remote.mirrorlist.rpartition("/")
    try:
        data = client.get_bytes(base, name, config.MAX_MIRRORLIST)
    except FetchError:
        return remote.servers
    listed = config.parse_mirrorlist(data, remote.mirrorlist)
    return tuple(dict.fromkeys((*remote.servers, *listed)))


def pull(repo: Repository, remote: config.Remote, options: PullOptions | None = None,
         report: Progress | None = None, keyring: Keyring | None = None) -> PullResult:
    """Pull ``options.refs`` (default: every ref of the index) from ``remote`` into ``repo``
    (see the module docstring).  Raises SignatureError, IndexExpired, IndexRollback,
    DowngradeError, PackError, RemoteError (AllMirrorsFailed names each server's failure)."""
    options = options or PullOptions()
    keyring = keyring if keyring is not None else Keyring.load(remote.keys)
    os.makedirs(partial_dir(repo), exist_ok=True)
    client = Client(options.policy)
    try:
        mirrors = Mirrors(_servers(remote, client), client)
        with flock(os.path.join(partial_dir(repo), "lock"), exclusive=True):
            signed, server = fetch_index(repo, remote, keyring, mirrors, options)
            index = signed.index
            names = list(dict.fromkeys(options.refs)) or list(index.refs)
            unknown = [ref for ref in names if ref not in index.refs]
            if unknown:
                raise RemoteError(f"not in the index of remote {remote.name} (serial {index.serial})",
                                  path=unknown[0])
            result = PullResult(remote.name, index.serial, server, index_not_modified=signed.not_modified)
            progress = PullProgress()
            for ref in names:
                pulled = _pull_ref(repo, ref, index.refs[ref], keyring, mirrors, options, result,
                                   progress, report)
                result.refs.append(pulled)
                result.objects_fetched += pulled.objects_fetched
                result.deltas_used += pulled.deltas_used
    finally:
        client.close()
    result.bytes_fetched = mirrors.bytes_fetched
    result.bytes_full = result.bytes_fetched + sum(r.replaced_bytes - r.delta_bytes for r in result.refs)
    result.servers = {url: {"bytes": s.bytes, "files": s.files, "dropped": s.failure,
                            "deltas_refused": s.delta_failure}
                      for url, s in mirrors.stats.items()}
    return result

