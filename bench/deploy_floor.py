"""Bench-only: the least any Python ``deploy --mount`` must do, as a floor under its time.

    PYTHON bench/deploy_floor.py PACK KEYDIR

Run with the interpreter sealtree is installed for (the suite uses its virtual
environment's, as the deploy rows do), this starts that interpreter, imports
the library every deploy needs before it may trust a byte of the pack
(``cryptography``'s Ed25519; not ``zstandard``, which decodes the pack's frames:
a metacopy deploy of a format-3 pack decodes none), reads the keyring's ``*.pub``
files, and checks ``PACK.sig`` against the SHA-256 of the pack file (docs/FORMAT.md
section 7, "Signatures, keys, trust").  Exit status 0 and ``verified KEYID`` when
one signature by a trusted key verifies; 1 otherwise.

Nothing else: no manifest decode, no object check, no tmpfs, no mount, no
state, and none of sealtree's own modules (this imports nothing from it).  A
deploy that keeps its guarantees does all of this and more, so its time cannot
fall below this row's: set against ``ostree checkout`` in the same run, the
ratio says how much of a target such as issue 17's (the metacopy estimate at
most 0.5x ``ostree checkout``) is left for the deploy's own work.
"""

from __future__ import annotations

import base64
import hashlib
import os
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

DOMAIN = b"sealtree-pack-v1\0"  # pack.signature.DOMAIN
SIG_MAGIC = b"SEALSIG\0"
SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")  # Ed25519 SubjectPublicKeyInfo


def public_keys(keydir: str) -> dict[bytes, Ed25519PublicKey]:
    """Key id (SHA-256 of the raw key) -> key, for every ``*.pub`` in ``keydir``."""
    keys = {}
    for name in sorted(os.listdir(keydir)):
        if not name.endswith(".pub") or name.startswith("."):
            continue
        with open(os.path.join(keydir, name), "rb") as handle:
            lines = handle.read().split(b"\n")
        der = base64.b64decode(b"".join(line for line in lines if not line.startswith(b"-----")))
        if len(der) != 44 or not der.startswith(SPKI_PREFIX):
            raise SystemExit(f"{name}: not an Ed25519 public key")
        raw = der[len(SPKI_PREFIX):]
        keys[hashlib.sha256(raw).digest()] = Ed25519PublicKey.from_public_bytes(raw)
    return keys


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    pack, keydir = argv
    keys = public_keys(keydir)
    sha = hashlib.sha256()
    with open(pack, "rb") as handle:
        while chunk := handle.read(1 << 20):
            sha.update(chunk)
    message = DOMAIN + sha.digest()
    with open(pack + ".sig", "rb") as handle:
        data = handle.read()
    if data[:8] != SIG_MAGIC or (len(data) - 12) % 96:
        print("not a signature file", file=sys.stderr)
        return 1
    for offset in range(12, len(data), 96):
        kid, value = data[offset:offset + 32], data[offset + 32:offset + 96]
        if kid in keys:
            try:
                keys[kid].verify(value, message)
            except InvalidSignature:
                continue
            print(f"verified {kid.hex()}")
            return 0
    print("no signature by a trusted key verifies", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
