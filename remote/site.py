"""The layout of a published site: where each file lives, relative to the site's root.

::

    index                          the signed index (remote.index), replaced last
    .index.unsigned                an index staged for offline signing (remote.offline), not live
    signatures/<sha256>.sig        the index's detached signatures, named by the index's SHA-256
    packs/<sha256>.pack            a signed pack, named by the SHA-256 of its bytes
    packs/<sha256>.pack.sig        its detached signatures (pack.signature's file format)
    objects/xx/<62 hex>.file.zst   a large file's content, zstd-compressed (remote.objects),
                                   named by the fs-verity digest of the content
    deltas/<sha256>.pdelta         a pack delta (pack.delta), named by the SHA-256 of its bytes
    deltas/<sha256>.odelta         an object delta (store.object_delta), likewise
    deltas/<sha256>.odeltas        the list of a pack delta's object deltas (remote.index), likewise

Everything but ``index`` is content-addressed and written once; a client
therefore never sees a half-updated site: the index it fetched names only
files that were complete before it appeared.  The same relative paths are
used as URL paths below a site's base URL.
"""

from __future__ import annotations

from store.ids import RawId

INDEX = "index"
STAGED_INDEX = ".index.unsigned"  # publish --unsigned; a dot name: never served by remote.serve
SIGNATURES_DIR = "signatures"
PACKS_DIR = "packs"
OBJECTS_DIR = "objects"
PACK_SUFFIX = ".pack"
SIGNATURE_SUFFIX = ".sig"
OBJECT_SUFFIX = ".file.zst"
DELTAS_DIR = "deltas"
PACK_DELTA_SUFFIX = ".pdelta"
OBJECT_DELTA_SUFFIX = ".odelta"
OBJECT_DELTA_LIST_SUFFIX = ".odeltas"


def index_signatures(index_sha256: bytes) -> str:
    """The signature file of the index whose bytes hash to ``index_sha256``."""
    return f"{SIGNATURES_DIR}/{index_sha256.hex()}{SIGNATURE_SUFFIX}"


def pack(sha256: bytes) -> str:
    """A pack, by the SHA-256 of its bytes."""
    return f"{PACKS_DIR}/{sha256.hex()}{PACK_SUFFIX}"


def pack_signatures(sha256: bytes) -> str:
    return pack(sha256) + SIGNATURE_SUFFIX


def large_object(digest: RawId | bytes) -> str:
    """A large file's compressed content, by its fs-verity digest (content only: no metadata)."""
    h = digest.hex()
    return f"{OBJECTS_DIR}/{h[:2]}/{h[2:]}{OBJECT_SUFFIX}"


def pack_delta(sha256: bytes) -> str:
    """A pack delta, by the SHA-256 of its bytes."""
    return f"{DELTAS_DIR}/{sha256.hex()}{PACK_DELTA_SUFFIX}"


def object_delta(sha256: bytes) -> str:
    """An object delta, by the SHA-256 of its bytes."""
    return f"{DELTAS_DIR}/{sha256.hex()}{OBJECT_DELTA_SUFFIX}"


def object_delta_list(sha256: bytes) -> str:
    """A list of object deltas (``remote.index.encode_object_deltas``), by its SHA-256."""
    return f"{DELTAS_DIR}/{sha256.hex()}{OBJECT_DELTA_LIST_SUFFIX}"
