"""Ed25519 keys, key ids, and the keyring a verifier trusts.

Key files are PEM, as ``openssl genpkey -algorithm ed25519`` writes them:
the private key PKCS#8 unencrypted (mode 0600), the public key
SubjectPublicKeyInfo.  A key id is the SHA-256 of the raw 32-byte public key.

Public keys are read here, not by ``cryptography``'s PEM loader: an Ed25519
SubjectPublicKeyInfo is a fixed 12-byte DER prefix and the 32-byte key
(RFC 8410), so the verifier checks that exact shape and does not import the
serialization machinery (some 20 modules, a good part of a deploy's or a
boot's start-up).  Private keys and writing keys still use it.

A keyring is a directory: every ``*.pub`` file in it is a trusted public key,
and the file ``revoked`` lists key ids (64 hex digits, one a line, ``#``
comments) that are refused even when their key file is present.  A keyring
file that cannot be read as an Ed25519 public key is an error, not skipped:
a verifier fails closed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from typing import NewType

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from store.atomic import atomic_write
from store.errors import SignatureError, UsageError
from store.names import show
from store.record import Frozen

KeyId = NewType("KeyId", bytes)  # raw 32 bytes; shown as hex

REVOKED_FILE = "revoked"
PUBLIC_SUFFIX = ".pub"
MAX_KEY_FILE = 64 << 10
_HEX_ID = re.compile(r"[0-9a-f]{64}")
# SEQUENCE { SEQUENCE { OID 1.3.101.112 (Ed25519) }, BIT STRING (0 unused bits) of 32 bytes }
_ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
_PEM_PUBLIC = re.compile(rb"-----BEGIN PUBLIC KEY-----\r?\n([A-Za-z0-9+/=\r\n]*?)-----END PUBLIC KEY-----")


def raw_key_id(raw: bytes) -> KeyId:
    """The key id of a raw 32-byte public key: its SHA-256."""
    return KeyId(hashlib.sha256(raw).digest())


def key_id(public: Ed25519PublicKey) -> KeyId:
    """The SHA-256 of the raw public key."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - see the docstring

    return raw_key_id(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def public_pem(public: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - see the docstring

    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def generate_key(path: str | os.PathLike[str]) -> KeyId:
    """Write a new private key to ``path`` (mode 0600) and its public key to ``path.pub``.

    Refuses to overwrite either file.  Returns the key id.
    """
    path = os.fspath(path)
    pub_path = path + PUBLIC_SUFFIX
    for existing in (path, pub_path):
        if os.path.lexists(existing):
            raise UsageError("already exists; not overwriting a key", path=existing)
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - see the docstring

    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    atomic_write(path, pem, 0o600)
    atomic_write(pub_path, public_pem(private.public_key()), 0o644)
    return key_id(private.public_key())


def _read_key_file(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_KEY_FILE + 1)
    except OSError as err:
        raise SignatureError(f"cannot read key: {err.strerror}", path=path) from err
    if len(data) > MAX_KEY_FILE:
        raise SignatureError("too large for a key file", path=path)
    return data


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM (PKCS#8) file; SignatureError if it is not one."""
    from cryptography.exceptions import UnsupportedAlgorithm  # noqa: PLC0415 - see the docstring
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    path = os.fspath(path)
    data = _read_key_file(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise SignatureError(f"not an unencrypted PEM private key ({err})", path=path) from err
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError("not an Ed25519 key", path=path)
    return key


def parse_public_raw(data: bytes, where: str) -> bytes:
    """The raw 32-byte key of a PEM Ed25519 public key (one ``PUBLIC KEY`` block)."""
    blocks = _PEM_PUBLIC.findall(data)
    if len(blocks) != 1:
        found = "no" if not blocks else f"{len(blocks)}"
        raise SignatureError(f"not a PEM public key ({found} PUBLIC KEY blocks)", path=where)
    try:
        der = base64.b64decode(b"".join(blocks[0].split()), validate=True)
    except binascii.Error as err:
        raise SignatureError(f"not a PEM public key (bad base64: {err})", path=where) from err
    if len(der) != len(_ED25519_SPKI_PREFIX) + 32 or not der.startswith(_ED25519_SPKI_PREFIX):
        raise SignatureError("not an Ed25519 public key", path=where)
    return der[len(_ED25519_SPKI_PREFIX):]


def _key_from_raw(raw: bytes, where: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as err:
        raise SignatureError(f"not a valid Ed25519 public key ({err})", path=where) from err


def parse_public_key(data: bytes, where: str) -> Ed25519PublicKey:
    return _key_from_raw(parse_public_raw(data, where), where)


def _load_public(path: str) -> tuple[bytes, Ed25519PublicKey]:
    raw = parse_public_raw(_read_key_file(path), path)
    return raw, _key_from_raw(raw, path)


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file; SignatureError if it is not one."""
    return _load_public(os.fspath(path))[1]


def parse_revoked(text: str, where: str) -> frozenset[KeyId]:
    revoked = set()
    for number, line in enumerate(text.splitlines(), 1):
        word = line.split("#", 1)[0].strip().lower()
        if not word:
            continue
        if not _HEX_ID.fullmatch(word):
            raise SignatureError(f"line {number}: not a key id (64 hex digits): {show(word)}",
                                 path=where)
        revoked.add(KeyId(bytes.fromhex(word)))
    return frozenset(revoked)


class Keyring(Frozen):
    """Trusted public keys by key id, and the ids refused whatever the keys say."""

    __slots__ = ("keys", "revoked", "path")
    _fields = __slots__
    keys: dict[KeyId, Ed25519PublicKey]
    revoked: frozenset[KeyId]
    path: str

    def __init__(self, keys: dict[KeyId, Ed25519PublicKey], revoked: frozenset[KeyId] = frozenset(),
                 path: str = "") -> None:
        self._set_fields(keys, revoked, path)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Keyring:
        """Read every ``*.pub`` file and the ``revoked`` list of ``directory``."""
        directory = os.fspath(directory)
        try:
            names = sorted(os.listdir(directory))
        except OSError as err:
            raise SignatureError(f"cannot read keyring: {err.strerror}",
                                 path=directory) from err
        keys: dict[KeyId, Ed25519PublicKey] = {}
        for name in names:
            if name.endswith(PUBLIC_SUFFIX) and not name.startswith("."):
                raw, key = _load_public(os.path.join(directory, name))
                keys[raw_key_id(raw)] = key
        revoked: frozenset[KeyId] = frozenset()
        revoked_path = os.path.join(directory, REVOKED_FILE)
        if os.path.lexists(revoked_path):
            raw = _read_key_file(revoked_path)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise SignatureError("not UTF-8", path=revoked_path) from err
            revoked = parse_revoked(text, revoked_path)
        return cls(keys, revoked, directory)
