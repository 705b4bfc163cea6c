"""The site index: which pack is the newest of each ref, until when, signed.

The index is canonical JSON (UTF-8 as ASCII: ``json.dumps`` with sorted keys,
``(",", ":")`` separators, ``ensure_ascii``, no trailing newline)::

    {"expires":E,"format":"sealtree-index","refs":{REF:{"commit":HEX,"sha256":HEX,
     "size":N,"timestamp":T,"version":V[,"history":[...]][,"deltas":[...]]},...},
     "serial":S,"timestamp":P,"version":1}

``history`` (previous releases, newest first) and ``deltas`` (pack deltas to this
release, each with its object deltas) are written only when not empty; see
docs/FORMAT.md section 11.

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

import zstandard
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
_REF_OPTIONAL = frozenset({"deltas", "history"})  # written only when not empty
_HISTORY_KEYS = frozenset({"commit", "sha256", "size"})
_DELTA_KEYS = frozenset({"from", "sha256", "size"})
_DELTA_OPTIONAL = frozenset({"objects"})  # written only when the release has object deltas
_LIST_KEYS = frozenset({"sha256", "size"})
_OBJECT_LIST_TOP = frozenset({"format", "objects", "version"})
OBJECT_LIST_FORMAT = "sealtree-object-deltas"
MAX_OBJECT_LIST = 16 << 20  # decompressed
OBJECT_LIST_LEVEL = 19
_LIST_WINDOW = 1 << 23
_OBJECT_DELTA_KEYS = frozenset({"from", "full", "sha256", "size", "to"})
MAX_HISTORY = 16  # previous releases remembered per ref (for publish --deltas-from)
MAX_DELTAS = 16  # pack deltas listed per ref
MAX_OBJECT_DELTAS = 1 << 16  # object deltas listed per pack delta
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 63) - 1


@dataclass(frozen=True)
class Release:
    """A previous release of a ref: its pack's SHA-256 and size, and its commit."""

    sha256: bytes
    size: int
    commit: HexId


@dataclass(frozen=True)
class ObjectDelta:
    """A delta file (``site.delta``: SHA-256 and size of its bytes) that rebuilds the large
    object ``to`` from ``from_`` (fs-verity digests); ``full`` is the size of ``to``'s
    compressed site object, what fetching it whole costs."""

    from_: bytes
    to: bytes
    sha256: bytes
    size: int
    full: int


@dataclass(frozen=True)
class FileRef:
    """A file of the site by the SHA-256 and size of its bytes."""

    sha256: bytes
    size: int


@dataclass(frozen=True)
class PackDelta:
    """A delta file that rebuilds a ref's newest pack from the pack whose SHA-256 is
    ``from_``; ``objects``: the list of object deltas from that release's large objects to
    the new ones (``site.object_delta_list``; kept out of the index, which every poll
    fetches, and fetched only by a device that holds the source)."""

    from_: bytes
    sha256: bytes
    size: int
    objects: FileRef | None = None


@dataclass(frozen=True)
class RefEntry:
    """The newest pack of one ref: its SHA-256 and size, and its commit's id, version and time;
    the previous releases (newest first) and the deltas from some of them to this one."""

    sha256: bytes
    size: int
    commit: HexId
    version: str
    timestamp: int
    history: tuple[Release, ...] = ()
    deltas: tuple[PackDelta, ...] = ()


@dataclass(frozen=True)
class SiteIndex:
    """A site's index: ``serial`` grows with every change, ``timestamp`` is when it was
    published and ``expires`` when clients stop trusting it (seconds since the epoch)."""

    serial: int
    timestamp: int
    expires: int
    refs: Mapping[str, RefEntry]


def _encode_ref(e: RefEntry) -> dict[str, Any]:
    doc: dict[str, Any] = {"commit": e.commit, "sha256": e.sha256.hex(), "size": e.size,
                           "timestamp": e.timestamp, "version": e.version}
    if e.history:
        doc["history"] = [{"commit": r.commit, "sha256": r.sha256.hex(), "size": r.size}
                          for r in e.history]
    if e.deltas:
        doc["deltas"] = [_encode_delta(d) for d in e.deltas]
    return doc


def _encode_delta(d: PackDelta) -> dict[str, Any]:
    doc: dict[str, Any] = {"from": d.from_.hex(), "sha256": d.sha256.hex(), "size": d.size}
    if d.objects is not None:
        doc["objects"] = {"sha256": d.objects.sha256.hex(), "size": d.objects.size}
    return doc


def _canonical(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def encode_object_deltas(deltas: Sequence[ObjectDelta]) -> bytes:
    """The bytes of an object-delta list file: one zstd frame (hex digests compress to
    about half) of the list's canonical JSON."""
    doc = {"format": OBJECT_LIST_FORMAT, "version": VERSION,
           "objects": [{"from": o.from_.hex(), "to": o.to.hex(), "full": o.full,
                        "sha256": o.sha256.hex(), "size": o.size} for o in deltas]}
    cctx = zstandard.ZstdCompressor(level=OBJECT_LIST_LEVEL, write_checksum=False)
    return cctx.compress(_canonical(doc))


def decode_object_deltas(data: bytes, where: str) -> tuple[ObjectDelta, ...]:
    """Parse an object-delta list file (its SHA-256 checked by the caller against the index);
    IndexFormatError naming ``where`` unless it is the canonical encoding of a valid list."""
    try:
        dctx = zstandard.ZstdDecompressor(max_window_size=_LIST_WINDOW)
        with dctx.stream_reader(data) as reader:
            text = reader.read(MAX_OBJECT_LIST + 1)
    except zstandard.ZstdError as err:
        raise IndexFormatError(f"not an object-delta list (not zstd: {err})", path=where) from None
    if len(text) > MAX_OBJECT_LIST:
        raise IndexFormatError(f"an object-delta list is at most {MAX_OBJECT_LIST} bytes "
                               f"decompressed", path=where)
    try:
        doc = json.loads(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise IndexFormatError(f"not an object-delta list (not ASCII JSON: {err})", path=where) from None
    top = _keys(doc, _OBJECT_LIST_TOP, "the object-delta list", where)
    if top["format"] != OBJECT_LIST_FORMAT or top["version"] not in SUPPORTED_VERSIONS:
        raise IndexFormatError(f"not an object-delta list of a supported version "
                               f"(\"format\": \"{OBJECT_LIST_FORMAT}\", \"version\": 1)", path=where)
    objects = top["objects"]
    if not isinstance(objects, list) or len(objects) > MAX_OBJECT_DELTAS:
        raise IndexFormatError(f"objects must be a JSON array of at most {MAX_OBJECT_DELTAS} items",
                               path=where)
    deltas = tuple(_object_delta(o, "object delta", where) for o in objects)
    if _canonical(top) != text:
        raise IndexFormatError("not in canonical form (sorted keys, no spaces, ASCII, "
                               "no trailing newline)", path=where)
    return deltas


def encode_index(index: SiteIndex) -> bytes:
    """The canonical bytes of ``index``."""
    doc = {
        "expires": index.expires,
        "format": FORMAT,
        "refs": {ref: _encode_ref(e) for ref, e in index.refs.items()},
        "serial": index.serial,
        "timestamp": index.timestamp,
        "version": VERSION,
    }
    return _canonical(doc)


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


def _list(value: Any, limit: int, what: str, where: str) -> list[Any]:
    if not isinstance(value, list) or not 1 <= len(value) <= limit:
        raise IndexFormatError(f"{what} must be a JSON array of 1 to {limit} items", path=where)
    return value


def _release(doc: Any, what: str, where: str) -> Release:
    item = _keys(doc, _HISTORY_KEYS, what, where)
    return Release(bytes.fromhex(_hex(item["sha256"], f"{what}: sha256", where)),
                   _int(item["size"], f"{what}: size", where, 1),
                   HexId(_hex(item["commit"], f"{what}: commit", where)))


def _object_delta(doc: Any, what: str, where: str) -> ObjectDelta:
    item = _keys(doc, _OBJECT_DELTA_KEYS, what, where)
    return ObjectDelta(bytes.fromhex(_hex(item["from"], f"{what}: from", where)),
                       bytes.fromhex(_hex(item["to"], f"{what}: to", where)),
                       bytes.fromhex(_hex(item["sha256"], f"{what}: sha256", where)),
                       _int(item["size"], f"{what}: size", where, 1),
                       _int(item["full"], f"{what}: full", where, 1))


def _pack_delta(doc: Any, what: str, where: str) -> PackDelta:
    if not isinstance(doc, dict):
        raise IndexFormatError(f"{what} must be a JSON object", path=where)
    item = _keys(doc, _DELTA_KEYS | (_DELTA_OPTIONAL & set(doc)), what, where)
    objects = None
    if "objects" in item:
        listed = _keys(item["objects"], _LIST_KEYS, f"{what}: objects", where)
        objects = FileRef(bytes.fromhex(_hex(listed["sha256"], f"{what}: objects: sha256", where)),
                          _int(listed["size"], f"{what}: objects: size", where, 1))
    return PackDelta(bytes.fromhex(_hex(item["from"], f"{what}: from", where)),
                     bytes.fromhex(_hex(item["sha256"], f"{what}: sha256", where)),
                     _int(item["size"], f"{what}: size", where, 1), objects)


def _ref_entry(ref: str, doc: Any, where: str) -> RefEntry:
    what = f"ref {ref}"
    if not isinstance(doc, dict):
        raise IndexFormatError(f"{what} must be a JSON object", path=where)
    optional = _REF_OPTIONAL & set(doc)
    item = _keys(doc, _REF_KEYS | optional, what, where)
    history = tuple(_release(r, f"{what}: history", where)
                    for r in _list(item["history"], MAX_HISTORY, f"{what}: history", where)
                    ) if "history" in item else ()
    deltas = tuple(_pack_delta(d, f"{what}: delta", where)
                   for d in _list(item["deltas"], MAX_DELTAS, f"{what}: deltas", where)
                   ) if "deltas" in item else ()
    version = item["version"]
    if not isinstance(version, str) or len(version) > MAX_VERSION_TEXT:
        raise IndexFormatError(f"{what}: version must be a string of at most {MAX_VERSION_TEXT} "
                               f"characters", path=where)
    return RefEntry(bytes.fromhex(_hex(item["sha256"], f"{what}: sha256", where)),
                    _int(item["size"], f"{what}: size", where, 1),
                    HexId(_hex(item["commit"], f"{what}: commit", where)),
                    version, _int(item["timestamp"], f"{what}: timestamp", where), history, deltas)


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
