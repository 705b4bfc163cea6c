"""Making a mounted filesystem writable with mount(2): no mount command needed.

The initramfs-tools ``local`` script mounts the root device read-only; the
boot verifier needs it writable (boot counting, first-boot sealing).  klibc's
``mount`` cannot remount a mount point given alone, and a minimal system has
no busybox in its initramfs, so the verifier remounts it itself.
"""

from __future__ import annotations

import os

from . import mounts

MS_REMOUNT = 0x20
# statvfs(3) flags with the same value as the mount(2) flag: kept across the remount (a
# remount replaces the per-mount flags; atime flags left out are kept by the kernel).
_KEPT_FLAGS = os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC


def make_writable(mount_point: str) -> bool:
    """Remount the filesystem mounted at ``mount_point`` read-write if it is read-only.

    Returns True when it was remounted, False when it was writable already.
    Raises OSError (EINVAL when ``mount_point`` is not the root of a mount,
    EROFS when the device itself is read-only).
    """
    flags = os.statvfs(mount_point).f_flag
    if not flags & os.ST_RDONLY:
        return False
    mounts.mount("", mount_point, "", MS_REMOUNT | (flags & _KEPT_FLAGS))
    return True
