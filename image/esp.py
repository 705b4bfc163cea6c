"""The EFI system partition: a FAT32 filesystem made with ``mkfs.vfat --invariant`` and filled
with mtools, never mounted, then copied into the disk file.

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
MIN_SIZE = 40 << 20  # FAT32 needs 65525 clusters: 512-byte ones, and the FATs and reserved sectors
SECTOR = 512


def _env(epoch: int) -> dict[str, str]:
    return {"SOURCE_DATE_EPOCH": str(epoch), "MTOOLS_SKIP_CHECK": "1"}


def make_esp(disk: str, offset: int, size: int, files: Mapping[str, str], volume_id: bytes,
             epoch: int, scratch: str) -> None:
    """Write a FAT filesystem of ``size`` bytes at ``offset`` of the file ``disk`` holding
    ``files`` (path on the ESP, ``/EFI/BOOT/BOOTX64.EFI`` -> host file): FAT32, which needs at
    least :data:`MIN_SIZE`.  It is made in the file ``scratch`` of exactly ``size`` bytes
    (mkfs.fat and mtools size a filesystem at an offset by the whole file, wrongly), then
    its data extents are copied into ``disk``: nothing outside the range is written."""
    if offset % SECTOR or size % 1024:
        raise ValueError("ESP offset must be whole sectors and size whole KiB")
    env = _env(epoch)
    with open(scratch, "xb") as handle:
        handle.truncate(size)
    try:
        # -h: the sectors before the partition, as a FAT boot sector of a partition records them
        run(["mkfs.vfat", "--invariant", "-F", "32", "-S", str(SECTOR), "-h", str(offset // SECTOR),
             "-i", volume_id.hex(), "-n", LABEL, scratch], env=env)
        directories = sorted({os.path.dirname(p) for p in files} - {"/"}, key=lambda d: d.split("/"))
        made: set[str] = set()
        for directory in directories:
            parts = directory.strip("/").split("/")
            for i in range(1, len(parts) + 1):
                path = "/" + "/".join(parts[:i])
                if path not in made:
                    run(["mmd", "-i", scratch, f"::{path}"], env=env)
                    made.add(path)
        for path in sorted(files):
            run(["mcopy", "-Q", "-i", scratch, files[path], f"::{path}"], env=env)
        copy_extents(scratch, disk, offset)
    finally:
        os.unlink(scratch)


def copy_extents(source: str, disk: str, offset: int) -> None:
    """Copy the data extents of ``source`` (SEEK_DATA/SEEK_HOLE) to ``offset`` of ``disk``;
    holes stay holes."""
    with open(source, "rb") as src, open(disk, "r+b") as dst:
        end = os.fstat(src.fileno()).st_size
        position = 0
        while position < end:
            try:
                start = os.lseek(src.fileno(), position, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            stop = os.lseek(src.fileno(), start, os.SEEK_HOLE)
            src.seek(start)
            dst.seek(offset + start)
            left = stop - start
            while left:
                chunk = src.read(min(left, 1 << 20))
                dst.write(chunk)
                left -= len(chunk)
            position = stop


