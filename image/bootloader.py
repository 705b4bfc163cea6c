"""systemd-boot for the EFI system partition: Debian bookworm's ``systemd-boot-efi`` package,
fetched with ``apt-get download`` into a cache and extracted there, never installed on the
host (whose own boot is left alone).

The cache is the VM tests' (``$SEALTREE_VM_CACHE``, default ``~/.cache/sealtree-vm``):
``debs/systemd-boot-efi_<version>_amd64.deb`` and its extraction under ``trees/``.  Entries
are built beside their final place and renamed into it, so a reader never sees half of one.
Once cached, the same package is used by every build (the image is then reproducible); the
version used is reported with the image.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ImageError
from .run import run

PACKAGE = "systemd-boot-efi"
EFI_IN_PACKAGE = "usr/lib/systemd/boot/efi/systemd-bootx64.efi"
BOOT_LOADERS = ("systemd-boot",)


@dataclass(frozen=True)
class BootLoader:
    efi: Path  # systemd-bootx64.efi
    package: str  # the .deb it came from, e.g. systemd-boot-efi_252.39-1~deb12u2_amd64.deb


def cache_dir() -> Path:
    return Path(os.environ.get("SEALTREE_VM_CACHE") or Path.home() / ".cache" / "sealtree-vm")


def _cached_deb() -> Path | None:
    found = sorted((cache_dir() / "debs").glob(f"{PACKAGE}_*.deb"))
    return found[-1] if found else None


def _download() -> Path:
    debs = cache_dir() / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download.", dir=debs))
    try:
        run(["apt-get", "download", PACKAGE], cwd=str(tmp), timeout=1800, inherit=True)
        files = list(tmp.glob("*.deb"))
        if len(files) != 1:
            raise ImageError(f"apt-get download gave {len(files)} files", path=PACKAGE)
        os.replace(files[0], debs / files[0].name)
        return debs / files[0].name
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def systemd_boot() -> BootLoader:
    """systemd-boot's EFI binary, from the cached Debian package (downloaded when absent)."""
    deb = _cached_deb() or _download()
    final = cache_dir() / "trees" / deb.stem
    if not (final / EFI_IN_PACKAGE).is_file():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            run(["dpkg-deb", "-x", str(deb), str(tmp)])
            if not (tmp / EFI_IN_PACKAGE).is_file():
                raise ImageError(f"holds no {EFI_IN_PACKAGE}", path=str(deb))
            shutil.rmtree(final, ignore_errors=True)
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / EFI_IN_PACKAGE).is_file():  # another build put it there first
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return BootLoader(final / EFI_IN_PACKAGE, deb.name)
