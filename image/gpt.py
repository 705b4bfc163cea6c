"""GUID partition tables: written here (a protective MBR, the primary and backup headers and
entry arrays), read back by the tests and by a test initramfs that resolves ``PARTUUID=``.

Layout (UEFI 2.10, chapter 5): LBA 0 a protective MBR; LBA 1 the header; LBA 2-33 128
entries of 128 bytes; the backup entries and header in the last 33 sectors.  GUIDs are
stored mixed-endian (``uuid.UUID.bytes_le``).  Every GUID of an image is derived from the
commit id (:func:`derived_guid`), so the table is the same at every build.
"""

from __future__ import annotations

import hashlib
import os
import struct
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

SECTOR = 512
ENTRIES = 128
ENTRY_SIZE = 128
ENTRY_SECTORS = ENTRIES * ENTRY_SIZE // SECTOR  # 32
FIRST_USABLE = 2 + ENTRY_SECTORS  # 34
SIGNATURE = b"EFI PART"
REVISION = 0x00010000

ESP_TYPE = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
#: "Linux filesystem data": the sysroot is not a root filesystem (the deployment is), so it
#: does not take the Discoverable Partitions root type that systemd would try to mount as /.
LINUX_DATA_TYPE = uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4")

# The header, 92 bytes, little-endian.
_HEADER = struct.Struct(
    "<8s"   # signature "EFI PART"
    "I"     # revision 1.0
    "I"     # header size (92)
    "I"     # CRC32 of the header, computed with this field 0
    "I"     # reserved, 0
    "Q"     # this header's LBA
    "Q"     # the other header's LBA
    "Q"     # first usable LBA
    "Q"     # last usable LBA
    "16s"   # disk GUID (mixed-endian)
    "Q"     # LBA of this header's entry array
    "I"     # number of entries
    "I"     # size of an entry
    "I"     # CRC32 of the entry array
)
# One entry, 128 bytes.
_ENTRY = struct.Struct(
    "<16s"  # partition type GUID
    "16s"   # unique partition GUID (PARTUUID)
    "Q"     # first LBA
    "Q"     # last LBA, inclusive
    "Q"     # attributes
    "72s"   # name, UTF-16LE, zero-padded
)


class GptError(ValueError):
    """A table that does not parse (raised by :func:`read_partitions` only)."""


@dataclass(frozen=True)
class Partition:
    type_guid: uuid.UUID
    guid: uuid.UUID
    first_lba: int
    last_lba: int  # inclusive
    name: str
    attributes: int = 0

    @property
    def offset(self) -> int:
        return self.first_lba * SECTOR

    @property
    def size(self) -> int:
        return (self.last_lba - self.first_lba + 1) * SECTOR


def derived_guid(purpose: str, seed: bytes) -> uuid.UUID:
    """A GUID that is a function of ``seed`` (the commit id) and ``purpose``: SHA-256 of both,
    the first 16 bytes with the version (4) and variant bits set, so tools take it for an
    ordinary random one."""
    digest = hashlib.sha256(b"sealtree-image\0" + purpose.encode() + b"\0" + seed).digest()
    return uuid.UUID(bytes=digest[:16], version=4)


def derived_bytes(purpose: str, seed: bytes, size: int) -> bytes:
    """``size`` bytes that are a function of ``seed`` and ``purpose`` (FAT volume ids)."""
    return hashlib.sha256(b"sealtree-image\0" + purpose.encode() + b"\0" + seed).digest()[:size]


def _entries(partitions: Sequence[Partition]) -> bytes:
    if len(partitions) > ENTRIES:
        raise ValueError(f"at most {ENTRIES} partitions")
    out = bytearray(ENTRIES * ENTRY_SIZE)
    for i, part in enumerate(partitions):
        name = part.name.encode("utf-16-le")
        if len(name) > 72:
            raise ValueError(f"partition name longer than 36 UTF-16 units: {part.name!r}")
        _ENTRY.pack_into(out, i * ENTRY_SIZE, part.type_guid.bytes_le, part.guid.bytes_le,
                         part.first_lba, part.last_lba, part.attributes, name)
    return bytes(out)


def _header(disk_guid: uuid.UUID, total_sectors: int, primary: bool, entries_crc: int) -> bytes:
    last = total_sectors - 1
    mine, other = (1, last) if primary else (last, 1)
    array = 2 if primary else last - ENTRY_SECTORS
    fields = [SIGNATURE, REVISION, _HEADER.size, 0, 0, mine, other, FIRST_USABLE,
              last - 1 - ENTRY_SECTORS, disk_guid.bytes_le, array, ENTRIES, ENTRY_SIZE, entries_crc]
    crc = zlib.crc32(_HEADER.pack(*fields))
    fields[3] = crc
    return _HEADER.pack(*fields).ljust(SECTOR, b"\0")


def _protective_mbr(total_sectors: int) -> bytes:
    mbr = bytearray(SECTOR)
    size = min(total_sectors - 1, 0xFFFFFFFF)
    # status, CHS first (0/0/2), type 0xEE, CHS last (saturated), first LBA 1, sectors
    mbr[446:462] = struct.pack("<B3sB3sII", 0, b"\x00\x02\x00", 0xEE, b"\xff\xff\xff", 1, size)
    mbr[510:512] = b"\x55\xaa"
    return bytes(mbr)


def last_usable_lba(total_sectors: int) -> int:
    return total_sectors - 2 - ENTRY_SECTORS


def write_table(fd: int, total_size: int, disk_guid: uuid.UUID, partitions: Sequence[Partition]) -> None:
    """Write the protective MBR, both headers and both entry arrays of a disk of ``total_size``
    bytes (a multiple of the sector size) into the open file ``fd``; nothing else is touched."""
    if total_size % SECTOR:
        raise ValueError(f"disk size {total_size} is not a multiple of {SECTOR}")
    total = total_size // SECTOR
    for part in partitions:
        if not FIRST_USABLE <= part.first_lba <= part.last_lba <= last_usable_lba(total):
            raise ValueError(f"partition {part.name!r} is outside the usable sectors")
    entries = _entries(partitions)
    crc = zlib.crc32(entries)
    os.pwrite(fd, _protective_mbr(total), 0)
    os.pwrite(fd, _header(disk_guid, total, True, crc) + entries, SECTOR)
    os.pwrite(fd, entries + _header(disk_guid, total, False, crc),
              (total - 1 - ENTRY_SECTORS) * SECTOR)


def read_partitions(data: bytes) -> tuple[uuid.UUID, list[Partition]]:
    """The disk GUID and the used entries of the primary table in ``data`` (at least the first
    34 sectors of a disk).  Raises GptError when the header or the entry array is damaged."""
    if len(data) < FIRST_USABLE * SECTOR:
        raise GptError(f"{len(data)} bytes: too short for a GPT")
    fields = list(_HEADER.unpack_from(data, SECTOR))
    if fields[0] != SIGNATURE:
        raise GptError(f"no GPT signature at LBA 1 (got {fields[0]!r})")
    crc, fields[3] = fields[3], 0
    if zlib.crc32(_HEADER.pack(*fields)) != crc:
        raise GptError("header CRC32 does not match")
    array, count, size = fields[10], fields[11], fields[12]
    if size != ENTRY_SIZE or count != ENTRIES or array != 2:
        raise GptError(f"unexpected entry array: LBA {array}, {count} entries of {size} bytes")
    entries = data[2 * SECTOR:2 * SECTOR + count * size]
    if zlib.crc32(entries) != fields[13]:
        raise GptError("entry array CRC32 does not match")
    out = []
    for i in range(count):
        type_guid, guid, first, last, attributes, name = _ENTRY.unpack_from(entries, i * size)
        if type_guid == bytes(16):
            continue
        out.append(Partition(uuid.UUID(bytes_le=type_guid), uuid.UUID(bytes_le=guid), first, last,
                             name.decode("utf-16-le").rstrip("\0"), attributes))
    return uuid.UUID(bytes_le=fields[9]), out
