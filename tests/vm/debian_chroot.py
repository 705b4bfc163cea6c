"""A Debian bookworm chroot with the real initramfs-tools, to build initramfs images as a distribution does.

:func:`initramfs_chroot` is ``debootstrap --variant=minbase`` with initramfs-tools,
python3 and the verifier's Debian packages, plus the guest kernel's files
(:func:`tests.vm.guest.kernel`, the cached 6.1 ``linux-image`` package: its module
tree with ``depmod`` run, ``/boot/vmlinuz-*`` and ``config-*``), so that
``update-initramfs`` works without the large ``linux-image-amd64`` install.  It is cached under the vm cache
(``chroots/``), built beside its final place and renamed into it.

:func:`writable_chroot` mounts an overlay over the cached chroot (so each test
writes only to its own upper directory) with proc, sysfs and /dev, and
unmounts all of it on the way out.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.vm import guest, scenario

log = logging.getLogger(__name__)

SUITE = "bookworm"
MIRROR = os.environ.get("SEALTREE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
#: What an image that boots through sealtree needs for its initramfs: initramfs-tools and
#: the verifier's Python packages (python3-cffi-backend named too: debootstrap does not
#: resolve the virtual python3-cffi-backend-api-* the others depend on).  No busybox:
#: debootstrap installs no Recommends, so the initramfs gets klibc's tools, as a minimal
#: system's does.
INCLUDE: tuple[str, ...] = ("initramfs-tools", "python3", "python3-cffi-backend", "python3-cryptography",
                            "python3-zstandard", "python3-xattr", "zstd")
FORMAT = 2  # bump when what the builder puts into the chroot changes
ROOT = Path(__file__).resolve().parents[2]
INTEGRATION = ROOT / "integration" / "initramfs-tools"
#: Where Debian's python3 imports locally installed modules from (what ``pip install`` uses).
SITE = "usr/local/lib/python3.11/dist-packages"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _key() -> str:
    parts = [str(FORMAT), SUITE, *INCLUDE, guest.kernel().release]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def chroot_command() -> str:
    return shutil.which("chroot") or "/usr/sbin/chroot"


def run_in(root: Path, cmd: Sequence[str], *, env: Mapping[str, str] | None = None,
           timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` chrooted into ``root`` with a clean environment; never raises for its status."""
    full_env = {"PATH": PATH, "LANG": "C.UTF-8", "HOME": "/root", **(env or {})}
    return subprocess.run([chroot_command(), str(root), *cmd], env=full_env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def _build(dest: Path) -> None:
    guest.ensure_tools({"debootstrap": "debootstrap"})
    start = time.monotonic()
    guest.run(["debootstrap", "--variant=minbase", "--include=" + ",".join(INCLUDE), SUITE, dest, MIRROR],
              timeout=3600)
    log.info("debootstrap took %.0f s", time.monotonic() - start)
    kernel = guest.kernel()
    package = kernel.modules_dir.parents[3]  # <tree>/lib/modules/<release>/kernel
    modules = dest / "usr" / "lib" / "modules" / kernel.release
    modules.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(package / "lib" / "modules" / kernel.release, modules, symlinks=True)
    # The kernel image and its config, as linux-image installs them (update-initramfs -u
    # finds the kernels to update by their /boot/vmlinuz-*).
    for name in (f"vmlinuz-{kernel.release}", f"config-{kernel.release}"):
        shutil.copy2(package / "boot" / name, dest / "boot" / name)
    done = run_in(dest, ["depmod", kernel.release])
    if done.returncode != 0:
        raise guest.VmError(f"depmod in the chroot failed: {done.stderr}")
    (dest / "etc" / "apt" / "apt.conf.d" / "99-sealtree-test").write_text(
        'APT::Install-Recommends "false";\n')


def initramfs_chroot() -> Path:
    """The cached chroot (see the module docstring), built first when missing (a few minutes)."""
    final = guest.cache_dir() / "chroots" / f"bookworm-initramfs-{_key()}"
    if final.is_dir():
        return final
    with guest._staging(final) as tmp:
        _build(tmp)  # debootstrap into the empty staging directory, renamed into place after
        tmp.chmod(0o755)  # a root directory's mode, not mkdtemp's
    return final


@contextlib.contextmanager
def chroot_mounts(root: Path) -> Iterator[Path]:
    """proc, sysfs and the host's /dev mounted in ``root`` (what update-initramfs and dpkg
    want), all unmounted on the way out (a tree is never committed with them)."""
    mounted: list[Path] = []
    try:
        for fstype, target in (("proc", "proc"), ("sysfs", "sys")):
            guest.run(["mount", "-t", fstype, fstype, root / target])
            mounted.append(root / target)
        guest.run(["mount", "--rbind", "/dev", root / "dev"])
        guest.run(["mount", "--make-rslave", root / "dev"])
        mounted.append(root / "dev")
        yield root
    finally:
        for point in reversed(mounted):
            subprocess.run(["umount", "-R", "-l", str(point)], check=False, capture_output=True)


@contextlib.contextmanager
def overlay_view(base: Path, work: Path) -> Iterator[Path]:
    """A writable view of the cached tree ``base``: overlayfs, upper directory in ``work``."""
    upper, workdir, merged = work / "upper", work / "work", work / "root"
    for d in (upper, workdir, merged):
        d.mkdir(parents=True)
    guest.run(["mount", "-t", "overlay", "overlay", "-o",
               f"lowerdir={base},upperdir={upper},workdir={workdir}", merged])
    try:
        yield merged
    finally:
        subprocess.run(["umount", "-l", str(merged)], check=False, capture_output=True)


@contextlib.contextmanager
def writable_chroot(base: Path, work: Path) -> Iterator[Path]:
    """Yield a writable view of chroot ``base`` (an overlay, upper layer in ``work``) with
    /proc, /sys and /dev mounted; everything is unmounted on the way out."""
    with overlay_view(base, work) as merged, chroot_mounts(merged):
        yield merged


# -- sealtree in the chroot, as README.md installs it ---------------------------------------------

def write_vendor_floor(sysroot: scenario.Sysroot, out: Path) -> str:
    """The vendor's release step: the floor from the signed packs it still boots (B and C)."""
    done = subprocess.run([sys.executable, "-m", "overlay.boot_floor", "write", str(sysroot.pack("B")),
                           str(sysroot.pack("C")), "--keys", str(sysroot.keyring), "-o", str(out)],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def install_sealtree(root: Path, sysroot: scenario.Sysroot, boot_conf: str, floor: Path | None) -> None:
    """README.md's install steps, into the chroot ``root``."""
    guest.python_sources(ROOT, ["store", "pack", "overlay"], root / SITE)
    for src, dest in ((INTEGRATION / "hooks" / "sealtree", "etc/initramfs-tools/hooks/sealtree"),
                      (INTEGRATION / "scripts" / "local-bottom" / "sealtree",
                       "etc/initramfs-tools/scripts/local-bottom/sealtree"),
                      (INTEGRATION / "sealtree-boot", "usr/share/sealtree/sealtree-boot")):
        (root / dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, root / dest)
        (root / dest).chmod(0o755)
    keys = root / "etc/sealtree/keys"
    keys.mkdir(parents=True, exist_ok=True)
    shutil.copy(sysroot.keyring / "vendor.pub", keys / "vendor.pub")
    (root / "etc/sealtree/boot.conf").write_text(boot_conf)
    if floor is not None:
        shutil.copy(floor, root / "etc/sealtree/freshness.json")


@dataclass(frozen=True)
class Initramfs:
    """One ``update-initramfs`` run in the chroot and its image unpacked."""

    output: str  # update-initramfs's stdout and stderr
    seconds: float
    image: Path  # on the host
    unpacked: Path  # on the host; inside the chroot at /tmp/<name>


def update_initramfs(root: Path, mode: str, name: str) -> Initramfs:
    """``update-initramfs -c|-u -k RELEASE`` in the chroot, then ``unmkinitramfs`` of its image."""
    start = time.monotonic()
    done = run_in(root, ["update-initramfs", mode, "-k", guest.kernel().release])
    seconds = time.monotonic() - start
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return unpack_initramfs(root, name, output, seconds)


def unpack_initramfs(root: Path, name: str, output: str = "", seconds: float = 0.0) -> Initramfs:
    """``unmkinitramfs`` of the chroot's initramfs into its /tmp/``name``."""
    release = guest.kernel().release
    unpacked = root / "tmp" / name
    shutil.rmtree(unpacked, ignore_errors=True)
    done = run_in(root, ["unmkinitramfs", f"/boot/initrd.img-{release}", f"/tmp/{name}"])
    assert done.returncode == 0, done.stdout + done.stderr
    if (unpacked / "main").is_dir():  # early (microcode) and main archives
        unpacked = unpacked / "main"
    return Initramfs(output, seconds, root / "boot" / f"initrd.img-{release}", unpacked)
