"""The trust policy: is a pack signed by enough trusted, unrevoked keys?  Raises, never a bool.

A signature counts when its key id names a key in the keyring, the key is
not revoked, and the signature verifies over ``DOMAIN + SHA-256(pack)``.
Signatures by unknown or revoked keys, and signatures that do not verify,
do not count (the error says why each one did not); the pack is accepted
when at least ``min_signatures`` (>= 1) count.

The pack is hashed and its signatures checked *before* a byte of it is
parsed; the reader then re-hashes what it parses and refuses the pack if the
file changed in between.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

from cryptography.exceptions import InvalidSignature

from store.errors import SignatureError, UsageError
from store.names import show
from store.record import Frozen

from .keys import KeyId, Keyring
from .reader import PackReader
from .signature import Signature, pack_sha256, signatures_of, signed_message


class Verification(Frozen):
    """A pack digest and the keys whose signatures over it counted (sorted key ids)."""

    __slots__ = ("sha256", "signers")
    _fields = __slots__
    sha256: bytes
    signers: tuple[KeyId, ...]

    def __init__(self, sha256: bytes, signers: tuple[KeyId, ...]) -> None:
        self._set_fields(sha256, signers)


def check_trust(digest: bytes, signatures: Sequence[Signature], keyring: Keyring,
                min_signatures: int = 1) -> Verification:
    """Count the good signatures over pack ``digest``; SignatureError below ``min_signatures``."""
    return Verification(digest, good_signers(signed_message(digest), digest, signatures, keyring,
                                             min_signatures, "pack"))


def good_signers(message: bytes, digest: bytes, signatures: Sequence[Signature], keyring: Keyring,
                 min_signatures: int, what: str) -> tuple[KeyId, ...]:
    """The keys (sorted ids) whose signatures over ``message`` count: trusted, not revoked,
    verifying.  SignatureError, naming the ``what`` of ``digest``, when fewer than
    ``min_signatures`` do.  The one trust rule of packs and of published indexes."""
    if min_signatures < 1:
        raise UsageError(f"at least 1 signature must be required, got {min_signatures}")
    good: list[KeyId] = []
    refused: list[str] = []
    for signature in signatures:
        shown = signature.key_id.hex()
        if signature.key_id in keyring.revoked:
            refused.append(f"{shown}: revoked")
            continue
        key = keyring.keys.get(signature.key_id)
        if key is None:
            refused.append(f"{shown}: not in the keyring")
            continue
        try:
            key.verify(signature.value, message)
        except InvalidSignature:
            refused.append(f"{shown}: does not verify over this {what}")
            continue
        good.append(signature.key_id)
    if len(good) < min_signatures:
        detail = "; ".join(refused) if refused else "no signatures"
        where = f" {show(keyring.path)}" if keyring.path else ""
        raise SignatureError(f"{what} sha256 {digest.hex()}: {len(good)} good signature(s) by keys "
                             f"trusted in keyring{where}, {min_signatures} required ({detail})")
    return tuple(sorted(good))


def verify_signatures(pack_path: str | os.PathLike[str], keyring: Keyring, *,
                      min_signatures: int = 1,
                      sig_path: str | os.PathLike[str] | None = None) -> Verification:
    """Hash the pack file and check its detached signatures (``PACK.sig`` by default)."""
    signatures = signatures_of(pack_path, sig_path)
    return check_trust(pack_sha256(pack_path), signatures, keyring, min_signatures)


@contextlib.contextmanager
def open_verified(pack_path: str | os.PathLike[str], keyring: Keyring, *, min_signatures: int = 1,
                  sig_path: str | os.PathLike[str] | None = None, check_manifest: bool = True
                  ) -> Iterator[tuple[PackReader, Verification]]:
    """Check the signatures, then open the pack bound to the verified digest (its manifest
    checked on opening, or with ``check_manifest`` False when first used: ``PackReader``).

    What the reader yields is only final once ``reader.entries()`` is
    exhausted: that is where a file changed since the signature check is
    caught (PackError).  Raises SignatureError, PackError.
    """
    verification = verify_signatures(pack_path, keyring, min_signatures=min_signatures,
                                     sig_path=sig_path)
    with PackReader(pack_path, expected_sha256=verification.sha256,
                    check_manifest=check_manifest) as reader:
        yield reader, verification


def check_whole(reader: PackReader) -> None:
    """Read the whole pack (``reader.check_data``) and, when it names its image (format 2),
    build the image on the way and check it is the one signed, and (format 3) that its image
    object list is what its manifest gives (PackError otherwise)."""
    if reader.image is None:
        reader.check_data()
    else:
        # Imported here: a deploy opens packs through this module and never builds an image.
        from .image import build_image, check_image  # noqa: PLC0415

        check_image(reader, build_image(reader))


def verify_pack(pack_path: str | os.PathLike[str], keyring: Keyring, *, min_signatures: int = 1,
                sig_path: str | os.PathLike[str] | None = None) -> Verification:
    """Signatures, then the whole pack: header, commit, manifest, every inline file's digest,
    the image it names.

    Returns only when all of it holds; raises SignatureError or PackError.
    """
    with open_verified(pack_path, keyring, min_signatures=min_signatures,
                       sig_path=sig_path) as (reader, verification):
        check_whole(reader)
    return verification
