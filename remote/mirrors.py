"""Failover between the servers of one remote, and what each served.

Servers are tried in order (the remote's URL first, then its mirrors).  One
that errors, times out, is too slow or serves wrong bytes is dropped for the
rest of the pull, with the reason kept; the next one is used.  A file that
fails verification after being continued from an earlier attempt is first
fetched again whole from the same server, so that a bad partial file from
another server is not blamed on this one.

Worker processes fetching for one pull (``remote.fetching``) share their drops
through ``SharedDrops``: a server one of them drops, the others stop using.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from store.errors import SealtreeError

from .errors import AllMirrorsFailed, FetchError, WrongBytes
from .http import Client, Hasher

Verify = Callable[[Hasher, int], str | None]  # (hasher over the file, its size) -> what is wrong


@dataclass
class MirrorStats:
    """What one server did during a pull."""

    bytes: int = 0
    files: int = 0
    failure: str | None = None
    delta_failure: str | None = None  # served a delta with wrong bytes: asked for no more deltas


class SharedDrops:
    """Which servers are dropped, and why, in an anonymous shared mapping made before worker
    processes are forked: one slot per server, a flag byte set after the reason's length
    (``_LENGTH``) and text, so that a reader that sees the flag sees the reason."""

    _SLOT = 1024
    _LENGTH = struct.Struct("=H")  # bytes of the reason that follow it, at most _SLOT - 3

    def __init__(self, count: int) -> None:
        self._map = mmap.mmap(-1, self._SLOT * max(1, count))
        self._count = count

    def set(self, slot: int, reason: str) -> None:
        base = slot * self._SLOT
        if self._map[base]:
            return  # dropped already, by another worker: its reason stays
        text = reason.encode("utf-8", "replace")[:self._SLOT - 3]
        self._LENGTH.pack_into(self._map, base + 1, len(text))
        self._map[base + 3:base + 3 + len(text)] = text
        self._map[base] = 1

    def get(self, slot: int) -> str | None:
        base = slot * self._SLOT
        if not self._map[base]:
            return None
        (length,) = self._LENGTH.unpack_from(self._map, base + 1)
        return self._map[base + 3:base + 3 + length].decode("utf-8", "replace")

    def close(self) -> None:
        self._map.close()


@dataclass
class Mirrors:
    urls: Sequence[str]
    client: Client
    stats: dict[str, MirrorStats] = field(default_factory=dict)
    shared: SharedDrops | None = None  # drops shared with the other workers of a pull

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        for url in self.urls:
            self.stats.setdefault(url, MirrorStats())

    def _sync(self) -> None:
        """Take the drops other workers made (the lock is held)."""
        if self.shared is None:
            return
        for slot, url in enumerate(self.urls):
            if self.stats[url].failure is None:
                self.stats[url].failure = self.shared.get(slot)

    def live(self) -> list[str]:
        with self._lock:
            self._sync()
            return [url for url in self.urls if self.stats[url].failure is None]

    def drop(self, url: str, err: SealtreeError) -> None:
        with self._lock:
            if self.stats[url].failure is None:
                self.stats[url].failure = str(err)
                if self.shared is not None:
                    self.shared.set(list(self.urls).index(url), str(err))

    def count(self, url: str, nbytes: int, files: int = 0) -> None:
        with self._lock:
            stats = self.stats[url]
            stats.bytes += nbytes
            stats.files += files

    def add(self, served: dict[str, tuple[int, int, str | None]]) -> None:
        """Count what a worker process's servers did: per server (bytes, files, why dropped)."""
        with self._lock:
            for url, (nbytes, files, failure) in served.items():
                stats = self.stats[url]
                stats.bytes += nbytes
                stats.files += files
                if stats.failure is None:
                    stats.failure = failure

    @property
    def bytes_fetched(self) -> int:
        with self._lock:
            return sum(s.bytes for s in self.stats.values())

    def get_bytes(self, path: str, limit: int) -> tuple[str, bytes]:
        """``path`` from the first live server that serves it (at most ``limit`` bytes)."""
        failures: list[SealtreeError] = []
        for url in self.live():
            try:
                data = self.client.get_bytes(url, path, limit)
            except FetchError as err:
                self.drop(url, err)
                failures.append(err)
                continue
            self.count(url, len(data), 1)
            return url, data
        raise self.failed(path, failures)

    def failed(self, path: str, failures: list[SealtreeError]) -> AllMirrorsFailed:
        with self._lock:
            self._sync()
        dropped = [f"{url}: dropped earlier ({s.failure})" for url, s in self.stats.items()
                   if s.failure is not None and not any(getattr(f, "mirror", None) == url for f in failures)]
        message = "no server could serve it" + (f" ({'; '.join(dropped)})" if dropped else "")
        return AllMirrorsFailed(message, path=path, failures=tuple(failures))

    def refuse_deltas(self, url: str, err: SealtreeError) -> None:
        with self._lock:
            if self.stats[url].delta_failure is None:
                self.stats[url].delta_failure = str(err)

    def live_for_deltas(self) -> list[str]:
        with self._lock:
            self._sync()
            return [url for url in self.urls
                    if self.stats[url].failure is None and self.stats[url].delta_failure is None]

    def get_file(self, path: str, dest: str | None, size: int, new_hasher: Callable[[], Hasher],
                 verify: Verify, on_bytes: Callable[[int], None] | None = None, *, exact: bool = True,
                 delta: bool = False) -> str:
        """Download ``path`` into ``dest`` from the first live server whose bytes ``verify``
        accepts; returns that server.  ``exact``, and ``dest`` None: as ``Client.get_file``.  A
        server that fails is dropped; AllMirrorsFailed when none is left.  ``dest`` holds the
        verified file on return.
        ``delta``: the file is a delta (a full file can replace it): a server that fails is
        asked for no more deltas (``refuse_deltas``) but still serves full files."""
        failures: list[SealtreeError] = []
        for url in self.live_for_deltas() if delta else self.live():
            try:
                self._get_verified(url, path, dest, size, new_hasher, verify, on_bytes, exact)
            except FetchError as err:
                (self.refuse_deltas if delta else self.drop)(url, err)
                failures.append(err)
                continue
            with self._lock:
                self.stats[url].files += 1
            return url
        raise self.failed(path, failures)

    def _get_verified(self, url: str, path: str, dest: str | None, size: int,
                      new_hasher: Callable[[], Hasher], verify: Verify,
                      on_bytes: Callable[[int], None] | None, exact: bool) -> None:
        resumed = dest is not None and os.path.exists(dest)

        def counted(n: int) -> None:
            self.count(url, n)
            if on_bytes is not None:
                on_bytes(n)

        for attempt in range(2):
            hasher, _got = self.client.get_file(url, path, dest, size, new_hasher, counted, exact=exact)
            wrong = verify(hasher, size)
            if wrong is None:
                return
            if dest is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(dest)  # never used, never continued
            if attempt or not resumed:
                raise WrongBytes(wrong, mirror=url, path=path)
