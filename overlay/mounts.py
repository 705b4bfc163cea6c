"""Mounting and unmounting: mount(2), umount2(2) and the new mount API through ctypes.

Every wrapper raises ``OSError(errno, strerror, path)``; ``tmpfs()``, ``erofs()`` and
``overlay()`` are context managers that unmount on the way out unless the
caller keeps the mount (``ExitStack.pop_all()``), so a failure part way never
leaves a mount behind.  ``mounts_under()`` reads /proc/self/mountinfo.

``erofs()`` mounts an image file (the metacopy layout's lower layer) read-only:
the file itself where the kernel mounts files (6.12+ with
CONFIG_EROFS_FS_BACKED_BY_FILE), else through a loop device configured
read-only and autoclear (``LOOP_CONFIGURE``), which goes when the mount does.

overlayfs layers are passed either as ``lowerdir+`` strings through
fsopen/fsconfig (Linux 6.7+: paths verbatim, no escaping, no length limit) or,
on older kernels, in the mount(2) data string with ``\\``, ``,`` and ``:``
escaped (a page at most).  ``api="auto"`` tries the first and falls back.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import struct
from collections.abc import Callable, Sequence

from store.record import Frozen

StrPath = str | os.PathLike[str]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.syscall.restype = ctypes.c_long

# mount(2) flags (linux/mount.h)
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_BIND = 0x1000
MS_SILENT = 0x8000
# umount2 flags
MNT_DETACH = 0x2
# The new mount API.  The syscall numbers are the same on every architecture
# (asm-generic unified table, Linux 5.2+).
SYS_MOVE_MOUNT = 429
SYS_FSOPEN = 430
SYS_FSCONFIG = 431
SYS_FSMOUNT = 432
FSOPEN_CLOEXEC = 0x1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 0x1
MOUNT_ATTR_RDONLY = 0x1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
AT_FDCWD = -100

DATA_MAX = 4095  # mount(2) copies at most one page of options, NUL included


def _fail(path: StrPath) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, os.strerror(err), os.fspath(path))


def mount(source: str, target: StrPath, fstype: str, flags: int = 0, data: str = "") -> None:
    """mount(2); raises OSError naming ``target``."""
    if len(os.fsencode(data)) > DATA_MAX:
        raise OSError(errno.E2BIG, f"mount options longer than {DATA_MAX} bytes", os.fspath(target))
    if _libc.mount(os.fsencode(source), os.fsencode(target), fstype.encode(), flags,
                   os.fsencode(data) if data else None) != 0:
        raise _fail(target)


def umount(target: StrPath, flags: int = 0) -> None:
    """umount2(2); raises OSError naming ``target``."""
    if _libc.umount2(os.fsencode(target), flags) != 0:
        raise _fail(target)


# -- tmpfs ----------------------------------------------------------------------------

class Mounted:
    """A mount as a context manager: mounted on enter, detached on exit.

    A class, not a generator: a generator context manager left un-exited (the
    way ``ExitStack.pop_all()`` keeps a mount) would unmount when collected.
    """

    def __init__(self, target: StrPath, mount_fn: Callable[[], object]) -> None:
        self.target = os.fspath(target)
        self._mount = mount_fn
        self.result: object = None

    def __enter__(self) -> str:
        self.result = self._mount()
        return self.target

    def __exit__(self, *exc: object) -> None:
        # Detached, not plainly unmounted: a failure cleanup must not fail on EBUSY
        # because some fd (a thread of ours, a scanner) is still open in it.
        umount(self.target, MNT_DETACH)


def tmpfs(target: StrPath, *, size: int | None = None, inodes: int | None = None,
          mode: int = 0o755, flags: int = 0) -> Mounted:
    """A tmpfs on ``target`` (mounted when the block is entered, detached when it is left)."""
    options = [
        # The root of the tmpfs shows through as the overlay's root directory until
        # the tree's own root metadata is applied: start from the usual 0755.
        f"mode={mode:o}",
        # uid/gid 0: the tree's root owner is applied explicitly afterwards.
        "uid=0", "gid=0",
    ]
    if size is not None:
        # Bounded by what the manifest says it needs: a hostile pack cannot fill RAM.
        options.append(f"size={max(size, 4096)}")
    if inodes is not None:
        # Same for inodes (files, directories, symlinks).
        options.append(f"nr_inodes={max(inodes, 16)}")
    # No nosuid/nodev: the tmpfs holds a root filesystem whose setuid binaries must work.
    return Mounted(target, lambda: mount("tmpfs", target, "tmpfs", MS_SILENT | flags,
                                         ",".join(options)))


def bind(source: StrPath, target: StrPath) -> Mounted:
    """A bind mount of the directory ``source`` on ``target`` (detached when the block is left)."""
    return Mounted(target, lambda: mount(os.fspath(source), target, "none", MS_BIND))


# -- erofs (the metacopy layout's image) --------------------------------------------------

# linux/loop.h
LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_READ_ONLY = 0x1
LO_FLAGS_AUTOCLEAR = 0x4
# struct loop_config: u32 fd, u32 block_size, struct loop_info64 (u64 x5, u32 x4, 64 + 64 +
# 32 bytes of names and key, u64 x2: 232 bytes), u64 __reserved[8]; lo_flags at offset 8+52.
_LOOP_CONFIG = struct.Struct("=II5Q4I64s64s32s2Q8Q")
_LOOP_TRIES = 8  # another process may take the free device between GET_FREE and CONFIGURE
_IMAGE_OPEN = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW


def _loop_config(fd: int) -> bytes:
    return _LOOP_CONFIG.pack(fd, 0, 0, 0, 0, 0, 0, 0, 0, 0, LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR,
                             b"", b"", b"", 0, 0, *([0] * 8))


def attach_loop(image: StrPath | int) -> tuple[str, int]:
    """A free loop device configured read-only and autoclear over ``image`` (a path, or an
    open descriptor): its path and an open descriptor of it.  The device detaches itself
    once that descriptor is closed and no mount uses it (LO_FLAGS_AUTOCLEAR), so a failure
    part way leaves nothing attached."""
    image_fd = image if isinstance(image, int) else os.open(image, _IMAGE_OPEN)
    try:
        control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(_LOOP_TRIES):
                number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
                device = f"/dev/loop{number}"
                loop_fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    fcntl.ioctl(loop_fd, LOOP_CONFIGURE, _loop_config(image_fd))
                except OSError as err:
                    os.close(loop_fd)
                    if err.errno == errno.EBUSY:  # taken since GET_FREE: ask again
                        continue
                    raise OSError(err.errno, err.strerror, device) from None
                return device, loop_fd
            raise OSError(errno.EBUSY, "no free loop device", "/dev/loop-control")
        finally:
            os.close(control)
    finally:
        if not isinstance(image, int):
            os.close(image_fd)


#: Errors with which mount(2) refuses a regular file where erofs wants a block device (a
#: kernel without file-backed mounts: before 6.12, or without CONFIG_EROFS_FS_BACKED_BY_FILE).
_NOT_A_BLOCK_DEVICE = (errno.ENOTBLK,)

# Read-only, and nodev: a tree holds no device nodes (store.model has none), so a device
# node in an image (which would need a forged image matching a signed digest) is never
# opened.  Not nosuid, not noexec: the image is the lower layer of a root filesystem whose
# set-ID binaries and programs must work through the overlay (as on the tmpfs layer).
EROFS_FLAGS = MS_RDONLY | MS_NODEV | MS_SILENT


def fd_source(fd: int) -> str:
    """The source mount(2) is given for an open file: its /proc/self/fd link."""
    return f"/proc/self/fd/{fd}"


def _image_source(image: StrPath | int) -> str:
    """What mount(2) is given: the path, or for a descriptor its /proc/self/fd link (which
    the kernel opens as that very file: the one checked is the one mounted)."""
    return fd_source(image) if isinstance(image, int) else os.fspath(image)


def mount_erofs(image: StrPath | int, target: StrPath, *, loop: bool = False) -> str:
    """Mount the EROFS image file ``image`` (a path, or an open descriptor) at ``target``
    read-only; return the source used (the file, or the loop device).  ``loop`` False: the
    file itself, and a loop device where the kernel refuses a regular file; True: a loop
    device in any case."""
    if not loop:
        source = _image_source(image)
        try:
            mount(source, target, "erofs", EROFS_FLAGS)
            return source
        except OSError as err:
            if err.errno not in _NOT_A_BLOCK_DEVICE:
                raise
    device, loop_fd = attach_loop(image)
    try:
        mount(device, target, "erofs", EROFS_FLAGS)
    finally:
        os.close(loop_fd)  # the mount holds the device now; without one, autoclear detaches it
    return device


def erofs(image: StrPath | int, target: StrPath, *, loop: bool = False) -> Mounted:
    """The EROFS image ``image`` (a path, or an open descriptor, which the caller keeps
    open until the block is entered) mounted read-only on ``target`` (``mount_erofs``; its
    ``result`` is the source used), detached when the block is left (a loop device then
    detaches itself: autoclear)."""
    return Mounted(target, lambda: mount_erofs(image, target, loop=loop))


# -- overlayfs ------------------------------------------------------------------------

def escape_layer(path: str) -> str:
    """A layer path for the mount(2) data string: ``\\``, ``,`` and ``:`` backslash-escaped."""
    return path.replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


# Hardening options, each for the same reason: a farm on the disk can be tampered
# with, and the overlay must interpret as little of its layers' xattrs as the kernel
# allows.  What no option turns off (trusted.overlay.opaque, the xattr whiteouts of
# Linux 6.7+) is refused before mounting instead: the farm carries no xattr on any
# directory (``farm.check_farm``), and a tree with overlay xattrs is never unpacked
# into the tmpfs layer (``deployment_pack.check_overlay_xattrs``).
_HARDENING = (
    # Do not follow trusted.overlay.redirect xattrs found in a layer (they could
    # point a directory at another one), and do not create them.
    ("redirect_dir", "nofollow"),
    # Do not honour trusted.overlay.metacopy: a file's data always comes from the
    # layer the file is found in, never from a lower one a stub points to.
    ("metacopy", "off"),
    # No inode index: trusted.overlay.origin file handles are never followed, and
    # nothing is ever copied up into a persistent upper layer.
    ("index", "off"),
    # No NFS export: never decode a file handle found in a layer (needs the index
    # anyway; said explicitly so that a kernel default cannot turn it on).
    ("nfs_export", "off"),
)


# The metacopy layout (``overlay.metacopy``) needs overlayfs to follow exactly the
# xattrs it forbids above, on the stubs of its top layer, which sealtree writes in a
# fresh tmpfs from the signed manifest (a tree carrying overlay xattrs of its own is
# refused before unpacking), never on a layer from the disk: the objects are a
# data-only layer, whose files' xattrs overlayfs does not interpret and which is
# reachable only through the stubs' absolute redirects.
def _metacopy_options(verity: str, writable: bool) -> tuple[tuple[str, str], ...]:
    return (
        # A stub's data is in the data-only layer: overlayfs must honour its
        # trusted.overlay.metacopy xattr, and check the digest it carries (verity).
        ("metacopy", "on"),
        # ...and follow its trusted.overlay.redirect there: metacopy=on conflicts with
        # redirect_dir=nofollow/off.  "follow" (follow, never create) suffices without an
        # upper layer; with one (--live) the kernel wants "on" (it may then create redirects,
        # in that upper tmpfs only, when a directory is renamed).
        ("redirect_dir", "on" if writable else "follow"),
        # require: a stub without a digest, an object without fs-verity or with another
        # digest is refused (EIO) at open, as long as the tree is mounted.  off: where the
        # kernel has no fs-verity (the objects were digested in userspace before mounting).
        ("verity", verity),
        # As above: no origin file handles, no export.
        ("index", "off"),
        ("nfs_export", "off"),
    )


class OverlaySpec(Frozen):
    """An overlay: lower layers top first; an upper and work dir make it writable.

    ``data``: data-only lower layers below the lower ones (metacopy layout), reachable
    only through the stubs' absolute redirects; then ``verity`` is the ``verity=`` value.
    """

    __slots__ = ("lowers", "upper", "work", "data", "verity")
    _fields = __slots__
    lowers: Sequence[str]
    upper: str | None
    work: str | None
    data: Sequence[str]
    verity: str

    def __init__(self, lowers: Sequence[str], upper: str | None = None, work: str | None = None,
                 data: Sequence[str] = (), verity: str = "require") -> None:
        self._set_fields(lowers, upper, work, data, verity)

    def options(self) -> tuple[tuple[str, str], ...]:
        """The mount options besides the layers."""
        if self.data:
            return _metacopy_options(self.verity, self.upper is not None)
        return _HARDENING

    def legacy_data(self) -> str:
        lowers = ":".join(escape_layer(p) for p in self.lowers)
        if self.data:  # "::" separates the data-only layers (Linux 6.5+)
            lowers += "::" + "::".join(escape_layer(p) for p in self.data)
        parts = ["lowerdir=" + lowers]
        if self.upper is not None and self.work is not None:
            parts += ["upperdir=" + escape_layer(self.upper), "workdir=" + escape_layer(self.work)]
        parts += [f"{k}={v}" for k, v in self.options()]
        return ",".join(parts)


def _syscall(number: int, *args: object) -> int:
    result: int = _libc.syscall(number, *args)
    return result


def _fsconfig(fd: int, key: str, value: str | None, path: StrPath) -> None:
    cmd = FSCONFIG_SET_STRING if value is not None else FSCONFIG_SET_FLAG
    if _syscall(SYS_FSCONFIG, ctypes.c_int(fd), ctypes.c_uint(cmd), ctypes.c_char_p(key.encode()),
                ctypes.c_char_p(os.fsencode(value) if value is not None else None), ctypes.c_int(0)) != 0:
        raise _fail(path)


def _overlay_new_api(target: StrPath, spec: OverlaySpec) -> None:
    """fsopen/fsconfig(lowerdir+)/fsmount/move_mount: layer paths go in verbatim."""
    fs_fd = _syscall(SYS_FSOPEN, ctypes.c_char_p(b"overlay"), ctypes.c_uint(FSOPEN_CLOEXEC))
    if fs_fd < 0:
        raise _fail(target)
    try:
        for layer in spec.lowers:
            _fsconfig(fs_fd, "lowerdir+", layer, target)
        for layer in spec.data:
            _fsconfig(fs_fd, "datadir+", layer, target)
        if spec.upper is not None and spec.work is not None:
            _fsconfig(fs_fd, "upperdir", spec.upper, target)
            _fsconfig(fs_fd, "workdir", spec.work, target)
        for key, value in spec.options():
            _fsconfig(fs_fd, key, value, target)
        _fsconfig_create(fs_fd, target)
        # Without an upper layer, also make the mount itself read-only.
        attrs = MOUNT_ATTR_RDONLY if spec.upper is None else 0
        mnt_fd = _syscall(SYS_FSMOUNT, ctypes.c_int(fs_fd), ctypes.c_uint(FSMOUNT_CLOEXEC),
                          ctypes.c_uint(attrs))
        if mnt_fd < 0:
            raise _fail(target)
        try:
            if _syscall(SYS_MOVE_MOUNT, ctypes.c_int(mnt_fd), ctypes.c_char_p(b""), ctypes.c_int(AT_FDCWD),
                        ctypes.c_char_p(os.fsencode(target)), ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)) != 0:
                raise _fail(target)
        finally:
            os.close(mnt_fd)
    finally:
        os.close(fs_fd)


def _fsconfig_create(fs_fd: int, target: StrPath) -> None:
    if _syscall(SYS_FSCONFIG, ctypes.c_int(fs_fd), ctypes.c_uint(FSCONFIG_CMD_CREATE), None, None,
                ctypes.c_int(0)) != 0:
        raise _fail(target)


def mount_overlay(target: StrPath, spec: OverlaySpec, api: str = "auto") -> str:
    """Mount ``spec`` on ``target``; return the API used ("new" or "legacy").

    ``auto`` uses the new API when the kernel has ``lowerdir+`` (6.7+) and
    falls back to mount(2) when fsopen or ``lowerdir+`` is refused with
    ENOSYS/EINVAL/EOPNOTSUPP before anything was mounted.
    """
    if api in ("auto", "new"):
        try:
            _overlay_new_api(target, spec)
            return "new"
        except OSError as err:
            if api == "new" or err.errno not in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
    flags = MS_SILENT | (MS_RDONLY if spec.upper is None else 0)
    mount("overlay", target, "overlay", flags, spec.legacy_data())
    return "legacy"


def overlay(target: StrPath, spec: OverlaySpec, api: str = "auto") -> Mounted:
    """``mount_overlay`` as a ``Mounted`` (its ``result`` is the API used)."""
    return Mounted(target, lambda: mount_overlay(target, spec, api))


# -- /proc/self/mountinfo -----------------------------------------------------------------

_OCTAL = re.compile(rb"\\([0-7]{3})")


def _unescape(field: bytes) -> bytes:
    return _OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), field)


class MountInfo(Frozen):
    __slots__ = ("mount_id", "mount_point", "fstype", "source", "options", "super_options",
                 "raw_super_options")
    _fields = __slots__
    mount_id: int
    mount_point: bytes
    fstype: str
    source: bytes
    options: str  # per-mount options (ro, nosuid, ...)
    super_options: bytes  # decoded from the octal escapes
    raw_super_options: bytes  # as mountinfo shows them: a comma inside a value is \054

    def __init__(self, mount_id: int, mount_point: bytes, fstype: str, source: bytes, options: str,
                 super_options: bytes, raw_super_options: bytes = b"") -> None:
        self._set_fields(mount_id, mount_point, fstype, source, options, super_options, raw_super_options)


def mountinfo(path: str = "/proc/self/mountinfo") -> list[MountInfo]:
    """Every mount of this namespace, mount points decoded from their octal escapes."""
    out = []
    with open(path, "rb") as handle:
        for line in handle.read().splitlines():
            fields = line.split(b" ")
            sep = fields.index(b"-", 6)
            raw = fields[sep + 3] if len(fields) > sep + 3 else b""
            out.append(MountInfo(int(fields[0]), _unescape(fields[4]), fields[sep + 1].decode(),
                                 _unescape(fields[sep + 2]), fields[5].decode(), _unescape(raw), raw))
    return out


def overlay_lower_layers(info: MountInfo) -> list[bytes]:
    """The lower layers of an overlay mount, top first, as they were given when mounting;
    data-only layers (``datadir+=``, or after ``::``) last.

    mountinfo shows ``lowerdir+=PATH`` once per layer for the new mount API and
    ``lowerdir=A:B`` for mount(2), whose layers keep the backslash escapes
    ``escape_layer`` added; both are octal-escaped on top (a comma is ``\\054``),
    so splitting the raw options at commas is exact.
    """
    return [layer for layers in overlay_layers(info) for layer in layers]


def overlay_layers(info: MountInfo) -> tuple[list[bytes], list[bytes]]:
    """The lower layers (top first) and the data-only layers of an overlay mount."""
    layers: list[bytes] = []
    data: list[bytes] = []
    for option in info.raw_super_options.split(b","):
        key, _eq, value = option.partition(b"=")
        if key == b"lowerdir+":
            layers.append(_unescape(value))
        elif key == b"datadir+":
            data.append(_unescape(value))
        elif key == b"lowerdir":
            split = _split_escaped_layers(_unescape(value))
            if b"" in split:  # A:B::D1::D2: the data-only layers follow the first empty one
                cut = split.index(b"")
                layers.extend(split[:cut])
                data.extend(x for x in split[cut:] if x)
            else:
                layers.extend(split)
    return layers, data


def _split_escaped_layers(value: bytes) -> list[bytes]:
    """``A:B`` with ``\\``-escaped ``:``, ``,`` and ``\\`` (``escape_layer``) -> [A, B]."""
    layers, current, escaped = [], bytearray(), False
    for byte in value:
        if escaped:
            current.append(byte)
            escaped = False
        elif byte == 0x5C:  # backslash
            escaped = True
        elif byte == 0x3A:  # colon
            layers.append(bytes(current))
            current.clear()
        else:
            current.append(byte)
    layers.append(bytes(current))
    return layers


def mounts_under(path: StrPath) -> list[MountInfo]:
    """Mounts whose mount point is ``path`` or below it (``path`` made absolute, not resolved)."""
    root = os.fsencode(os.path.abspath(path)).rstrip(b"/") or b"/"
    prefix = root if root == b"/" else root + b"/"
    return [m for m in mountinfo() if m.mount_point == root or m.mount_point.startswith(prefix)]


def is_mount_point(path: StrPath) -> MountInfo | None:
    """The topmost mount at exactly ``path`` (made absolute, symlinks resolved), or None."""
    real = os.fsencode(os.path.realpath(path))
    found = [m for m in mountinfo() if m.mount_point == real]
    return found[-1] if found else None
