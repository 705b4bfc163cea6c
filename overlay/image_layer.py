"""The metacopy layout's lower layer from the pack's EROFS image (docs/FORMAT.md, section 9).

A pack of format version 2 signs the identity of its tree's image (``pack.image``:
recipe, size, fs-verity digest), and ``pack import`` keeps the image as the object
``objects/xx/<62 hex>.image``.  Before that image is mounted as the overlay's lower
layer (``mounts.erofs``), ``open_image`` opens it once and checks, on that open
descriptor, that it is a regular file of the signed size whose fs-verity digest is the
signed one: measured by the kernel (``FS_IOC_MEASURE_VERITY``, through the same
``Verity`` hook as the large objects) or computed in userspace, as the policy says.
The mount then uses that very descriptor (``/proc/self/fd/N``, or the loop device
configured over it), so the file checked is the file mounted.  A missing image (an
import that predates it, a repository copied without it) is built once from the
verified pack (``pack.image.store_image``, which checks it against the signed identity).

Under policy ``kernel`` the image has fs-verity, so its bytes cannot change while it is
mounted; the image binds the whole tree's structure, metadata and small files to the
signed digest, and each stub's ``trusted.overlay.metacopy`` binds a large file to its
object's digest, which overlayfs checks at every open (``verity=require``).
"""

from __future__ import annotations

import errno
import hmac
import os
import stat

from pack.reader import PackReader
from store.errors import VerificationError, VerityError, VerityUnsupported
from store.fsverity import digest_fd
from store.ids import RawId
from store.objects import ObjectStore
from store.record import Mutable

from .objcheck import KERNEL, Policy, Verity


class ImageMismatch(VerificationError):
    """The image object is not the one the pack signs (or cannot be checked by the policy)."""


class ImageLayer(Mutable):
    """A checked image object, open (``fd``) until ``close``."""

    __slots__ = ("path", "digest", "size", "measured", "built", "fd")
    _fields = __slots__

    def __init__(self, path: str, digest: bytes, size: int, measured: str, built: bool,
                 fd: int = -1) -> None:
        self.path = path
        self.digest = digest  # the signed fs-verity digest it was found to have
        self.size = size
        self.measured = measured  # "kernel" or "userspace": who computed the digest
        self.built = built  # built from the pack now (it was missing)
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def describe(self) -> dict[str, object]:
        """For ``--json``: the lower layer is this image."""
        return {"path": self.path, "digest": self.digest.hex(), "size": self.size,
                "measured": self.measured, "built": self.built}


def open_image(objects: ObjectStore, reader: PackReader, policy: Policy, *,
               verity: Verity = KERNEL, enable: bool = False) -> ImageLayer:
    """The image object of ``reader``'s pack (which must name one), built if missing, open
    and checked against the signed identity (module docstring).  ``enable``: turn fs-verity
    on where it is off and the filesystem can (deploy; the boot verifier only measures).

    Raises ImageMismatch naming the image file; PackError when building it fails.
    """
    want = reader.image
    if want is None:
        raise ValueError("the pack names no image (format version 1)")
    path = objects.image_path(RawId(want.digest))
    built = False
    if not os.path.lexists(path):
        # Imported here: building an image (the EROFS writer) is only for an image missing.
        from pack.image import store_image  # noqa: PLC0415

        path = store_image(objects, reader)
        built = True
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        what = "is a symlink" if err.errno == errno.ELOOP else f"cannot be opened: {err.strerror}"
        raise ImageMismatch(f"image object {what}", path=path) from None
    layer = ImageLayer(path, want.digest, want.size, "kernel", built, fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageMismatch("image object is not a regular file", path=path)
        if st.st_size != want.size:
            raise ImageMismatch(f"image object is {st.st_size} bytes, the pack signs "
                                f"{want.size}", path=path)
        # It is about to be mounted and read (the tree's directories, metadata and small
        # files, and a deploy copies /etc out of it): the kernel starts reading it now, in
        # the background, one sequential read instead of many small ones later.
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        got = _kernel_digest(layer, policy, verity, enable)
        if got is None:
            got, _size = digest_fd(fd)
            layer.measured = "userspace"
        if not hmac.compare_digest(got, want.digest):
            raise ImageMismatch(f"image object changed: {layer.measured} fs-verity digest is "
                                f"{got.hex()}, the pack signs {want.digest.hex()}", path=path)
    except BaseException:
        layer.close()
        raise
    return layer


def _kernel_digest(layer: ImageLayer, policy: Policy, verity: Verity, enable: bool
                   ) -> bytes | None:
    """The kernel's digest where the policy wants one; None: a userspace digest instead."""
    if policy is Policy.USERSPACE:
        return None
    try:
        measured = verity.measure_fd(layer.fd, layer.path)
        if measured is None and enable and verity.enable(layer.path):
            measured = verity.measure_fd(layer.fd, layer.path)
    except VerityUnsupported:
        measured = None
    except VerityError as err:
        raise ImageMismatch(f"image object: fs-verity: {err}", path=layer.path) from err
    if measured is None and policy is Policy.KERNEL:
        raise ImageMismatch("image object has no fs-verity: the kernel cannot measure it "
                            "(--verify kernel)", path=layer.path)
    return measured
