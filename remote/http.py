"""The HTTP client: urllib3's pooled, keep-alive connections with timeouts and retries,
bounded reads, resumable downloads and a deadline per request.

Every read is bounded: a file of known size is never read past that size
(endless data), a file of unknown size (the index, signature files) never past
a cap.  A download must progress at ``min_rate`` on average after a grace
period, else it is given up (slow retrieval) and the caller tries another
server.  Downloads go to a partial file; one that exists is continued with a
``Range`` request, and restarted when the server ignores or refuses the range.
Any failure of the server is a ``FetchError`` naming the server and the file;
local I/O errors stay ``OSError``.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Protocol

import urllib3
from urllib3.exceptions import HTTPError
from urllib3.util import Retry, Timeout, parse_url

from .errors import FetchError, WrongBytes

CHUNK = 256 << 10
USER_AGENT = "sealtree/0.1 (urllib3)"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
# what remote.site names: nothing to encode, no dot segment to remove
_SITE_PATH = re.compile(r"(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._/-]*")
_Route = tuple[str, "int | None", str, str]  # host, port, scheme, request path of a base URL


class Hasher(Protocol):
    """hashlib's SHA-256 or store.fsverity.VerityHasher."""

    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...


@dataclass(frozen=True)
class HttpPolicy:
    """How patient the client is.  A request may take ``grace`` seconds plus its size at
    ``min_rate`` bytes a second; each socket operation at most its timeout."""

    connect_timeout: float = 10.0
    read_timeout: float = 20.0
    grace: float = 20.0
    min_rate: float = 64 << 10
    retries: int = 2
    connections: int = 8

    def deadline(self, size: int) -> float:
        """Seconds a request for ``size`` bytes may take before it counts as too slow."""
        return self.grace + size / self.min_rate


@dataclass(frozen=True)
class Conditional:
    """The answer to a conditional GET: the body (None: 304 Not Modified) and the server's
    validators for it, as it sent them (``ETag``, ``Last-Modified``; None when absent)."""

    data: bytes | None
    etag: str | None
    last_modified: str | None


def join(base: str, path: str) -> str:
    """The URL of site path ``path`` below the site's base URL."""
    return base.rstrip("/") + "/" + path


class Client:
    """A pool of HTTP(S) connections shared by every request of one pull (thread-safe)."""

    def __init__(self, policy: HttpPolicy | None = None) -> None:
        self.policy = policy or HttpPolicy()
        retries = Retry(total=self.policy.retries, connect=self.policy.retries, read=0,
                        status=self.policy.retries, redirect=3, backoff_factor=0.2,
                        status_forcelist=(429, 500, 502, 503, 504), raise_on_status=False)
        self._headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        self.pool = urllib3.PoolManager(
            num_pools=16, maxsize=self.policy.connections, retries=retries,
            timeout=Timeout(connect=self.policy.connect_timeout, read=self.policy.read_timeout),
            headers=self._headers)
        self._routes: dict[str, _Route | None] = {}

    def close(self) -> None:
        self.pool.clear()

    def _timeout(self, deadline: float) -> Timeout:
        left = max(0.1, deadline - time.monotonic())
        return Timeout(connect=min(self.policy.connect_timeout, left),
                       read=min(self.policy.read_timeout, left))

    def _open(self, base: str, path: str, deadline: float,
              headers: dict[str, str] | None = None) -> urllib3.BaseHTTPResponse:
        """The response to a GET, its body not read.  A site path (``_SITE_PATH``) goes to the
        server's connection pool directly: a pull sends thousands of these, and the pool
        manager's per-request work (parsing the URL, finding the pool) was a fifth of a
        worker's time; a redirect, or any other path, takes the pool manager's way."""
        sent = self._headers if headers is None else {**self._headers, **headers}
        timeout = self._timeout(deadline)
        try:
            route = self._route(base) if _SITE_PATH.fullmatch(path) else None
            if route is not None:
                host, port, scheme, prefix = route
                pool = self.pool.connection_from_host(host, port=port, scheme=scheme)
                response = pool.urlopen("GET", prefix + path, headers=sent, preload_content=False,
                                        decode_content=False, timeout=timeout, redirect=False,
                                        assert_same_host=False)
                if not response.get_redirect_location():
                    return response
                response.drain_conn()
            return self.pool.request("GET", join(base, path), headers=sent, preload_content=False,
                                     decode_content=False, timeout=timeout)
        except HTTPError as err:
            raise FetchError(f"cannot fetch: {_reason(err)}", mirror=base, path=path) from None

    def _route(self, base: str) -> _Route | None:
        """Host, port, scheme and request path (ending with ``/``) of a server's base URL,
        parsed once; None for what only the pool manager handles."""
        if base not in self._routes:
            url = parse_url(join(base, ""))
            host, scheme = url.host, url.scheme
            ok = scheme in ("http", "https") and host and not url.query and not url.fragment
            self._routes[base] = (host, url.port, scheme, url.request_uri) \
                if ok and host is not None and scheme is not None else None
        return self._routes[base]

    def get_bytes(self, base: str, path: str, limit: int) -> bytes:
        """The whole file at ``path``, at most ``limit`` bytes (more is refused unread)."""
        data = self.get_conditional(base, path, limit).data
        if data is None:  # cannot happen: without validators only a 200 is accepted
            raise FetchError("HTTP status 304 without a condition", mirror=base, path=path, status=304)
        return data

    def get_conditional(self, base: str, path: str, limit: int, etag: str | None = None,
                        last_modified: str | None = None) -> Conditional:
        """``get_bytes`` with ``If-None-Match: etag`` and ``If-Modified-Since: last_modified``
        when given: ``data`` None when the server answers 304 Not Modified.  The validators
        the server sent (or repeated with its 304) come back with the answer."""
        headers = {}
        if etag is not None:
            headers["If-None-Match"] = etag
        if last_modified is not None:
            headers["If-Modified-Since"] = last_modified
        started = time.monotonic()
        response = self._open(base, path, started + self.policy.deadline(limit), headers or None)
        try:
            validators = (response.headers.get("ETag"), response.headers.get("Last-Modified"))
            if response.status == 304 and headers:
                return Conditional(None, validators[0] or etag, validators[1] or last_modified)
            if response.status != 200:
                raise FetchError(f"HTTP status {response.status}", mirror=base, path=path,
                                 status=response.status)
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > limit:
                raise WrongBytes(f"{length} bytes, more than the {limit} allowed", mirror=base, path=path)
            # what the server announced sets the pace; without it, the cap does
            expected = int(length) if length is not None and length.isdigit() else limit
            deadline = started + self.policy.deadline(expected)
            data = _read(response, limit + 1, deadline, base, path, None)
            if len(data) > limit:
                raise WrongBytes(f"more than the {limit} bytes allowed", mirror=base, path=path)
            return Conditional(data, *validators)
        finally:
            _finish(response)

    def get_file(self, base: str, path: str, dest: str | None, size: int, new_hasher: Callable[[], Hasher],
                 on_bytes: Callable[[int], None] | None = None, *, exact: bool = True
                 ) -> tuple[Hasher, int]:
        """Download ``path`` into ``dest``, continuing what ``dest`` holds.

        ``exact``: the file has ``size`` bytes; otherwise ``size`` is the most it may have
        (a compressed object).  Returns a hasher fed every byte of ``dest`` in order, and how
        many bytes came over the network.  Never reads past ``size``.  FetchError on a failure
        of the server; what was received is kept in ``dest`` for the next attempt.  ``dest``
        None: the bytes go to the hasher only (a small file: nothing is kept to continue).
        """
        hasher = new_hasher()
        have = _existing(dest, size, hasher) if dest is not None else 0
        if exact and have == size:
            return hasher, 0
        deadline = time.monotonic() + self.policy.deadline(size - have)
        headers = {"Range": f"bytes={have}-"} if have else None
        response = self._open(base, path, deadline, headers)
        try:
            status = response.status
            if have and status == 416 and dest is not None:  # (have: there is a file)
                total = _unsatisfied_total(response)
                if not exact and total == have:  # what we have is the whole file
                    return hasher, 0
                response.close()  # our partial file is not a prefix of theirs: start over
                os.truncate(dest, 0)
                return self.get_file(base, path, dest, size, new_hasher, on_bytes, exact=exact)
            if have and status == 200:  # the server ignores ranges: start over
                have = 0
                hasher = new_hasher()
            elif have and status == 206:
                _check_range(response, have, size, exact, base, path)
            elif status != 200:
                raise FetchError(f"HTTP status {status}", mirror=base, path=path, status=status)
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit():
                announced = int(length) + have if status == 206 else int(length)
                if announced > size or (exact and announced != size):
                    what = "the signed size is" if exact else "at most"
                    raise WrongBytes(f"the server has {announced} bytes, {what} {size}",
                                     mirror=base, path=path)
            with open(dest, "r+b" if have else "wb") if dest is not None else _Nowhere() as out:
                out.seek(have)
                out.truncate()
                got = _read_into(response, out, size - have + (0 if exact else 1), deadline, base, path,
                                 hasher, on_bytes)
            if not exact and have + got > size:
                raise WrongBytes(f"more than the {size} bytes a compressed object may have",
                                 mirror=base, path=path)
            if exact and got < size - have:
                raise FetchError(f"the connection ended after {have + got} of {size} bytes",
                                 mirror=base, path=path)
            return hasher, got
        finally:
            _finish(response)

    def head_length(self, base: str, path: str) -> int:
        """The length a server states for ``path`` (HEAD, ``Content-Length``)."""
        deadline = time.monotonic() + self.policy.grace
        try:
            response = self.pool.request("HEAD", join(base, path), timeout=self._timeout(deadline))
        except HTTPError as err:
            raise FetchError(f"cannot fetch: {_reason(err)}", mirror=base, path=path) from None
        length = response.headers.get("Content-Length", "")
        if response.status != 200:
            raise FetchError(f"HTTP status {response.status}", mirror=base, path=path,
                             status=response.status)
        if not length.isdigit():
            raise FetchError("no Content-Length in the answer to HEAD", mirror=base, path=path)
        return int(length)

    def get_range_into(self, base: str, path: str, start: int, length: int, out: BinaryIO,
                       on_bytes: Callable[[int], None] | None = None) -> None:
        """Bytes ``start`` .. ``start + length - 1`` of ``path`` written at that offset of ``out``;
        the server must answer 206 with exactly that range.  Never reads past it."""
        deadline = time.monotonic() + self.policy.deadline(length)
        response = self._open(base, path, deadline, {"Range": f"bytes={start}-{start + length - 1}"})
        try:
            if response.status != 206:
                raise FetchError(f"HTTP status {response.status} for bytes {start}-{start + length - 1}",
                                 mirror=base, path=path, status=response.status)
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != start or int(match.group(2)) != start + length - 1:
                raise WrongBytes(f"answered a request for bytes {start}-{start + length - 1} with "
                                 f"Content-Range {response.headers.get('Content-Range')!r}",
                                 mirror=base, path=path)
            out.seek(start)
            got = _read_into(response, out, length, deadline, base, path, NoHash(), on_bytes)
            if got != length:
                raise FetchError(f"the connection ended after {got} of {length} bytes of the range "
                                 f"at {start}", mirror=base, path=path)
        finally:
            _finish(response)


class _Writer(Protocol):
    def write(self, data: bytes, /) -> object: ...


class _Nowhere:
    """Where the bytes of a download that keeps no file go (its hasher has them)."""

    def __enter__(self) -> _Nowhere:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def write(self, data: bytes, /) -> int:
        return len(data)

    def seek(self, offset: int, /) -> int:
        return 0

    def truncate(self) -> int:
        return 0


class NoHash:
    """A hasher that hashes nothing (the file is checked as a whole afterwards)."""

    def update(self, data: bytes, /) -> None:
        pass

    def digest(self) -> bytes:
        return b""


def _finish(response: urllib3.BaseHTTPResponse) -> None:
    """Give the connection back to the pool when the response was read to its end; else close
    it: draining what we did not want to read is what the caps are there to prevent."""
    if isinstance(response, urllib3.HTTPResponse) and response.isclosed():
        response.release_conn()
    else:
        response.close()


def _reason(err: HTTPError) -> str:
    """What went wrong, without urllib3's repetition of the pool and URL (MaxRetryError wraps
    the cause in ``reason``, whose text starts with the connection object)."""
    reason = getattr(err, "reason", None)
    if reason is None:
        return f"{type(err).__name__} ({err})"
    return str(reason).split(": ", 1)[-1]


def _existing(dest: str, size: int, hasher: Hasher) -> int:
    """How much of ``dest`` can be continued (fed to ``hasher``); 0 when there is none."""
    try:
        have = os.stat(dest).st_size
    except FileNotFoundError:
        return 0
    if have > size:
        os.truncate(dest, 0)
        return 0
    with open(dest, "rb") as handle:
        while chunk := handle.read(CHUNK):
            hasher.update(chunk)
    return have


def _unsatisfied_total(response: urllib3.BaseHTTPResponse) -> int | None:
    """The file's length a 416 answer states (``Content-Range: bytes */N``), if it does."""
    match = re.fullmatch(r"bytes \*/(\d+)", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _check_range(response: urllib3.BaseHTTPResponse, have: int, size: int, exact: bool, base: str,
                 path: str) -> None:
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
    total = None if not match or match.group(3) == "*" else int(match.group(3))
    if not match or int(match.group(1)) != have or int(match.group(2)) >= size or (
            total is not None and (total != size if exact else total > size)):
        raise WrongBytes(f"answered a request for bytes {have}- of {size} with "
                         f"Content-Range {response.headers.get('Content-Range')!r}",
                         mirror=base, path=path)


def _read(response: urllib3.BaseHTTPResponse, limit: int, deadline: float, base: str, path: str,
          on_bytes: Callable[[int], None] | None) -> bytes:
    parts: list[bytes] = []
    left = limit
    while left > 0:
        chunk = _chunk(response, min(CHUNK, left), deadline, base, path)
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
        if on_bytes is not None:
            on_bytes(len(chunk))
    return b"".join(parts)


def _read_into(response: urllib3.BaseHTTPResponse, out: _Writer, limit: int, deadline: float, base: str,
               path: str, hasher: Hasher, on_bytes: Callable[[int], None] | None) -> int:
    write = out.write
    got = 0
    while got < limit:
        chunk = _chunk(response, min(CHUNK, limit - got), deadline, base, path)
        if not chunk:
            break
        write(chunk)
        hasher.update(chunk)
        got += len(chunk)
        if on_bytes is not None:
            on_bytes(len(chunk))
    return got


def _chunk(response: urllib3.BaseHTTPResponse, amount: int, deadline: float, base: str, path: str) -> bytes:
    if time.monotonic() > deadline:
        raise FetchError("too slow: gave up (the server sends below the minimum rate)",
                         mirror=base, path=path)
    try:
        # urllib3 2 has read1 (what is buffered, at most amount); Debian 12's urllib3 1.26
        # (the devices' python3-urllib3) only read, which returns at most amount too
        read1 = getattr(response, "read1", None)
        data: bytes = read1(amount) if read1 is not None else response.read(amount)
        return data
    except HTTPError as err:
        raise FetchError(f"cannot fetch: {_reason(err)}", mirror=base, path=path) from None
