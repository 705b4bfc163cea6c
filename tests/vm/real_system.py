"""A real Debian bookworm system (systemd, udev, the Debian kernel) to boot through sealtree.

:func:`real_system_tree` is the cached result of README.md's "Image builder" first step:
``debootstrap --variant=minbase`` with :data:`INCLUDE` (systemd-sysv, udev, dbus,
initramfs-tools, python3 and what the sealtree CLI imports on the device), and Debian's
bookworm kernel for virtual machines, ``linux-image-cloud-amd64`` (6.1, the version the
other boot tests use; fs-verity built in, virtio and overlay as modules: 91 MB of modules
instead of the generic flavor's 396 MB, which first-boot sealing under TCG reads whole).  It is
the bare distribution: nothing of sealtree is in it.  Callers never write to it: they use
:func:`tests.vm.debian_chroot.overlay_view` (an overlayfs over it with an upper directory of their own), then
``integration/sealtree-prepare-rootfs`` and the rest of the recipe (see
tests/test_real_system_vm.py).

Cached under the vm cache (``system/bookworm-<key>``, the key made of what goes in), built
beside its final place and renamed into it; debootstrap's downloads are kept in
``debootstrap-debs/`` so a rebuild downloads nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.vm import guest

log = logging.getLogger(__name__)

SUITE = "bookworm"
VARIANT = "minbase"
MIRROR = os.environ.get("SEALTREE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
#: What the device needs besides minbase: an init (systemd-sysv, udev, dbus for logind),
#: the kernel (see the module docstring) and its dependencies (linux-base, kmod),
#: initramfs-tools, the Python modules the verifier and the CLI import (cffi-backend named:
#: debootstrap does not resolve the virtual python3-cffi-backend-api-*; urllib3 for pull),
#: zstd, and iproute2 (the test's guest configures qemu's user network with it).
INCLUDE: tuple[str, ...] = (
    "systemd-sysv", "udev", "dbus", "linux-base", "kmod", "initramfs-tools",
    "python3", "python3-cffi-backend", "python3-cryptography", "python3-zstandard",
    "python3-xattr", "python3-urllib3", "zstd", "iproute2", "linux-image-cloud-amd64",
)
FORMAT = 1  # bump when what the builder puts into the tree changes
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def debootstrap_command(dest: Path, cache: Path | None = None) -> list[str]:
    """The debootstrap command line of the image builder (README.md, "Image builder")."""
    cmd = ["debootstrap", f"--variant={VARIANT}", "--include=" + ",".join(INCLUDE)]
    if cache is not None:
        cmd.append(f"--cache-dir={cache}")
    return [*cmd, SUITE, str(dest), MIRROR]


def _key() -> str:
    parts = [str(FORMAT), SUITE, VARIANT, *INCLUDE]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def run_in(root: Path, cmd: Sequence[str], *, env: Mapping[str, str] | None = None,
           timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` chrooted into ``root`` with a clean environment; never raises for its status."""
    full_env = {"PATH": PATH, "LANG": "C.UTF-8", "HOME": "/root", "DEBIAN_FRONTEND": "noninteractive",
                **(env or {})}
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    return subprocess.run([chroot, str(root), *cmd], env=full_env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def _build(dest: Path) -> None:
    guest.ensure_tools({"debootstrap": "debootstrap"})
    downloads = guest.cache_dir() / "debootstrap-debs"
    downloads.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    guest.run(debootstrap_command(dest, downloads), timeout=3600)
    log.info("debootstrap took %.0f s", time.monotonic() - start)


def real_system_tree() -> Path:
    """The cached bookworm tree (see the module docstring), built first when missing
    (debootstrap, 3-6 minutes with an empty download cache).  Read-only for callers."""
    final = guest.cache_dir() / "system" / f"bookworm-{_key()}"
    if final.is_dir():
        return final
    with guest._staging(final) as tmp:
        _build(tmp)
        tmp.chmod(0o755)  # a root directory's mode, not mkdtemp's
    return final


def kernel_release(tree: Path) -> str:
    """The release of the kernel installed in ``tree`` (``6.1.0-N-cloud-amd64``)."""
    images = sorted((tree / "boot").glob("vmlinuz-*"))
    if len(images) != 1:
        raise guest.VmError(f"expected one kernel in {tree}/boot, found {images}")
    return images[0].name.removeprefix("vmlinuz-")
