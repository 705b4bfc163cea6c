"""A pack's expanded form (its frames decompressed), the reference a pack delta is made
against, and the level and gzip tables of a delta's carried form (see pack.delta and
FORMAT.md 12).

Expanded form: the pack with every zstd frame replaced by its content.  Reference: the
expanded form followed by the contents of the pack's inline gzip files, so that a changed
gzip file can be sent as the change of its text.  Carried form (version 2): the level table
(the zstd level of each of the new pack's frames), the gzip table, then the new pack's
expanded form with the inline gzip files the table names replaced by their contents
(version 1: no level table, and gzip entries without their ``how``).
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

from store.deflate_blocks import Block
from store.errors import PackError
from store.object_delta import GzipRebuild, gunzip_member, gzip_recipe

from . import format as fmt
from .manifest import ManifestEntry, check_manifest

MAX_EXPANDED = 128 << 20  # a reference or carried form: the device holds the old reference
# The payload starts (version 2) with the level table: frame count, then one zstd level per
# frame.  Then the gzip table: entry count, then per entry: offset in the inline data, gzip
# file size, inflated size, gzip header, block count, (version 2:) how the blocks are made
# (store.object_delta.GzipRebuild), then that many blocks: content bytes and deflate block
# type (store.deflate_blocks)
LEVEL_COUNT = struct.Struct("<I")
GZ_COUNT = struct.Struct("<I")
GZ_ENTRY_V1 = struct.Struct("<QII10sH")
GZ_ENTRY = struct.Struct("<QII10sHB")
GZ_BLOCK = struct.Struct("<IB")
MAX_GZ_BLOCKS = 0xFFFF
GZIP_MAGIC = b"\x1f\x8b\x08"


@dataclass(frozen=True)
class Layout:
    """Where a pack's frames are: the bytes before them, each frame's sizes (manifest frames
    first), and the header."""

    prefix_size: int
    frames: list[fmt.Frame]
    header: fmt.Header

    @property
    def data_start(self) -> int:
        """Where the inline data starts in the expanded form."""
        return self.prefix_size + self.header.manifest_size


def count_end(head: bytes, file_size: int) -> int:
    """How much of a pack's start ``declared_prefix_size`` needs (``head`` holds at least the
    header): the header, and in version 3 up to the image object count."""
    header = fmt.parse_header(head[:fmt.HEADER_SIZE], file_size)
    if header.has_image_objects:
        return header.image_objects_offset + fmt.IMAGE_COUNT_SIZE
    return fmt.HEADER_SIZE


def _header(head: bytes, file_size: int) -> fmt.Header:
    """The header, with its image object count in version 3 (``head`` reaches ``count_end``)."""
    header = fmt.parse_header(head[:fmt.HEADER_SIZE], file_size)
    if header.has_image_objects:
        at = header.image_objects_offset
        header = fmt.parse_image_count(head[at:at + fmt.IMAGE_COUNT_SIZE], header, file_size)
    return header


def parse_layout(prefix_head: bytes, file_size: int) -> Layout:
    """Parse a pack's header and frame tables (``prefix_head`` holds at least the header and,
    once known, the tables), checked as ``pack.reader`` checks them."""
    header = _header(prefix_head, file_size)
    if header.has_image_objects:
        at = header.image_objects_offset + fmt.IMAGE_COUNT_SIZE
        fmt.parse_image_objects(prefix_head[at:header.tables_offset], header)
    at = header.tables_offset
    tables = prefix_head[at:at + header.tables_size]
    split = header.manifest_frames * fmt.FRAME_ENTRY_SIZE
    manifest, end = fmt.parse_frame_table(tables[:split], header.manifest_frames,
                                          at + header.tables_size, at, "manifest")
    fmt.check_manifest_frames(manifest, header, at)
    data, end = fmt.parse_frame_table(tables[split:], header.data_frames, end, at + split, "data")
    fmt.check_data_frames(data, header, at + split)
    fmt.check_layout(end, file_size)
    return Layout(at + header.tables_size, manifest + data, header)


def declared_prefix_size(head: bytes, file_size: int) -> int:
    """The size of the pack's bytes before its frames; ``head`` reaches ``count_end``."""
    header = _header(head, file_size)
    return header.tables_offset + header.tables_size


def expanded_size_of(layout: Layout) -> int:
    return layout.prefix_size + sum(f.size for f in layout.frames)


def _read_exactly(handle: BinaryIO, n: int, what: str) -> bytes:
    data = handle.read(n)
    if len(data) != n:
        raise PackError(f"truncated {what}: need {n} bytes, got {len(data)}")
    return data


@dataclass(frozen=True)
class Expanded:
    """A pack's expanded form, where its parts are, and the pack's SHA-256 and size."""

    data: bytes
    layout: Layout
    sha256: bytes
    size: int

    def inline_files(self) -> list[tuple[ManifestEntry, bytes]]:
        """Each inline file's manifest row and bytes, in manifest order."""
        header = self.layout.header
        start = self.layout.prefix_size
        rows: list[ManifestEntry] = []
        check_manifest([self.data[start:start + header.manifest_size]], header.entry_count,
                       header.inline_max, keep=rows)
        base = self.layout.data_start
        return [(row, self.data[base + row.offset:base + row.offset + row.entry.size])
                for row in rows if row.inline]


def expand_pack(path: str | os.PathLike[str]) -> Expanded:
    """The expanded form of the pack at ``path`` (every frame decompressed, in place), with
    the pack's SHA-256 and size, in one pass.  PackError if it is not a well-formed pack or
    its expanded form exceeds MAX_EXPANDED."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        sha = hashlib.sha256()
        head = _read_exactly(handle, min(fmt.HEADER_SIZE, size), "pack header")
        head += _read_exactly(handle, count_end(head, size) - len(head), "pack header")
        rest = _read_exactly(handle, declared_prefix_size(head, size) - len(head), "pack header")
        prefix = head + rest
        layout = parse_layout(prefix, size)
        total = expanded_size_of(layout)
        if total > MAX_EXPANDED:
            raise PackError(f"expands to {total} bytes, a delta allows {MAX_EXPANDED}",
                            path=os.fspath(path))
        sha.update(prefix)
        out = bytearray(prefix)
        dctx = fmt.decompressor()
        for i, frame in enumerate(layout.frames):
            raw = _read_exactly(handle, frame.compressed, f"frame {i}")
            sha.update(raw)
            out += fmt.decompress_frame(dctx, raw, frame, f"frame {i}")
        if handle.read(1):
            raise PackError("grew while it was read", path=os.fspath(path))
    return Expanded(bytes(out), layout, sha.digest(), size)


def reference(old: Expanded) -> bytes:
    """What a delta is compressed against: the old pack's expanded form, then the contents
    of its inline gzip files (in manifest order, while the whole stays within MAX_EXPANDED),
    so that a changed gzip file can be sent as the change of its text."""
    parts = [old.data]
    total = len(old.data)
    for _row, data in old.inline_files():
        inner = gunzip_member(data) if data[:3] == GZIP_MAGIC else None
        if inner is not None and total + len(inner) <= MAX_EXPANDED:
            parts.append(inner)
            total += len(inner)
    return b"".join(parts)


# -- the gzip table: inline gzip files the payload carries as their contents ------------------

@dataclass(frozen=True)
class GzipEntry:
    """An inline gzip file of the new pack that the payload carries inflated."""

    offset: int  # in the inline data
    size: int  # of the gzip file
    inner_size: int
    gzip_header: bytes
    blocks: tuple[Block, ...]
    how: GzipRebuild = GzipRebuild.REENCODE

    def encode(self) -> bytes:
        return GZ_ENTRY.pack(self.offset, self.size, self.inner_size, self.gzip_header,
                             len(self.blocks), self.how) + b"".join(
            GZ_BLOCK.pack(b.size, b.kind) for b in self.blocks)


def gzip_entries(old: Expanded, new: Expanded) -> list[tuple[GzipEntry, bytes]]:
    """The new pack's inline gzip files that the old one lacks and that their contents rebuild
    exactly (store.object_delta.gzip_recipe), with those contents."""
    have = {row.entry.digest for row, _data in old.inline_files()}
    entries = []
    for row, data in new.inline_files():
        if row.entry.digest in have or data[:3] != GZIP_MAGIC:
            continue
        recipe = gzip_recipe(data)
        if recipe is not None and len(recipe.blocks) <= MAX_GZ_BLOCKS:
            entries.append((GzipEntry(row.offset, len(data), len(recipe.inner), data[:10],
                                      recipe.blocks, recipe.how), recipe.inner))
    return entries


def carried(new: Expanded, entries: list[tuple[GzipEntry, bytes]], levels: list[int]) -> bytes:
    """The payload's content: the level table (one per frame of ``new``), the gzip table,
    then the new expanded form with each entry's gzip bytes replaced by its contents."""
    table = (LEVEL_COUNT.pack(len(levels)) + bytes(levels) + GZ_COUNT.pack(len(entries))
             + b"".join(entry.encode() for entry, _ in entries))
    base = new.layout.data_start
    parts = [table, new.data[:base]]
    at = 0
    for entry, inner in entries:
        parts.append(new.data[base + at:base + entry.offset])
        parts.append(inner)
        at = entry.offset + entry.size
    parts.append(new.data[base + at:])
    return b"".join(parts)
