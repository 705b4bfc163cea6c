"""Kernel fs-verity through ioctls: enable, measure, probe.

"The kernel or this filesystem cannot" (ENOTTY, EOPNOTSUPP) is told apart
from real failures: the first raises ``VerityUnsupported``, the rest
``VerityError`` with the errno and path.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct

from .errors import VerityError, VerityUnsupported
from .fsverity import DEFAULT_PARAMS, SHA256, VerityParams

FS_IOC_ENABLE_VERITY = 0x40806685
FS_IOC_MEASURE_VERITY = 0xC0046686
FS_IOC_GETFLAGS = 0x80086601
FS_VERITY_FL = 0x00100000

# struct fsverity_enable_arg (native endian): version, hash_algorithm,
# block_size, salt_size, salt_ptr, sig_size, reserved, sig_ptr, 88 reserved.
_ENABLE_ARG = struct.Struct("=IIIIQIIQ88x")
# struct fsverity_digest header: digest_algorithm, digest_size (in: capacity).
_MEASURE_HEADER = struct.Struct("=HH")
_MAX_DIGEST = 64

_UNSUPPORTED = (errno.ENOTTY, errno.EOPNOTSUPP)


def _raise(err: OSError, what: str, path: str) -> None:
    if err.errno in _UNSUPPORTED:
        raise VerityUnsupported(f"fs-verity not supported here ({os.strerror(err.errno)})",
                                path=path) from err
    raise VerityError(f"{what} failed: {os.strerror(err.errno or 0)}", path=path) from err


def enable(path: str, params: VerityParams = DEFAULT_PARAMS, signature: bytes = b"") -> bool:
    """Enable fs-verity on ``path``.  Returns False if it was already enabled.

    The file must have no writer anywhere (ETXTBSY otherwise), so it is opened
    read-only here.
    """
    salt = ctypes.create_string_buffer(params.salt, len(params.salt) or 1)
    sig = ctypes.create_string_buffer(signature, len(signature) or 1)
    arg = bytearray(_ENABLE_ARG.pack(
        1, params.algorithm.number, params.block_size, len(params.salt),
        ctypes.addressof(salt) if params.salt else 0, len(signature), 0,
        ctypes.addressof(sig) if signature else 0))
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        fcntl.ioctl(fd, FS_IOC_ENABLE_VERITY, arg)
    except OSError as err:
        if err.errno == errno.EEXIST:
            return False
        _raise(err, "FS_IOC_ENABLE_VERITY", path)
    finally:
        os.close(fd)
    return True


def measure_fd(fd: int, path: str = "<fd>") -> bytes | None:
    """The kernel-measured fs-verity digest of an open file, or None if verity is not on it.

    Raises VerityUnsupported where the filesystem or kernel has no fs-verity.
    """
    buf = bytearray(_MEASURE_HEADER.pack(0, _MAX_DIGEST) + bytes(_MAX_DIGEST))
    try:
        fcntl.ioctl(fd, FS_IOC_MEASURE_VERITY, buf)
    except OSError as err:
        if err.errno == errno.ENODATA:
            return None
        _raise(err, "FS_IOC_MEASURE_VERITY", path)
    algorithm, size = _MEASURE_HEADER.unpack_from(buf)
    if algorithm != SHA256.number or size != SHA256.digest_size:
        raise VerityError(f"verity uses algorithm {algorithm} ({size} bytes), "
                          f"expected sha256", path=path)
    return bytes(buf[_MEASURE_HEADER.size:_MEASURE_HEADER.size + size])


def measure(path: str) -> bytes | None:
    """``measure_fd`` on a path (opened read-only, not following symlinks)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        return measure_fd(fd, path)
    finally:
        os.close(fd)


def is_supported(path: str) -> bool:
    """Whether the kernel and the filesystem holding ``path`` (a file) can do fs-verity.

    statx's verity attribute is not proof (ext4 sets it without kernel
    support), so ask the measure ioctl: ENODATA or a digest means supported.
    """
    try:
        measure(path)
    except VerityUnsupported:
        return False
    return True


def enable_where_supported(path: str) -> bool:
    """``enable`` where the kernel and the filesystem holding ``path`` can (True: fs-verity is
    on), else nothing (False).  Other failures raise VerityError."""
    try:
        enable(path)
    except VerityUnsupported:
        return False
    return True
