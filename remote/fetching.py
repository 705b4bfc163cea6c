"""Fetching a pull's large objects into the partial directory, checked, ready to adopt.

Each object is downloaded (``REPO/tmp/pull/objects/<hex>.zst``, kept until it
is checked so that a Range request can continue it), decompressed into
``<hex>`` and fs-verity-digested in the same pass (``remote.objects.Extracting``);
only content of the signed size and digest is kept, and given the metadata of
the first inode that uses it, so that the transaction only renames it.

``Fetching`` does this in forked worker processes, each with its own
connections: on threads, the per-block hashing of every object handed the GIL
back and forth tens of thousands of times (most of a pull's time went to
futex calls).  The workers take objects from one queue (a pipe of indexes into
the wanted list, fed by the parent), share the servers they drop
(``remote.mirrors.SharedDrops``: a server one drops, the others stop using)
and their running totals (``store.forked.SharedCounts``, for the progress
line); each sends back what every server served, which the parent adds to its
``Mirrors``.  The parent works meanwhile (the pack import stages its trees and
inline files) and waits for them only before it publishes.  A worker's error
stops the others and is raised in the parent; a parent that dies takes its
workers with it (``store.forked``).

``fetch_on_threads`` does the same on threads, for cross-checked pulls (each
file split over several servers, remote.crosscheck).
"""

from __future__ import annotations

import contextlib
import hmac
import os
import struct
import threading
from collections.abc import Callable, Container, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass

from store.forked import Forked, SharedCounts, collect
from store.fsverity import digest_file
from store.ids import RawId, to_hex
from store.inode_meta import apply_meta
from store.model import Meta

from . import objects, site
from .errors import RemoteError
from .http import Client, Hasher, HttpPolicy
from .mirrors import Mirrors, SharedDrops, Verify

PROGRESS_SECONDS = 0.2
_INDEX = struct.Struct("=I")  # one entry of the work queue: an index into the wanted list
# Written to the queue in pieces of at most PIPE_BUF bytes (atomic), each a whole number of
# entries: a worker's read of one entry never gets part of one.
_FEED = 4096 // _INDEX.size

# Objects that may take this many compressed bytes or more are downloaded into a file that
# a later pull can continue; smaller ones only through the decompressor (a file each cost
# an inode made and removed: an interrupted one is fetched again whole).
SPOOL_MIN = 1 << 20

# (site path, dest or None, most bytes, new hasher, verify, on_bytes): one file, verified
GetFile = Callable[[str, str | None, int, Callable[[], Hasher], Verify, Callable[[int], None]], None]


@dataclass(frozen=True)
class Wanted:
    """A large object the repository lacks, with every metadata it is needed with."""

    digest: RawId
    size: int
    metas: tuple[Meta, ...]


def content_path(directory: str, digest: RawId) -> str:
    """Where the checked content of object ``digest`` is left in the partial directory."""
    return os.path.join(directory, to_hex(digest))


def _verified_earlier(content: str, item: Wanted, left: Container[str] | None) -> bool:
    """Whether an earlier, interrupted pull left this object's content checked and complete
    (it is checked again: the partial directory is nobody's word).  ``left``: the names the
    partial directory held when the pull started (None: look)."""
    if left is not None and os.path.basename(content) not in left:
        return False
    try:
        if os.stat(content).st_size != item.size:
            os.unlink(content)
            return False
    except FileNotFoundError:
        return False
    if hmac.compare_digest(digest_file(content), item.digest):
        return True
    os.unlink(content)
    return False


def give_meta(content: str, meta: Meta) -> None:
    """Give a checked content file the metadata of the object it becomes."""
    fd = os.open(content, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        apply_meta(fd, meta)
    finally:
        os.close(fd)


def fetch_one(get_file: GetFile, directory: str, item: Wanted, on_bytes: Callable[[int], None], *,
              spool_min: int = 0, left: Container[str] | None = None) -> bool:
    """The object's checked content in ``directory`` (``content_path``: fetched unless an
    earlier pull left it there), with the metadata of its first inode; returns whether it
    was downloaded (not left by an earlier pull).  The compressed download is kept in a file
    only when it may take ``spool_min`` bytes or more (or one was left).  ``left``: the names
    ``directory`` held when the pull started, when the caller listed it (None: each is
    looked for)."""
    content = content_path(directory, item.digest)
    if _verified_earlier(content, item, left):
        give_meta(content, item.metas[0])
        return False
    bound = objects.compress_bound(item.size)
    compressed = content + ".zst"  # kept until checked, for a Range request to continue
    spooled = bound >= spool_min or (os.path.basename(compressed) in left if left is not None
                                     else os.path.exists(compressed))
    given: list[bool] = []

    def extracting() -> Hasher:  # decompressed into content and digested as it arrives
        return objects.Extracting(content, item.size, item.metas[0])

    def verify(hasher: Hasher, _size: int) -> str | None:
        if isinstance(hasher, objects.Extracting):
            return hasher.finish(item.digest)  # with the metadata given, when right
        given.append(False)
        return objects.check_and_extract(compressed, item.size, item.digest, content)

    get_file(site.large_object(item.digest), compressed if spooled else None, bound, extracting,
             verify, on_bytes)
    if spooled:
        os.unlink(compressed)
    if given:  # checked from the spooled file (a cross-check): the metadata is not given yet
        give_meta(content, item.metas[0])
    return True


# -- on threads (cross-checked pulls) --------------------------------------------------------

def fetch_on_threads(get_file: GetFile, directory: str, wanted: Sequence[Wanted], threads: int,
                     on_bytes: Callable[[int], None], on_object: Callable[[], None]
                     ) -> tuple[dict[RawId, str], int]:
    """Every wanted object fetched on ``threads`` threads: the checked content per digest, and
    how many were downloaded (not left by an earlier pull)."""
    done: dict[RawId, str] = {}
    downloaded: list[bool] = []

    def one(item: Wanted) -> None:
        downloaded.append(fetch_one(get_file, directory, item, on_bytes))
        done[item.digest] = content_path(directory, item.digest)
        on_object()

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        futures = [pool.submit(one, item) for item in wanted]
        finished, _pending = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in finished if f.exception() is not None]
        if failed:
            for future in futures:
                future.cancel()
            error = failed[0].exception()
            if error is not None:
                raise error
    return done, sum(downloaded)


# -- in worker processes ---------------------------------------------------------------------

ServerStats = dict[str, tuple[int, int, str | None]]  # url -> (bytes, files, why dropped)
Share = tuple[ServerStats, int]  # what a worker did: its servers', and objects it downloaded


def _next(queue: int) -> int | None:
    """The next index from the work queue; None when it is empty and closed."""
    raw = os.read(queue, _INDEX.size)
    if not raw:
        return None
    (index,) = _INDEX.unpack(raw)
    return int(index)


def _work(queue: int, feed: int, wanted: Sequence[Wanted], directory: str, left: frozenset[str],
          urls: Sequence[str], policy: HttpPolicy, drops: SharedDrops, counts: SharedCounts,
          slot: int) -> Share:
    """A worker process: fetch the objects the queue names until it is empty."""
    os.close(feed)  # the parent's end: the queue ends when the parent closes it
    client = Client(policy)  # connections of its own: the parent's are not shared across fork
    mirrors = Mirrors(urls, client, shared=drops)
    done = received = downloaded = 0

    def on_bytes(n: int) -> None:
        nonlocal received
        received += n
        counts.set(slot, done, received)

    def get_file(path: str, dest: str | None, most: int, new_hasher: Callable[[], Hasher],
                 verify: Verify, on_bytes: Callable[[int], None]) -> None:
        mirrors.get_file(path, dest, most, new_hasher, verify, on_bytes, exact=False)

    try:
        while (index := _next(queue)) is not None:
            downloaded += fetch_one(get_file, directory, wanted[index], on_bytes, spool_min=SPOOL_MIN,
                                    left=left)
            done += 1
            counts.set(slot, done, received)
    finally:
        client.close()
    return {url: (s.bytes, s.files, s.failure) for url, s in mirrors.stats.items()}, downloaded


def _feed(feed: int, count: int) -> None:
    """Write the indexes 0 .. count-1 to the work queue, then close it (a thread of the
    parent: the queue may hold fewer than ``count`` entries at a time)."""
    try:
        for start in range(0, count, _FEED):
            piece = b"".join(_INDEX.pack(i) for i in range(start, min(count, start + _FEED)))
            os.write(feed, piece)  # at most PIPE_BUF bytes: all of it, at once
    except BrokenPipeError:
        pass  # every worker has gone (one failed and the others were stopped)
    finally:
        os.close(feed)


def _worker_failed(message: str) -> RemoteError:
    return RemoteError(f"fetching objects: {message}")


class Fetching:
    """``wanted`` being fetched into ``directory`` by up to ``workers`` forked processes from
    the servers of ``mirrors`` that are live now.  ``wait()`` for the checked contents,
    ``cancel()`` (always, in a ``finally``) to stop the workers if they still run."""

    def __init__(self, directory: str, wanted: Sequence[Wanted], mirrors: Mirrors, policy: HttpPolicy,
                 workers: int, on_progress: Callable[[int, int], None] | None = None) -> None:
        self._mirrors = mirrors
        self._contents = {w.digest: content_path(directory, w.digest) for w in wanted}
        self._on_progress = on_progress
        self.downloaded = 0  # objects the workers downloaded (not left by an earlier pull)
        self._stop_ticking = threading.Event()
        self._ticker: threading.Thread | None = None
        count = max(1, min(workers, len(wanted)))
        self._drops = SharedDrops(len(mirrors.urls))
        for slot, url in enumerate(mirrors.urls):
            failure = mirrors.stats[url].failure
            if failure is not None:
                self._drops.set(slot, failure)
        self._counts = SharedCounts(count)
        left = frozenset(os.listdir(directory))  # what interrupted pulls left, looked at once
        queue, feed = os.pipe2(os.O_CLOEXEC)
        self._workers: list[Forked] = []
        try:
            for slot in range(count):
                self._workers.append(Forked(_work, queue, feed, wanted, directory, left, mirrors.urls,
                                            policy, self._drops, self._counts, slot,
                                            failure=_worker_failed))
        except BaseException:
            self.cancel()
            os.close(feed)
            raise
        finally:
            os.close(queue)
        threading.Thread(target=_feed, args=(feed, len(wanted)), daemon=True).start()
        # the progress line moves while the parent imports the pack (it waits only after)
        if on_progress is not None:
            self._ticker = threading.Thread(target=self._tick_until_stopped, daemon=True)
            self._ticker.start()

    def _tick_until_stopped(self) -> None:
        while not self._stop_ticking.wait(PROGRESS_SECONDS):
            self._tick()

    def _stop_ticker(self) -> None:
        self._stop_ticking.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None

    def _tick(self) -> None:
        if self._on_progress is not None:
            self._on_progress(*self._counts.total())

    def wait(self) -> dict[RawId, str]:
        """The checked content of every wanted object, by digest; what each server served is
        added to the ``Mirrors`` (its bytes and files, and why it was dropped)."""
        results: list[Share] = collect(self._workers)
        self._stop_ticker()
        self._tick()
        for stats, downloaded in results:
            self._mirrors.add(stats)
            self.downloaded += downloaded
        return self._contents

    def cancel(self) -> None:
        self._stop_ticker()
        for worker in self._workers:
            worker.cancel()
        with contextlib.suppress(BufferError):
            self._counts.close()
            self._drops.close()
