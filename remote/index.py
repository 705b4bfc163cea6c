"""The site index: which pack is the newest of each ref, until when, signed.

The index is canonical JSON (UTF-8 as ASCII: ``json.dumps`` with sorted keys,
``(",", ":")`` separators, ``ensure_ascii``, no trailing newline)::

    {"expires":E,"format":"sealtree-index","refs":{REF:{"commit":HEX,"sha256":HEX,
     "size":N,"timestamp":T,"version":V},...},"serial":S,"timestamp":P,"version":1}

A reader refuses anything that is not exactly that encoding of a valid
document (so no two byte strings mean the same index).  It is signed like a
pack but never interchangeably: the signed message is ``DOMAIN +
SHA-256(index bytes)`` with a domain of its own, and the signatures are kept
in a ``pack.signature`` signature file (``site.index_signatures``).  A reader
checks, in this order: size, signatures (before a byte is parsed), the
document, then (``remote.pull``) expiry and rollback.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pack.keys import KeyId, Keyring, key_id
from pack.signature import Signature
from pack.verify import good_signers
from store.errors import RefError, SignatureError
from store.ids import HexId
from store.refs import check_ref_name

from .errors import IndexFormatError

FORMAT = "sealtree-index"
VERSION = 1
SUPPORTED_VERSIONS = (1,)
DOMAIN = b"sealtree-index-v1\0"
MAX_INDEX = 16 << 20  # bytes: about 60000 refs
MAX_REFS = 1 << 16
MAX_VERSION_TEXT = 1 << 20  # as store.commits allows
_TOP_KEYS = frozenset({"expires", "format", "refs", "serial", "timestamp", "version"})
_REF_KEYS = frozenset({"commit", "sha256", "size", "timestamp", "version"})
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 63) - 1


@dataclass(frozen=True)
class RefEntry:
    """The newest pack of one ref: its SHA-256 and size, and its commit's id, version and time."""

    sha256: bytes
    size: int
    commit: HexId
    version: str
    timestamp: int


@dataclass(frozen=True)
class SiteIndex:
    """A site's index: ``serial`` grows with every change, ``timestamp`` is when it was
    published and ``expires`` when clients stop trusting it (seconds since the epoch)."""

    serial: int
    timestamp: int
    expires: int
    refs: Mapping[str, RefEntry]


def encode_index(index: SiteIndex) -> bytes:
    """The canonical bytes of ``index``."""
    doc = {
        "expires": index.expires,
        "format": FORMAT,
        "refs": {ref: {"commit": e.commit, "sha256": e.sha256.hex(), "size": e.size,
                       "timestamp": e.timestamp, "version": e.version}
                 for ref, e in index.refs.items()},
        "serial": index.serial,
        "timestamp": index.timestamp,
        "version": VERSION,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _int(value: Any, what: str, where: str, minimum: int = _INT_MIN) -> int:
    if type(value) is not int or not minimum <= value <= _INT_MAX:
        raise IndexFormatError(f"{what} must be a whole number in {minimum}..{_INT_MAX}, "
                               f"got {json.dumps(value)[:80]}", path=where)
    return value


def _hex(value: Any, what: str, where: str) -> str:
    if not isinstance(value, str) or len(value) != 64 or value.strip("0123456789abcdef"):
        raise IndexFormatError(f"{what} must be 64 lowercase hex digits", path=where)
    return value


def _keys(doc: Any, expected: frozenset[str], what: str, where: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise IndexFormatError(f"{what} must be a JSON object", path=where)
    if set(doc) != expected:
        extra = sorted(set(doc) - expected)
        missing = sorted(expected - set(doc))
        raise IndexFormatError(f"{what}: unexpected keys {extra}, missing keys {missing}", path=where)
    return doc


def _ref_entry(ref: str, doc: Any, where: str) -> RefEntry:
    what = f"ref {ref}"
    item = _keys(doc, _REF_KEYS, what, where)
    version = item["version"]
    if not isinstance(version, str) or len(version) > MAX_VERSION_TEXT:
        raise IndexFormatError(f"{what}: version must be a string of at most {MAX_VERSION_TEXT} "
                               f"characters", path=where)
    return RefEntry(bytes.fromhex(_hex(item["sha256"], f"{what}: sha256", where)),
                    _int(item["size"], f"{what}: size", where, 1),
                    HexId(_hex(item["commit"], f"{what}: commit", where)),
                    version, _int(item["timestamp"], f"{what}: timestamp", where))


def decode_index(data: bytes, where: str) -> SiteIndex:
    """Parse and check an index: size, JSON, format, version, fields, canonical encoding.
    Raises IndexFormatError naming ``where``."""
    if len(data) > MAX_INDEX:
        raise IndexFormatError(f"{len(data)} bytes, an index is at most {MAX_INDEX}", path=where)
    try:
        doc = json.loads(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise IndexFormatError(f"not an index (not ASCII JSON: {err})", path=where) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise IndexFormatError(f"not an index (no \"format\": \"{FORMAT}\")", path=where)
    if doc.get("version") not in SUPPORTED_VERSIONS:
        raise IndexFormatError(f"unsupported index version: expected one of {SUPPORTED_VERSIONS}, "
                               f"got {json.dumps(doc.get('version'))[:40]}", path=where)
    top = _keys(doc, _TOP_KEYS, "the index", where)
    refs_doc = top["refs"]
    if not isinstance(refs_doc, dict) or len(refs_doc) > MAX_REFS:
        raise IndexFormatError(f"refs must be a JSON object of at most {MAX_REFS} refs", path=where)
    refs: dict[str, RefEntry] = {}
    for ref, item in refs_doc.items():
        try:
            check_ref_name(ref)
        except RefError as err:
            raise IndexFormatError(f"invalid ref name: {err.detail()}", path=where) from None
        refs[ref] = _ref_entry(ref, item, where)
    index = SiteIndex(_int(top["serial"], "serial", where, 1), _int(top["timestamp"], "timestamp", where),
                      _int(top["expires"], "expires", where), refs)
    if encode_index(index) != data:
        raise IndexFormatError("not in canonical form (sorted keys, no spaces, ASCII, "
                               "no trailing newline)", path=where)
    return index


# -- signatures ----------------------------------------------------------------------------

def signed_message(index_sha256: bytes) -> bytes:
    """What a key signs for the index whose SHA-256 is ``index_sha256``."""
    if len(index_sha256) != 32:
        raise SignatureError(f"an index digest is 32 bytes, got {len(index_sha256)}")
    return DOMAIN + index_sha256


def index_sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def sign_index(data: bytes, private: Ed25519PrivateKey) -> Signature:
    """``private``'s signature over the index bytes ``data``."""
    return Signature(key_id(private.public_key()), private.sign(signed_message(index_sha256(data))))


def check_index_trust(digest: bytes, signatures: Sequence[Signature], keyring: Keyring, *,
                      min_signatures: int = 1, where: str = "") -> tuple[KeyId, ...]:
    """The keys whose signatures over the index ``digest`` count (trusted, not revoked,
    verifying); SignatureError naming ``where`` when fewer than ``min_signatures`` do."""
    try:
        return good_signers(signed_message(digest), digest, signatures, keyring, min_signatures,
                            "index")
    except SignatureError as err:
        if where:
            err.located(where)
        raise
