"""A deployment's signed pack, opened the way deploy, mount and the boot verifier all need it.

``trusted_keyring`` loads the keyring the caller names (never one recorded in
the repository: whoever can write the disk could point that at their own
key); ``open_deployment_pack`` checks the kept pack's signatures against it and
that it is the pack of the deployment's commit, without decoding its manifest;
``deployment_objects`` resolves the layout and lists the large objects to check:
in the metacopy layout of a pack that lists its image's objects (format 3), that
signed list, so that the manifest is never decoded (the image is the tree, and
recipe 1 refuses a tree with an xattr overlayfs would interpret); otherwise the
manifest's large files (``large_files``: what the farm links), once the tree is
found to carry no such xattr.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

from pack.format import ImageObject
from pack.keys import Keyring
from pack.manifest import Manifest
from pack.reader import PackReader
from pack.stubs import OVERLAY_XATTR_PREFIXES
from pack.verify import Verification, open_verified
from store.errors import DeployError, NoKeyring, PackError, PackNotKept, SignatureError, VerificationError
from store.ids import RawId, to_hex
from store.model import Kind
from store.names import show
from store.objects import ObjectStore

from .layout import SYSTEM_KEYRING
from .metacopy import Layout, choose_layout
from .objcheck import LargeFile


class OverlayXattr(DeployError):
    """The tree carries an xattr that overlayfs would interpret; it cannot be deployed."""


def trusted_keyring(keys_dir: str | None) -> Keyring:
    """The keyring in ``keys_dir``, else the system keyring ``SYSTEM_KEYRING``.

    Never a path read from the repository.  Raises NoKeyring when no directory
    is named and the system keyring is missing, SignatureError when it cannot
    be read or holds no key.
    """
    if keys_dir is None:
        if not os.path.isdir(SYSTEM_KEYRING):
            raise NoKeyring("no keyring given and the system keyring does not exist",
                            path=SYSTEM_KEYRING)
        keys_dir = SYSTEM_KEYRING
    keyring = Keyring.load(keys_dir)
    if not keyring.keys:
        raise SignatureError("the keyring holds no trusted keys", path=keys_dir)
    return keyring


@contextlib.contextmanager
def open_deployment_pack(pack_path: str, keyring: Keyring, commit_id: RawId
                         ) -> Iterator[tuple[PackReader, Verification]]:
    """Open a pack after checking its signatures; it must be the pack of ``commit_id``.
    Its manifest is checked when first used (``deployment_objects``).

    What the reader yields is only final once ``reader.entries()`` is exhausted.
    Every PackError and SignatureError names ``pack_path`` unless it names a
    file already.
    """
    if not os.path.exists(pack_path):
        raise PackNotKept(f"no pack kept for commit {to_hex(commit_id)}", path=pack_path)
    try:
        with open_verified(pack_path, keyring, check_manifest=False) as (reader, verification):
            if reader.commit_id != commit_id:
                raise VerificationError(f"the pack is of commit "
                                        f"{to_hex(reader.commit_id)}, expected {to_hex(commit_id)}",
                                        path=pack_path)
            yield reader, verification
    except (SignatureError, PackError) as err:  # DowngradeError too: it is a SignatureError
        err.located(pack_path)
        raise


def check_overlay_xattrs(reader: PackReader) -> None:
    """Refuse a tree with an xattr overlayfs would interpret (``OVERLAY_XATTR_PREFIXES``)."""
    metas = [(b"/", reader.commit.root_meta)]
    metas += [(row.path, row.entry.meta) for row in reader.manifest.entries if row.entry.meta.xattrs]
    for path, meta in metas:
        for name, _value in meta.xattrs:
            if name.startswith(OVERLAY_XATTR_PREFIXES):
                raise OverlayXattr(f"xattr {show(name)} would be interpreted by "
                                   f"overlayfs; such a tree cannot be deployed", path=path)


def deployment_objects(reader: PackReader, objects: ObjectStore, requested: Layout
                       ) -> tuple[Layout, list[LargeFile], bool]:
    """The layout ``requested`` resolves to (``choose_layout``), the large files to check,
    and whether they come from the pack's image object list (True: the manifest was not
    decoded, and each item is one object of the image's stubs, with no tree path).

    Otherwise they are the manifest's large files, once ``check_overlay_xattrs`` passed.
    Raises PackError (the manifest), OverlayXattr, MetacopyUnsupported."""
    listed = reader.image_objects
    if listed is not None and requested is not Layout.HARDLINKS:
        items = listed_objects(objects, listed)
        chosen = choose_layout(requested, items)
        if chosen is Layout.METACOPY:
            return chosen, items, True
    check_overlay_xattrs(reader)
    items = large_files(objects, reader.manifest)
    return choose_layout(requested, items), items, False


def listed_objects(objects: ObjectStore, listed: Sequence[ImageObject]) -> list[LargeFile]:
    """The objects of a pack's image object list, to check as the metacopy layout does (size
    and content; their stubs in the image carry the metadata): no tree path, no metadata."""
    return [LargeFile(b"", None, item.size, item.digest,
                      objects.keyed_file_path(item.digest, item.meta_key)) for item in listed]


def large_files(objects: ObjectStore, manifest: Manifest) -> list[LargeFile]:
    """The manifest's large files with their object paths (``in_farm`` adds farm paths)."""
    out = []
    for row in manifest.entries:
        entry = row.entry
        if entry.kind is not Kind.FILE or row.inline:
            continue
        out.append(LargeFile(row.path, entry.meta, entry.size, entry.digest,
                             objects.file_path(entry.digest, entry.meta)))
    return out


def in_farm(items: Sequence[LargeFile], farm_dir: str) -> list[LargeFile]:
    """``items`` with their farm paths (the hardlinks layout checks each link), without a
    second pass over the manifest."""
    base = os.fsencode(farm_dir) + b"/"
    return [LargeFile(item.path, item.meta, item.size, item.digest, item.obj,
                      os.fsdecode(base + item.path)) for item in items]
