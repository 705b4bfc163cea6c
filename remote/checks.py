"""What a fetched file must be before anything uses it: the signed index, a pack's digest,
a pack against the index.  Shared by ``pull`` and ``mirror``."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass

from pack.keys import Keyring
from pack.reader import PackReader
from pack.signature import MAX_SIGNATURES, decode_signatures
from store.errors import SignatureError
from store.ids import to_hex

from . import site
from .config import CachedIndex
from .errors import FetchError, IndexExpired, Mismatch
from .http import Hasher
from .index import MAX_INDEX, RefEntry, SiteIndex, check_index_trust, decode_index, index_sha256
from .mirrors import Mirrors

MAX_SIGNATURE_FILE = 12 + MAX_SIGNATURES * 96  # pack.signature's header and entries


@dataclass(frozen=True)
class SignedIndex:
    """An index as a server served it: parsed, its bytes, their SHA-256, its signature file."""

    index: SiteIndex
    data: bytes
    sha256: bytes
    signatures: bytes
    where: str  # its URL, for messages
    etag: str | None = None  # the validators the server sent with it
    last_modified: str | None = None
    not_modified: bool = False  # the server answered 304: this is the cached index, checked again


def fetch_signed_index(mirrors: Mirrors, url: str, keyring: Keyring | None, min_signatures: int = 1,
                       cached: CachedIndex | None = None) -> SignedIndex:
    """The index of server ``url``: at most MAX_INDEX bytes, its signature file, enough good
    signatures by ``keyring`` (checked before the index is parsed; None: not checked), then
    parsed.  With ``cached`` holding validators of this server, the GET is conditional, and
    on 304 the cached index and signature file take the place of the served ones, checked
    all the same.  Raises FetchError, SignatureError, IndexFormatError."""
    where = f"{url.rstrip('/')}/{site.INDEX}"
    known = cached.servers.get(url) if cached is not None else None
    if cached is not None and known is not None:
        answer = mirrors.client.get_conditional(url, site.INDEX, MAX_INDEX, known.etag, known.last_modified)
    else:
        answer = mirrors.client.get_conditional(url, site.INDEX, MAX_INDEX)
    if answer.data is None and cached is not None:  # 304: the index we hold is this server's
        mirrors.count(url, 0, 1)
        data, raw = cached.data, cached.signatures
        digest = index_sha256(data)
        sig_where = f"{where} (not modified: the copy kept in the repository)"
    else:
        data = answer.data or b""
        mirrors.count(url, len(data), 1)
        digest = index_sha256(data)
        sig_path = site.index_signatures(digest)
        try:
            raw = mirrors.client.get_bytes(url, sig_path, MAX_SIGNATURE_FILE)
        except FetchError as err:
            if err.status == 404:
                raise SignatureError(f"the index is not signed (no {sig_path})", path=where) from None
            raise
        mirrors.count(url, len(raw), 1)
        sig_where = f"{url.rstrip('/')}/{sig_path}"
    signatures = decode_signatures(raw, sig_where)
    if keyring is not None:
        check_index_trust(digest, signatures, keyring, min_signatures=min_signatures, where=where)
    return SignedIndex(decode_index(data, where), data, digest, raw, where, answer.etag,
                       answer.last_modified, answer.data is None)


def check_not_expired(signed: SignedIndex, now: int) -> None:
    if signed.index.expires <= now:
        raise IndexExpired(f"the index expired at {signed.index.expires} (now {now}): the site is "
                           f"stale or frozen", path=signed.where)


def sha256_check(expected: bytes) -> Callable[[Hasher, int], str | None]:
    """A check for ``Mirrors.get_file``: the file's SHA-256 is ``expected`` (a pack)."""
    def verify(hasher: Hasher, size: int) -> str | None:
        got = hasher.digest()
        if not hmac.compare_digest(got, expected):
            return f"SHA-256 {got.hex()}, the signed index says {expected.hex()}"
        return None
    return verify


def check_pack_matches(reader: PackReader, ref: str, entry: RefEntry, where: str) -> None:
    """Mismatch unless the pack is the one the index names for ``ref`` (mix-and-match)."""
    claims = (ref, entry.commit, entry.version, entry.timestamp)
    got = (reader.ref, to_hex(reader.commit_id), reader.commit.version, reader.commit.timestamp)
    if claims != got:
        raise Mismatch(f"the pack is of ref {got[0]} commit {got[1]} version {got[2] or '(none)'} "
                       f"timestamp {got[3]}; the index says ref {ref} commit {entry.commit} version "
                       f"{entry.version or '(none)'} timestamp {entry.timestamp}", path=where)
