"""A pack's EROFS image: the tree of the metacopy layout's lower layer, built by recipe 1.

Recipe 1 (docs/FORMAT.md, section 7, "The image identity") lays out exactly what
``overlay.unpack_tmpfs`` puts in a metacopy deployment's tmpfs:

- the root directory with the commit's root metadata; every directory, symlink
  and inline file of the manifest with its metadata (and its bytes);
- every large file as a metacopy stub: a sparse file of the file's size with no
  data, its own metadata, and ``trusted.overlay.redirect`` /
  ``trusted.overlay.metacopy`` (pack.stubs) naming the object of the first large
  file of that digest in manifest order, and its fs-verity digest;
- files with the same (digest, metadata, inline or large) are one inode.

A tree with an xattr overlayfs would interpret (``pack.stubs.OVERLAY_XATTR_PREFIXES``)
has no recipe-1 image: ``ImageTree`` refuses it (PackError), so ``pack build`` and the
import of a pack that names an image refuse it, and a deploy that mounts an image never
scans the manifest for them.

``store.erofs`` writes the tree (the same tree always gives the same bytes), so the
vendor's ``pack build`` and every device get the same image: the pack signs its
identity (``pack.format.ImageRef``: recipe, size, fs-verity digest) and the device
builds the image from the verified pack (``pack import``, ``store_image``) and
checks it against that, never downloading it.  Any change to what recipe 1 or
``store.erofs`` writes changes the digest of every signed pack: it needs a new
recipe number.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable, Sequence

from store import erofs, kverity
from store.atomic import atomic_file
from store.errors import PackError
from store.fsverity import digest_bytes
from store.ids import RawId
from store.model import Kind, Meta
from store.names import show
from store.objects import ObjectStore

from .format import ImageObject, ImageRef
from .manifest import ManifestEntry
from .reader import PackReader, named
from .stubs import (
    METACOPY_XATTR,
    OVERLAY_XATTR_PREFIXES,
    REDIRECT_XATTR,
    metacopy_value,
    object_redirect,
)

RECIPE = 1
IMAGE_MODE = 0o444  # as tree and commit objects


def _node(kind: erofs.Kind, meta: Meta, data: bytes = b"") -> erofs.Node:
    return erofs.Node(kind, meta.mode, meta.uid, meta.gid, meta.xattrs, data)


def _check_xattrs(meta: Meta, path: bytes) -> None:
    for name, _value in meta.xattrs:
        if name.startswith(OVERLAY_XATTR_PREFIXES):
            raise PackError(f"xattr {show(name)} at {show(path)} would be interpreted by "
                            f"overlayfs: such a tree cannot be deployed and has no image")


class ImageTree:
    """The recipe-1 tree of a pack, fed its manifest rows in order (with each inline file's
    bytes, None for the others) as ``PackReader.entries`` yields them: a pass that also
    imports or checks the pack builds the image's tree on the way."""

    def __init__(self, root_meta: Meta) -> None:
        _check_xattrs(root_meta, b"/")
        self.root = _node(erofs.DIR, root_meta)
        self._dirs: dict[bytes, erofs.Node] = {b"": self.root}
        self._files: dict[tuple[RawId, Meta, bool], erofs.Node] = {}
        self._redirects: dict[RawId, tuple[bytes, bytes]] = {}
        # the objects the stubs redirect to, in manifest order: what a version-3 pack lists
        self.objects: list[ImageObject] = []

    def add(self, row: ManifestEntry, data: bytes | None) -> None:
        """Add the next manifest row (with its bytes when it is an inline file).  PackError
        (naming the path) for an xattr overlayfs would interpret."""
        entry = row.entry
        if entry.meta.xattrs:
            _check_xattrs(entry.meta, row.path)
        parent, _, name = row.path.rpartition(b"/")
        if entry.kind is Kind.DIR:
            node = self._dirs[row.path] = _node(erofs.DIR, entry.meta)
        elif entry.kind is Kind.SYMLINK:
            node = _node(erofs.SYMLINK, entry.meta, data=entry.target)
        else:
            key = (entry.digest, entry.meta, data is None)
            found = self._files.get(key)
            if found is None:
                found = self._files[key] = self._file(entry.digest, entry.meta, entry.size, data)
            node = found
        self._dirs[parent].entries[name] = node

    def _file(self, digest: RawId, meta: Meta, size: int, data: bytes | None) -> erofs.Node:
        if data is not None:
            return _node(erofs.FILE, meta, data=data)
        # A stub: its content is the object of the first large file with this digest.
        stub = self._redirects.get(digest)
        if stub is None:
            stub = self._redirects[digest] = (object_redirect(digest, meta),
                                              metacopy_value(digest))
            self.objects.append(ImageObject(digest, bytes.fromhex(meta.object_key()), size))
        xattrs = (*meta.xattrs, (REDIRECT_XATTR, stub[0]), (METACOPY_XATTR, stub[1]))
        return erofs.Node(erofs.FILE, meta.mode, meta.uid, meta.gid, xattrs, size=size)

    def image(self) -> bytes:
        """The image's bytes.  PackError (naming the path) for a tree EROFS cannot hold."""
        try:
            return erofs.image_bytes(self.root)
        except erofs.ImageError as err:
            raise PackError(f"the tree cannot be an EROFS image: {err.detail()} at "
                            f"{show(err.path or b'/')}") from err


def image_tree(root_meta: Meta, rows: Iterable[tuple[ManifestEntry, bytes | None]]
               ) -> erofs.Node:
    """The recipe-1 tree of the manifest ``rows`` (in order, with inline files' bytes)."""
    tree = ImageTree(root_meta)
    for row, data in rows:
        tree.add(row, data)
    return tree.root


def image_ref(image: bytes) -> ImageRef:
    """The identity a pack signs for ``image``: recipe, size, fs-verity digest."""
    return ImageRef(RECIPE, len(image), image_digest(image))


def image_digest(image: bytes) -> bytes:
    """The fs-verity SHA-256 digest of ``image`` (its object's id, section 2)."""
    return digest_bytes(image)


def build_image(reader: PackReader) -> bytes:
    """The recipe-1 image of the pack ``reader`` (one pass over its data; a pack found bad
    on the way, its image object list included, raises PackError).  Not checked against
    ``reader.image``: ``check_image``."""
    tree = ImageTree(reader.commit.root_meta)
    for row, data in reader.entries():
        tree.add(row, data)
    check_image_objects(reader, tree.objects)
    return tree.image()


def _shown(objects: Sequence[ImageObject], i: int) -> str:
    if i >= len(objects):
        return "nothing"
    return f"{objects[i].relative_path()} of {objects[i].size} bytes"


def check_image_objects(reader: PackReader, objects: Sequence[ImageObject]) -> None:
    """PackError naming the pack unless ``objects``, what its manifest gives (``ImageTree.objects``
    after a pass over every row), is the image object list it signs (format version 3; an
    older pack has none to check)."""
    signed = reader.image_objects
    if signed is None or tuple(objects) == signed:
        return
    i = next((i for i, (a, b) in enumerate(zip(signed, objects, strict=False)) if a != b),
             min(len(signed), len(objects)))
    raise PackError(f"its image object list ({len(signed)} objects) is not what its manifest "
                    f"gives ({len(objects)}): first difference at index {i}: the pack lists "
                    f"{_shown(signed, i)}, the manifest gives {_shown(objects, i)}",
                    path=reader.name)


def check_image(reader: PackReader, image: bytes) -> RawId:
    """The digest of ``image`` if it is the one ``reader`` signs; PackError naming the pack
    otherwise, or when the pack names no image (version 1)."""
    want = reader.image
    if want is None:
        raise PackError("the pack names no image (format version 1)", path=reader.name)
    got = image_digest(image)
    if want.recipe != RECIPE or want.size != len(image) or not hmac.compare_digest(got, want.digest):
        raise PackError(f"the image built from it is {len(image)} bytes with fs-verity digest "
                        f"{got.hex()}, the pack signs {want.size} bytes with "
                        f"{want.digest.hex()} (recipe {want.recipe})", path=reader.name)
    return RawId(got)


def store_image(objects: ObjectStore, reader: PackReader) -> str:
    """The image object of the pack ``reader``: built, checked against the signed identity
    and written (atomically, mode 0444, then fs-verity enabled where the filesystem can, as
    on large objects) unless it is present: one present is returned as it is (the caller
    checks its digest by its verification policy).  Returns its path.  PackError naming the pack
    when it names no image (version 1) or the image built is not the one it signs."""
    want = reader.image
    if want is None:
        raise PackError("the pack names no image (format version 1)", path=reader.name)
    path = objects.image_path(RawId(want.digest))
    if os.path.exists(path):
        return path
    with named(reader.name):
        image = build_image(reader)
        check_image(reader, image)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_file(path, IMAGE_MODE) as handle:
        handle.write(image)
    kverity.enable_where_supported(path)
    return path
