"""The EFI system partition: a FAT filesystem made with ``mkfs.vfat --invariant`` at an offset
of the disk file and filled with mtools, never mounted.

Reproducible: the volume id is given (derived from the commit), ``--invariant`` and
``SOURCE_DATE_EPOCH`` fix what mkfs.fat would take from the clock, mtools stamps every file
and directory with ``SOURCE_DATE_EPOCH`` (no ``-m``: the source files' own mtimes are not
used), and directories and files are created one by one in sorted order (``mcopy -s`` would
follow the source directory's readdir order).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .run import run

LABEL = "ESP"
SECTOR = 512


def _env(epoch: int) -> dict[str, str]:
    return {"SOURCE_DATE_EPOCH": str(epoch), "MTOOLS_SKIP_CHECK": "1"}


def make_esp(disk: str, offset: int, size: int, files: Mapping[str, str], volume_id: bytes,
             epoch: int) -> None:
    """Write a FAT filesystem of ``size`` bytes at ``offset`` of the file ``disk`` holding
    ``files`` (path on the ESP, ``/EFI/BOOT/BOOTX64.EFI`` -> host file); mkfs.fat picks the
    FAT type and cluster size for the size.  Nothing outside the range is written."""
    if offset % SECTOR or size % 1024:
        raise ValueError("ESP offset must be whole sectors and size whole KiB")
    env = _env(epoch)
    run(["mkfs.vfat", "--invariant", "-i", volume_id.hex(), "-n", LABEL,
         "--offset", str(offset // SECTOR), disk, str(size // 1024)], env=env)
    image = f"{disk}@@{offset}"
    directories = sorted({os.path.dirname(p) for p in files} - {"/"}, key=lambda d: d.split("/"))
    made: set[str] = set()
    for directory in directories:
        parts = directory.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            path = "/" + "/".join(parts[:i])
            if path not in made:
                run(["mmd", "-i", image, f"::{path}"], env=env)
                made.add(path)
    for path in sorted(files):
        run(["mcopy", "-Q", "-i", image, files[path], f"::{path}"], env=env)


def listing(disk: str, offset: int) -> str:
    """``mdir -/ -a`` of the ESP at ``offset`` (for reports and tests)."""
    return run(["mdir", "-/", "-a", "-i", f"{disk}@@{offset}", "::/"], env=_env(0))


def read_file(disk: str, offset: int, path: str) -> bytes:
    """The bytes of ``path`` on the ESP at ``offset`` of ``disk``."""
    return run(["mtype", "-i", f"{disk}@@{offset}", f"::{path}"], env=_env(0)).encode(
        "utf-8", "surrogateescape")


def replace_file(disk: str, offset: int, path: str, source: str, epoch: int) -> None:
    """Overwrite ``path`` on the ESP with the host file ``source`` (a test selects another
    default entry of a copy of the image this way, as an administrator would)."""
    run(["mcopy", "-o", "-Q", "-i", f"{disk}@@{offset}", source, f"::{path}"], env=_env(epoch))
