"""The metacopy layout: the whole tree in tmpfs, each large file a stub the kernel verifies.

In this layout (docs/FORMAT.md, section 9, "The metacopy layout") there is no
hardlink farm.  The tmpfs holds every directory, symlink and inline file as
the hardlinks layout does, and each large file as a **stub**: a sparse
regular file of the object's size carrying the file's own mode, owner and
xattrs plus two overlay xattrs written here and nowhere else:

- ``trusted.overlay.redirect``: the object's path inside the data-only lower
  layer (the repository's ``objects/``), absolute, e.g. ``/ab/cdef...file``;
- ``trusted.overlay.metacopy``: ``00 24 00 01`` + the 32-byte fs-verity
  SHA-256 digest (``struct ovl_metacopy``: version 0, length 36, flags 0,
  digest algorithm 1 = FS_VERITY_HASH_ALG_SHA256).

Mounted with ``verity=require``, overlayfs opens a stub's data from the
object and refuses (EIO) an object whose fs-verity digest is not the stub's,
for as long as the tree is mounted: the kernel, not a check before mounting,
binds each path to its signed digest.

The store keeps one object per (digest, metadata); a stub carries the
metadata itself, so every large file with the same content is redirected to
one object (the first in manifest order): ``plan_stubs``.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Sequence

# Re-exported: the names overlay/ and its tests use (pack.stubs spells them).
from pack.stubs import METACOPY_XATTR as METACOPY_XATTR
from pack.stubs import REDIRECT_XATTR as REDIRECT_XATTR
from pack.stubs import metacopy_value as metacopy_value
from store import kverity
from store.errors import DeployError, VerityError, VerityUnsupported
from store.ids import RawId
from store.objects import ObjectStore
from store.record import Frozen

from .objcheck import LargeFile

#: Linux release from which overlayfs has data-only layers (6.5) and ``verity=`` (6.6).
OVERLAY_VERITY_RELEASE = (6, 6)


class Layout(enum.Enum):
    """How a deployment's large files reach the mounted view (``--layout``)."""

    HARDLINKS = "hardlinks"  # a hardlink farm under deploy/<id>/ as the lower layer
    METACOPY = "metacopy"  # stubs in the tmpfs redirected into objects/ (a data-only layer)
    AUTO = "auto"  # metacopy where the kernel can enforce it (``supports_metacopy``)


class MetacopyUnsupported(DeployError):
    """The metacopy layout was asked for where the kernel or filesystem cannot enforce it."""


def redirect_value(objects_root: str, obj: str) -> bytes:
    """``trusted.overlay.redirect`` for object file ``obj``: its path below ``objects_root``,
    absolute (``/ab/cdef....file``).  Refuses a path that is not inside ``objects_root``."""
    root = os.fsencode(objects_root).rstrip(b"/")
    path = os.fsencode(obj)
    if not path.startswith(root + b"/"):
        raise DeployError(f"object is not inside the objects directory {objects_root}", path=obj)
    rel = path[len(root):]
    if b"/../" in rel + b"/" or b"/./" in rel + b"/" or b"//" in rel:
        raise DeployError("object path is not normalised", path=obj)
    return rel


class Stub(Frozen):
    """What a large file's stub carries besides its own metadata."""

    __slots__ = ("size", "redirect", "metacopy")
    _fields = __slots__
    size: int
    redirect: bytes  # trusted.overlay.redirect
    metacopy: bytes  # trusted.overlay.metacopy

    def __init__(self, size: int, redirect: bytes, metacopy: bytes) -> None:
        self._set_fields(size, redirect, metacopy)


class StubPlan(Frozen):
    """Every stub by digest, and the objects they are redirected to (one per digest)."""

    __slots__ = ("stubs", "objects")
    _fields = __slots__
    stubs: dict[RawId, Stub]
    objects: list[LargeFile]  # one per distinct digest: what must exist and be verified

    def __init__(self, stubs: dict[RawId, Stub], objects: list[LargeFile]) -> None:
        self._set_fields(stubs, objects)

    def xattr_bytes(self, items: Sequence[LargeFile]) -> int:
        """The overlay xattrs' bytes over every large file (for ``tmpfs_size``)."""
        return sum(len(METACOPY_XATTR) + len(s.metacopy) + len(REDIRECT_XATTR) + len(s.redirect)
                   for s in (self.stubs[i.digest] for i in items))


def distinct_objects(items: Sequence[LargeFile]) -> list[LargeFile]:
    """The first of ``items`` (in their order) of each distinct content: the objects the
    stubs are redirected to (what must exist and be verified), without the stubs' xattrs
    (a pack with an image has them in the image)."""
    seen: set[RawId] = set()
    chosen: list[LargeFile] = []
    for item in items:
        if item.digest not in seen:
            seen.add(item.digest)
            chosen.append(item)
    return chosen


def plan_stubs(objects: ObjectStore, items: Sequence[LargeFile]) -> StubPlan:
    """One object per distinct content among ``items`` (the first in their order), and each
    content's stub xattrs.  Objects with equal content and other metadata are not used."""
    stubs: dict[RawId, Stub] = {}
    chosen: list[LargeFile] = []
    for item in items:
        if item.digest in stubs:
            continue
        stubs[item.digest] = Stub(item.size, redirect_value(objects.root, item.obj),
                                  metacopy_value(item.digest))
        chosen.append(item)
    return StubPlan(stubs, chosen)


# -- what the running kernel can do -------------------------------------------------------------

def kernel_release() -> tuple[int, int]:
    """The running kernel's (major, minor); (0, 0) when ``uname`` says something else."""
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return (0, 0)
    return (major, minor)


def kernel_has_overlay_verity() -> bool:
    """overlayfs has data-only layers and ``verity=`` (Linux 6.6+).  Whether the kernel has
    fs-verity at all is the objects' filesystem's probe (``filesystem_has_verity``)."""
    return kernel_release() >= OVERLAY_VERITY_RELEASE


def filesystem_has_verity(obj: str) -> bool:
    """Whether fs-verity can be measured on the filesystem holding object file ``obj``."""
    try:
        kverity.measure(obj)
    except VerityUnsupported:
        return False
    except (VerityError, OSError):
        return False
    return True


def supports_metacopy(objects: Sequence[LargeFile]) -> bool:
    """``auto``'s test: the kernel has overlay verity and the objects' filesystem fs-verity
    (probed on the first object; with no large file, the kernel decides alone)."""
    if not kernel_has_overlay_verity():
        return False
    return filesystem_has_verity(objects[0].obj) if objects else True


def choose_layout(requested: Layout, objects: Sequence[LargeFile]) -> Layout:
    """``auto`` resolved: metacopy where ``supports_metacopy``, else hardlinks.

    An explicit metacopy on a kernel whose overlayfs has no ``verity=`` (before 6.6)
    raises MetacopyUnsupported: it could not be mounted at all.  Where only fs-verity
    is missing it can (``verity=off``), its objects digested in userspace if the
    policy allows."""
    if requested is Layout.METACOPY and not kernel_has_overlay_verity():
        raise MetacopyUnsupported(f"the metacopy layout needs overlayfs with data-only layers "
                                  f"and verity (Linux {OVERLAY_VERITY_RELEASE[0]}."
                                  f"{OVERLAY_VERITY_RELEASE[1]}+); this kernel is "
                                  f"{os.uname().release}")
    if requested is not Layout.AUTO:
        return requested
    return Layout.METACOPY if supports_metacopy(objects) else Layout.HARDLINKS
