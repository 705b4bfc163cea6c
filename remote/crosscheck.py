"""Cross-checked downloads: no single server serves a whole file.

With ``--cross-check N`` each file is cut into N byte ranges of (nearly) equal
size, each fetched from a different server chosen at random among the live
ones (fewer once servers have been dropped, but at least 2).  When the
assembled file fails its digest, each range is fetched again from every other
live server in turn; a range whose replacement makes the file
verify was a lie, and its server is named (``WrongBytes``) and dropped.  When
no single replacement helps (several liars), the file is fetched whole from
one server after another, as without cross-checks.

Ranges are written in place into the partial file; a cross-checked download
always starts from nothing (no resume).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
from collections.abc import Callable

from store.errors import SealtreeError

from .errors import FetchError, RemoteError, WrongBytes
from .http import CHUNK, Hasher
from .mirrors import Mirrors, Verify


def split(size: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` (start, length) ranges covering ``size`` bytes (fewer when size < parts)."""
    parts = max(1, min(parts, size))
    base, extra = divmod(size, parts)
    ranges, start = [], 0
    for i in range(parts):
        length = base + (1 if i < extra else 0)
        ranges.append((start, length))
        start += length
    return ranges


def _hash(path: str, new_hasher: Callable[[], Hasher]) -> Hasher:
    hasher = new_hasher()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            hasher.update(chunk)
    return hasher


def _same(a: str, b: str, start: int, length: int) -> bool:
    with open(a, "rb") as x, open(b, "rb") as y:
        x.seek(start)
        y.seek(start)
        left = length
        while left:
            n = min(CHUNK, left)
            if x.read(n) != y.read(n):
                return False
            left -= n
    return True


def _copy_range(source: str, dest: str, start: int, length: int) -> None:
    with open(source, "rb") as src, open(dest, "r+b") as out:
        src.seek(start)
        out.seek(start)
        left = length
        while left:
            chunk = src.read(min(CHUNK, left))
            out.write(chunk)
            left -= len(chunk)


def get_file_cross_checked(mirrors: Mirrors, path: str, dest: str, size: int,
                           new_hasher: Callable[[], Hasher], verify: Verify, servers: int,
                           rng: random.Random, on_bytes: Callable[[int], None] | None = None, *,
                           exact: bool = True) -> None:
    """Download ``path`` into ``dest`` as ranges over ``servers`` servers (see the module
    docstring); ``dest`` holds the verified file on return.  Not ``exact``: ``size`` is the
    most the file may have, and one server, at random, is asked its length (a lie about it
    is found out as a lie about bytes is)."""
    live = mirrors.live()
    if len(live) < 2:
        raise RemoteError(f"cross-checking needs 2 servers or more, {len(live)} left "
                          f"({', '.join(live) or 'none'})", path=path)
    cap = size
    if not exact:
        asked = rng.choice(live)
        try:
            length = mirrors.client.head_length(asked, path)
        except FetchError as err:
            mirrors.drop(asked, err)
            raise
        if not 0 < length <= size:
            lie = WrongBytes(f"states a length of {length} bytes, at most {size} possible",
                             mirror=asked, path=path)
            mirrors.drop(asked, lie)
            raise lie
        size = length
    ranges = split(size, min(servers, len(live)))
    chosen = rng.sample(live, len(ranges))

    def counted(url: str) -> Callable[[int], None]:
        def count(n: int) -> None:
            mirrors.count(url, n)
            if on_bytes is not None:
                on_bytes(n)
        return count

    with open(dest, "wb") as out:
        out.truncate(size)
        for (start, length), url in zip(ranges, chosen, strict=True):
            try:
                mirrors.client.get_range_into(url, path, start, length, out, counted(url))
            except FetchError as err:
                mirrors.drop(url, err)
                raise
    if verify(_hash(dest, new_hasher), size) is None:
        return
    _find_liar(mirrors, path, dest, size, new_hasher, verify, ranges, chosen, counted)
    if not os.path.exists(dest):  # no single range was the lie
        _whole(mirrors, path, dest, cap, exact, new_hasher, verify)


def _find_liar(mirrors: Mirrors, path: str, dest: str, size: int, new_hasher: Callable[[], Hasher],
               verify: Verify, ranges: list[tuple[int, int]], chosen: list[str],
               counted: Callable[[str], Callable[[int], None]]) -> None:
    other = dest + ".other"
    saved = dest + ".served"
    try:
        for (start, length), suspect in zip(ranges, chosen, strict=True):
            for url in mirrors.live():
                if url == suspect:
                    continue
                try:
                    with open(other, "wb") as out:
                        mirrors.client.get_range_into(url, path, start, length, out, counted(url))
                except FetchError as err:
                    mirrors.drop(url, err)
                    continue
                if _same(other, dest, start, length):
                    break  # two servers agree on this range: look at the next one
                shutil.copyfile(dest, saved)
                _copy_range(other, dest, start, length)
                if verify(_hash(dest, new_hasher), size) is None:
                    lie = WrongBytes(f"bytes {start}-{start + length - 1} differ from what {url} served "
                                     f"for them, and only with its bytes does the file match its "
                                     f"signed digest (cross-check)", mirror=suspect, path=path)
                    mirrors.drop(suspect, lie)
                    return
                os.replace(saved, dest)
        os.unlink(dest)
    finally:
        for leftover in (other, saved):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)


def _whole(mirrors: Mirrors, path: str, dest: str, size: int, exact: bool,
           new_hasher: Callable[[], Hasher], verify: Verify) -> None:
    """No single range was the lie: fetch the whole file from one server after another."""
    failures: list[SealtreeError] = []
    for url in mirrors.live():
        try:
            hasher, _got = mirrors.client.get_file(url, path, dest, size, new_hasher, exact=exact)
            wrong = verify(hasher, size)
            if wrong is None:
                return
            raise WrongBytes(wrong, mirror=url, path=path)
        except FetchError as err:
            mirrors.drop(url, err)
            failures.append(err)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dest)
    raise mirrors.failed(path, failures)
