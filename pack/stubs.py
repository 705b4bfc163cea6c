"""A large file's metacopy stub xattrs: what overlayfs needs to find and verify its object.

In the metacopy layout (docs/FORMAT.md, section 9, "The metacopy layout") every
large file of a tree is a **stub**: a sparse file with the file's own mode,
owner and xattrs plus two overlay xattrs, spelled here and nowhere else:

- ``trusted.overlay.redirect``: the object's path inside the data-only lower
  layer (the repository's ``objects/``), absolute: ``/xx/<62 hex>.<meta key>.file``;
- ``trusted.overlay.metacopy``: ``00 24 00 01`` + the 32-byte fs-verity
  SHA-256 digest (``struct ovl_metacopy``: version 0, length 36, flags 0,
  digest algorithm 1 = FS_VERITY_HASH_ALG_SHA256).

Both follow from a manifest row (digest and metadata) alone, so the tmpfs of a
deployment (overlay.unpack_tmpfs) and the EROFS image of a pack (pack.image,
built by the vendor and by the device alike) write the same bytes.
"""

from __future__ import annotations

from store.ids import RawId
from store.model import Meta
from store.objects import relative_path

# overlayfs interprets these xattrs on its layers; a tree carrying them would not show as
# committed (and could hide or redirect files): recipe 1 (pack.image) and deploy refuse it.
OVERLAY_XATTR_PREFIXES = (b"trusted.overlay.", b"user.overlay.")
METACOPY_XATTR = b"trusted.overlay.metacopy"
REDIRECT_XATTR = b"trusted.overlay.redirect"
OVERLAY_METACOPY_VERSION = 0
FS_VERITY_HASH_ALG_SHA256 = 1


def metacopy_value(digest: bytes) -> bytes:
    """``trusted.overlay.metacopy`` for an fs-verity SHA-256 ``digest``: version, length,
    flags, algorithm, digest (the kernel's ``struct ovl_metacopy``)."""
    if len(digest) != 32:
        raise ValueError(f"an fs-verity SHA-256 digest has 32 bytes, got {len(digest)}")
    return bytes([OVERLAY_METACOPY_VERSION, 4 + len(digest), 0, FS_VERITY_HASH_ALG_SHA256]) + digest


def object_redirect(digest: RawId, meta: Meta) -> bytes:
    """``trusted.overlay.redirect`` of a stub whose object is the file object (``digest``,
    ``meta``): its path below ``objects/``, absolute (``/xx/<62 hex>.<meta key>.file``)."""
    return b"/" + relative_path("file", digest, meta).encode("ascii")
