"""The remotes a repository pulls from, and what it accepted from each.

Each remote has a directory ``REPO/remotes/NAME/``:

``remote.json``  (written atomically)::

    {"format": "sealtree-remote", "version": 1, "name": NAME, "url": URL,
     "mirrors": [URL, ...], "mirrorlist": URL or null, "keys": "/absolute/keyring/dir"}

``accepted.json``  the newest index accepted (rollback protection, written atomically)::

    {"format": "sealtree-accepted-index", "version": 1, "serial": S, "timestamp": T,
     "expires": E, "sha256": HEX}

``index``, ``index.sig``, ``validators.json``  the last accepted index as served (its
bytes and its signature file) and, per server, the validators that server sent with it
(``ETag``, ``Last-Modified``), for conditional GETs of the index::

    {"format": "sealtree-index-validators", "version": 1, "sha256": HEX, "signatures_sha256": HEX,
     "servers": {URL: {"etag": TEXT or null, "last_modified": TEXT or null}, ...}}

These three are a cache, unlike the rest: one that is missing, does not parse or
does not match (the SHA-256 of ``index`` and ``index.sig``, and the index accepted)
is ignored and the index fetched whole.  Nothing in it is trusted: an index
reused after a 304 is checked again like a served one (remote.pull).

A name is 1..64 characters of ``[A-Za-z0-9_.-]``, not starting with ``.`` or
``-``; URLs are ``http://`` or ``https://`` without query or fragment.  A
file that does not parse is an error, never an empty state.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from store.atomic import atomic_write
from store.errors import FormatError, UsageError
from store.repo import Repository

from .errors import RemoteNotFound

REMOTES_DIR = "remotes"  # REPO/remotes/NAME/
REMOTE_FILE = "remote.json"
ACCEPTED_FILE = "accepted.json"
REMOTE_FORMAT = "sealtree-remote"
ACCEPTED_FORMAT = "sealtree-accepted-index"
INDEX_CACHE = "index"
INDEX_CACHE_SIGNATURES = "index.sig"
VALIDATORS_FILE = "validators.json"
VALIDATORS_FORMAT = "sealtree-index-validators"
MAX_VALIDATOR = 1024  # characters of an ETag or Last-Modified kept
VERSION = 1
MAX_FILE = 1 << 20
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class Remote:
    name: str
    url: str
    mirrors: tuple[str, ...]
    keys: str
    mirrorlist: str | None = None  # a URL listing more mirrors, fetched at each pull

    @property
    def servers(self) -> tuple[str, ...]:
        """The servers named in the configuration, in the order they are tried: the URL, then
        the mirrors (a mirrorlist's come after these, see remote.pull)."""
        return tuple(dict.fromkeys((self.url, *self.mirrors)))


@dataclass(frozen=True)
class AcceptedIndex:
    serial: int
    timestamp: int
    expires: int
    sha256: str


def remotes_dir(repo: Repository) -> str:
    return os.path.join(repo.path, REMOTES_DIR)


def remote_dir(repo: Repository, name: str) -> str:
    return os.path.join(remotes_dir(repo), check_name(name))


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise UsageError("invalid remote name: 1 to 64 of A-Z a-z 0-9 _ . -, not starting "
                         "with . or -", path=name)
    return name


MAX_MIRRORLIST = 64 << 10
MAX_MIRRORLIST_URLS = 64


def parse_mirrorlist(data: bytes, where: str) -> list[str]:
    """The URLs of a mirrorlist: UTF-8 text, one URL a line, ``#`` comments, blank lines
    ignored; at most 64 URLs.  FormatError naming ``where`` for anything else."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError("mirrorlist is not UTF-8", path=where) from None
    urls = []
    for number, line in enumerate(text.splitlines(), 1):
        word = line.split("#", 1)[0].strip()
        if not word:
            continue
        try:
            urls.append(check_url(word))
        except UsageError:
            raise FormatError(f"line {number}: not an http:// or https:// URL", path=where) from None
    if len(urls) > MAX_MIRRORLIST_URLS:
        raise FormatError(f"{len(urls)} URLs, a mirrorlist holds at most {MAX_MIRRORLIST_URLS}", path=where)
    return urls


def check_url(url: str) -> str:
    """A base URL a site may be fetched from: http(s), a host, no query, no fragment."""
    try:
        parsed = parse_url(url)
    except LocationParseError:
        raise UsageError("not a URL", path=url) from None
    if parsed.scheme not in ("http", "https") or not parsed.host or parsed.query is not None \
            or parsed.fragment is not None:
        raise UsageError("not an http:// or https:// URL without query or fragment", path=url)
    return url


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_FILE + 1)
    except FileNotFoundError:
        return None
    try:
        if len(raw) > MAX_FILE:
            raise ValueError("too large")
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        return doc
    except ValueError as err:
        raise FormatError(f"does not parse ({err})", path=path) from None


def _dump(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def add_remote(repo: Repository, name: str, url: str, mirrors: Sequence[str], keys: str,
               mirrorlist: str | None = None) -> Remote:
    """Record a new remote; UsageError if one of that name exists or an argument is bad."""
    directory = remote_dir(repo, name)
    remote = Remote(name, check_url(url), tuple(check_url(m) for m in mirrors), os.path.abspath(keys),
                    check_url(mirrorlist) if mirrorlist is not None else None)
    if not os.path.isdir(remote.keys):
        raise UsageError("not a directory (the keyring)", path=keys)
    if os.path.exists(os.path.join(directory, REMOTE_FILE)):
        raise UsageError("a remote of that name exists; remove it first", path=name)
    os.makedirs(directory, exist_ok=True)
    atomic_write(os.path.join(directory, REMOTE_FILE), _dump({
        "format": REMOTE_FORMAT, "version": VERSION, "name": name, "url": remote.url,
        "mirrors": list(remote.mirrors), "mirrorlist": remote.mirrorlist, "keys": remote.keys}))
    return remote


def load_remote(repo: Repository, name: str) -> Remote:
    path = os.path.join(remote_dir(repo, name), REMOTE_FILE)
    doc = _read_json(path)
    if doc is None:
        raise RemoteNotFound("no such remote", path=name)
    try:
        if doc["format"] != REMOTE_FORMAT or doc["version"] != VERSION or doc["name"] != name:
            raise ValueError(f"not a {REMOTE_FORMAT} file of version {VERSION} for {name}")
        mirrors = doc["mirrors"]
        if not isinstance(mirrors, list) or not all(isinstance(m, str) for m in mirrors) \
                or not isinstance(doc["url"], str) or not isinstance(doc["keys"], str):
            raise ValueError("url, mirrors or keys of the wrong type")
        mirrorlist = doc.get("mirrorlist")
        if mirrorlist is not None and not isinstance(mirrorlist, str):
            raise ValueError("mirrorlist of the wrong type")
        return Remote(name, check_url(doc["url"]), tuple(check_url(m) for m in mirrors), doc["keys"],
                      check_url(mirrorlist) if mirrorlist is not None else None)
    except (KeyError, ValueError, UsageError) as err:
        raise FormatError(f"does not parse ({err})", path=path) from None


def list_remotes(repo: Repository) -> list[Remote]:
    try:
        names = sorted(os.listdir(remotes_dir(repo)))
    except FileNotFoundError:
        return []
    return [load_remote(repo, name) for name in names
            if _NAME.fullmatch(name) and os.path.exists(os.path.join(remotes_dir(repo), name, REMOTE_FILE))]


def remove_remote(repo: Repository, name: str) -> None:
    """Forget a remote and what was accepted from it (its rollback state too)."""
    directory = remote_dir(repo, name)
    if not os.path.exists(os.path.join(directory, REMOTE_FILE)):
        raise RemoteNotFound("no such remote", path=name)
    trash = os.path.join(remotes_dir(repo), f".trash-{name}-{os.getpid()}")
    os.rename(directory, trash)
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(trash)


def load_accepted(repo: Repository, name: str) -> AcceptedIndex | None:
    path = os.path.join(remote_dir(repo, name), ACCEPTED_FILE)
    doc = _read_json(path)
    if doc is None:
        return None
    try:
        if doc["format"] != ACCEPTED_FORMAT or doc["version"] != VERSION:
            raise ValueError(f"not a {ACCEPTED_FORMAT} file of version {VERSION}")
        values = [doc[k] for k in ("serial", "timestamp", "expires")]
        if not all(type(v) is int for v in values) or not isinstance(doc["sha256"], str):
            raise ValueError("a field of the wrong type")
        return AcceptedIndex(values[0], values[1], values[2], doc["sha256"])
    except (KeyError, ValueError) as err:
        raise FormatError(f"does not parse ({err}); refusing to guess what was accepted",
                          path=path) from None


def save_accepted(repo: Repository, name: str, accepted: AcceptedIndex) -> None:
    atomic_write(os.path.join(remote_dir(repo, name), ACCEPTED_FILE), _dump({
        "format": ACCEPTED_FORMAT, "version": VERSION, "serial": accepted.serial,
        "timestamp": accepted.timestamp, "expires": accepted.expires, "sha256": accepted.sha256}))


@dataclass(frozen=True)
class Validators:
    """What a server sent with an index, to ask it next time whether the index changed."""

    etag: str | None
    last_modified: str | None


@dataclass(frozen=True)
class CachedIndex:
    """The last accepted index as served: bytes, signature file, SHA-256 (hex) and each
    server's validators for it."""

    data: bytes
    signatures: bytes
    sha256: str
    servers: dict[str, Validators]


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_bytes(path: str, limit: int) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError:
        return None
    return data if len(data) <= limit else None


def _validator(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and 0 < len(value) <= MAX_VALIDATOR
                         and value.isprintable() and value.isascii()):
        return value
    raise ValueError("a validator of the wrong type")


def load_cached_index(repo: Repository, name: str, index_limit: int, signatures_limit: int
                      ) -> CachedIndex | None:
    """The cached index of remote ``name``, or None when there is none or it is not whole and
    consistent (see the module docstring: a cache, never an error)."""
    directory = remote_dir(repo, name)
    try:
        doc = _read_json(os.path.join(directory, VALIDATORS_FILE))
    except FormatError:
        return None
    data = _read_bytes(os.path.join(directory, INDEX_CACHE), index_limit)
    signatures = _read_bytes(os.path.join(directory, INDEX_CACHE_SIGNATURES), signatures_limit)
    if doc is None or data is None or signatures is None:
        return None
    try:
        if doc["format"] != VALIDATORS_FORMAT or doc["version"] != VERSION \
                or doc["sha256"] != _sha256_hex(data) \
                or doc["signatures_sha256"] != _sha256_hex(signatures):
            return None
        servers = {url: Validators(_validator(v["etag"]), _validator(v["last_modified"]))
                   for url, v in doc["servers"].items() if isinstance(url, str)}
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return CachedIndex(data, signatures, doc["sha256"], servers)


def save_cached_index(repo: Repository, name: str, cached: CachedIndex) -> None:
    """Write the cache: the index and its signature file, then the validators that name their
    digests (so that a crash between leaves a cache that is ignored, never a wrong one)."""
    directory = remote_dir(repo, name)
    atomic_write(os.path.join(directory, INDEX_CACHE_SIGNATURES), cached.signatures, durable=False)
    atomic_write(os.path.join(directory, INDEX_CACHE), cached.data, durable=False)
    atomic_write(os.path.join(directory, VALIDATORS_FILE), _dump({
        "format": VALIDATORS_FORMAT, "version": VERSION, "sha256": _sha256_hex(cached.data),
        "signatures_sha256": _sha256_hex(cached.signatures),
        "servers": {url: {"etag": v.etag, "last_modified": v.last_modified}
                    for url, v in sorted(cached.servers.items())}}), durable=False)
