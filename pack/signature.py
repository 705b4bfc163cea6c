"""Detached pack signatures: what is signed, the ``PACK.sig`` file, signing and adding.

The signed message is ``DOMAIN + SHA-256(pack bytes)``: the domain prefix
keeps a pack signature from ever being valid for anything else a key signs.

A signature file (version 1), little-endian::

    magic "SEALSIG\\0" | version u16 | count u16
    | count x (key id[32] (SHA-256 of the raw public key) | Ed25519 signature[64])

entries sorted by key id, one per key.  Parsing checks length, magic,
version, count, exact size, then order; any failure is a ``SignatureError``.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from store.atomic import atomic_write
from store.errors import SignatureError
from store.record import Frozen

from .keys import KeyId, key_id
from .reader import check_pack_file, layout_sha256

DOMAIN = b"sealtree-pack-v1\0"
MAGIC = b"SEALSIG\0"
VERSION = 1
MAX_SIGNATURES = 256
SIGNATURE_SIZE = 64
SUFFIX = ".sig"
HASH_CHUNK = 1 << 20

# magic, format version, signature count
_HEADER = struct.Struct("<8sHH")
# key id, Ed25519 signature
_ENTRY = struct.Struct("<32s64s")


class Signature(Frozen):
    __slots__ = ("key_id", "value")
    _fields = __slots__
    key_id: KeyId
    value: bytes  # 64 bytes

    def __init__(self, key_id: KeyId, value: bytes) -> None:
        self._set_fields(key_id, value)


def signature_path(pack_path: str | os.PathLike[str]) -> str:
    """Where a pack's detached signatures live: ``PACK.sig``."""
    return os.fspath(pack_path) + SUFFIX


def pack_sha256(path: str | os.PathLike[str]) -> bytes:
    """The SHA-256 of a pack file's bytes, streamed."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            sha.update(chunk)
    return sha.digest()


def signed_message(digest: bytes) -> bytes:
    """What a key signs for the pack whose SHA-256 is ``digest``."""
    if len(digest) != 32:
        raise SignatureError(f"a pack digest is 32 bytes, got {len(digest)}")
    return DOMAIN + digest


def sign(digest: bytes, private: Ed25519PrivateKey) -> Signature:
    return Signature(key_id(private.public_key()), private.sign(signed_message(digest)))


def check_one(digest: bytes, signature: bytes, public: Ed25519PublicKey) -> None:
    """Raise SignatureError unless ``signature`` is ``public``'s over the pack ``digest``."""
    if len(signature) != SIGNATURE_SIZE:
        raise SignatureError(f"an Ed25519 signature is {SIGNATURE_SIZE} bytes, got {len(signature)}")
    try:
        public.verify(signature, signed_message(digest))
    except InvalidSignature:
        raise SignatureError(f"signature by key {key_id(public).hex()} does not match this pack "
                             f"(sha256 {digest.hex()})") from None


# -- the signature file ---------------------------------------------------------------------

def encode_signatures(signatures: Iterable[Signature]) -> bytes:
    ordered = sorted({s.key_id: s for s in signatures}.values(), key=lambda s: s.key_id)
    if len(ordered) > MAX_SIGNATURES:
        raise SignatureError(f"at most {MAX_SIGNATURES} signatures, got {len(ordered)}")
    return _HEADER.pack(MAGIC, VERSION, len(ordered)) + b"".join(
        _ENTRY.pack(s.key_id, s.value) for s in ordered)


def decode_signatures(data: bytes, where: str) -> list[Signature]:
    """Parse a signature file: length, magic, version, count, size, order."""
    if len(data) < _HEADER.size:
        raise SignatureError(f"truncated signature file ({len(data)} bytes)", path=where)
    magic, version, count = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise SignatureError(f"bad magic: expected {MAGIC!r}, got {magic!r}", path=where)
    if version != VERSION:
        raise SignatureError(f"unsupported signature file version: expected {VERSION}, "
                             f"got {version}", path=where)
    if count > MAX_SIGNATURES:
        raise SignatureError(f"{count} signatures exceed {MAX_SIGNATURES}", path=where)
    expected = _HEADER.size + count * _ENTRY.size
    if len(data) != expected:
        raise SignatureError(f"{len(data)} bytes, expected {expected} for {count} "
                             f"signatures (truncated or extended)", path=where)
    out: list[Signature] = []
    for i in range(count):
        kid, value = _ENTRY.unpack_from(data, _HEADER.size + i * _ENTRY.size)
        if out and kid <= out[-1].key_id:
            raise SignatureError(f"signature {i} not sorted by key id or duplicated",
                                 path=where)
        out.append(Signature(KeyId(kid), value))
    return out


def read_signatures(path: str | os.PathLike[str], *, missing_ok: bool = False) -> list[Signature]:
    """The signatures in ``path``; a missing file is SignatureError (or [] with ``missing_ok``)."""
    path = os.fspath(path)
    limit = _HEADER.size + MAX_SIGNATURES * _ENTRY.size
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        if missing_ok:
            return []
        raise SignatureError("no signature file: the pack is not signed", path=path) from None
    except OSError as err:
        raise SignatureError(f"cannot read signatures: {err.strerror}", path=path) from err
    return decode_signatures(data, path)


def signatures_of(pack_path: str | os.PathLike[str], sig_path: str | os.PathLike[str] | None = None
                  ) -> list[Signature]:
    """The detached signatures of the pack at ``pack_path`` (from ``sig_path``, default
    ``PACK.sig``).  A missing pack is said to be missing, not unsigned (PackError)."""
    pack_path = os.fspath(pack_path)
    check_pack_file(pack_path)
    return read_signatures(sig_path if sig_path is not None else signature_path(pack_path))


def write_signatures(path: str | os.PathLike[str], signatures: Iterable[Signature]) -> None:
    atomic_write(path, encode_signatures(signatures))


def add_signature(pack_path: str | os.PathLike[str], signature: bytes, public: Ed25519PublicKey, *,
                  sig_path: str | os.PathLike[str] | None = None) -> KeyId:
    """Check ``signature`` against the pack and ``public``, then add it to the pack's signature
    file (replacing an older one by the same key).  Returns the key id; SignatureError if the
    signature does not verify, PackError (naming the file) if it is not laid out as a pack."""
    digest = layout_sha256(pack_path)
    check_one(digest, signature, public)
    return _store(pack_path, sig_path, Signature(key_id(public), signature))


def sign_pack(pack_path: str | os.PathLike[str], private: Ed25519PrivateKey, *,
              sig_path: str | os.PathLike[str] | None = None) -> KeyId:
    """Sign the pack with ``private`` (online signing) and add the signature; return the key id.
    A file that is not laid out as a pack is refused (PackError naming it): see
    ``reader.layout_sha256``, which also computes the digest signed."""
    made = sign(layout_sha256(pack_path), private)
    return _store(pack_path, sig_path, made)


def _store(pack_path: str | os.PathLike[str], sig_path: str | os.PathLike[str] | None,
           signature: Signature) -> KeyId:
    path = os.fspath(sig_path) if sig_path is not None else signature_path(pack_path)
    existing = [s for s in read_signatures(path, missing_ok=True) if s.key_id != signature.key_id]
    write_signatures(path, [*existing, signature])
    return signature.key_id


def parse_signature_blob(data: bytes, where: str) -> bytes:
    """A signature a signing service returned: 64 raw bytes, or 128 hex digits (whitespace ok)."""
    if len(data) == SIGNATURE_SIZE:
        return data
    text = data.strip()
    if len(text) == 2 * SIGNATURE_SIZE:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    raise SignatureError(f"not an Ed25519 signature (64 raw bytes or 128 hex digits; "
                         f"got {len(data)} bytes)", path=where)
