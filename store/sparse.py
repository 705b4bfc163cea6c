"""Holes: files whose zero ranges take no disk, read and written without touching them.

A file's content is handled here as a sequence of *pieces*: bytes (data) or an
int (that many zero bytes, a hole).  ``fd_pieces`` reads an open file that
way, asking the filesystem where its holes are (``SEEK_DATA``/``SEEK_HOLE``)
so that a hole is never read; ``SparseWriter`` writes pieces to a new file,
seeking over holes (and over data chunks its caller found all zero), so that
they take no disk.  The content, and so its fs-verity digest
(``VerityHasher.update_zeros`` hashes a hole without making it), is the same
as if every zero had been written: holes are a matter of storage only.

``zero_runs`` finds the ranges a file's *content* leaves zero, whatever its
storage: what ``export --tar`` writes as holes (docs/FORMAT.md, "Sparse
files"), so that the same content gives the same archive.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

Piece = bytes | bytearray | memoryview | int  # data, or a run of that many zero bytes
HOLE_BLOCK = 4096  # what a hole in the content is made of (whole, aligned blocks)
# A run of zero blocks shorter than this is not a hole of the exported archive: holes are for
# sparse files (disk images, databases), and a map entry costs more than a few zero blocks.
EXPORT_HOLE_MIN = 1 << 20
CHUNK = 1 << 20
# Files smaller than this are copied without asking where their holes are.
SPARSE_MIN = 1 << 20
_ZEROS = bytes(CHUNK)
_ZERO_BLOCK = bytes(HOLE_BLOCK)
# What lseek(SEEK_DATA) fails with where the filesystem or kernel cannot tell holes.
_NO_HOLE_SUPPORT = (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ESPIPE)


def is_zero(data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` (at most CHUNK bytes) is all zero bytes; most data is told by its first
    or last byte, the rest by one comparison."""
    n = len(data)
    if not n:
        return True
    if data[0] or data[n - 1]:
        return False
    return bytes(data) == (_ZEROS if n == CHUNK else _ZEROS[:n])


def data_ranges(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """The (start, stop) ranges of ``fd`` between ``start`` and ``end`` that may hold data,
    as the filesystem tells them; the whole range when it cannot tell.  Moves the offset."""
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:  # only a hole from ``pos`` to the end of the file
                return
            if err.errno in _NO_HOLE_SUPPORT:
                yield pos, end
                return
            raise
        if data >= end:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        yield data, hole
        pos = hole


def has_holes(fd: int, start: int, size: int) -> bool:
    """Whether the file has a hole between ``start`` and ``size`` (its size), as the filesystem
    tells it (no, when it cannot).  Leaves the offset at ``start``."""
    try:
        return os.lseek(fd, start, os.SEEK_HOLE) < size
    except OSError as err:
        if err.errno in (errno.ENXIO, *_NO_HOLE_SUPPORT):
            return False
        raise
    finally:
        os.lseek(fd, start, os.SEEK_SET)


def fd_pieces(fd: int, buf: bytearray) -> Iterator[Piece]:
    """The content of ``fd`` from its offset to its end as pieces (views into ``buf``, valid
    until the next piece).  Holes the filesystem tells are ints, never read; without holes the
    file is read to EOF whatever its size was, as a plain copy would."""
    view = memoryview(buf)
    start = os.lseek(fd, 0, os.SEEK_CUR)
    size = os.fstat(fd).st_size
    if size - start <= len(buf) or not has_holes(fd, start, size):
        while n := os.readv(fd, [buf]):
            yield view[:n]
        return
    pos = start
    for data, hole in data_ranges(fd, start, size):
        if data > pos:
            yield data - pos
        pos = data
        while pos < hole:
            n = os.preadv(fd, [view[:min(len(buf), hole - pos)]], pos)
            if not n:  # the file shrank while being read: what was read is its content
                return
            yield view[:n]
            pos += n
    if size > pos:
        yield size - pos


class SparseWriter:
    """Writes pieces to ``fd`` (a new, empty file) from offset 0: holes are seeked over, and
    ``finish()`` sets the size, so that they take no disk."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = 0  # the content so far
        self.written = 0  # where the file offset is: the end of the last data written

    def zeros(self, count: int) -> None:
        self.size += count

    def data(self, chunk: bytes | bytearray | memoryview) -> None:
        """Write ``chunk`` (the caller leaves out what is_zero, as a hole, if it wants)."""
        if self.written != self.size:
            os.lseek(self.fd, self.size, os.SEEK_SET)
        view = memoryview(chunk)
        while view:
            view = view[os.write(self.fd, view):]
        self.size += len(chunk)
        self.written = self.size

    def finish(self) -> None:
        """Give the file its size when it ends in a hole."""
        if self.written != self.size:
            os.ftruncate(self.fd, self.size)


def copy_sparse(src: int, out: int) -> None:
    """Copy ``src`` from offset 0 into ``out`` (new, empty), its holes left holes."""
    os.lseek(src, 0, os.SEEK_SET)
    writer = SparseWriter(out)
    for piece in fd_pieces(src, bytearray(CHUNK)):
        if isinstance(piece, int):
            writer.zeros(piece)
        else:
            writer.data(piece)
    writer.finish()


def zero_runs(fd: int, size: int, minimum: int = EXPORT_HOLE_MIN) -> list[tuple[int, int]]:
    """The (start, stop) ranges of the content of ``fd`` (``size`` bytes) that are zero: maximal
    runs of whole, aligned HOLE_BLOCK blocks of zeros (the last, partial block counts when it
    is zero) of at least ``minimum`` bytes.  A function of the content only: the holes the
    filesystem tells are not read, the data around them is."""
    runs: list[tuple[int, int]] = []
    if size < minimum:
        return runs
    run_start = -1  # where the current run of zero blocks began, or -1

    def data_block(offset: int) -> None:
        nonlocal run_start
        if run_start >= 0 and offset - run_start >= minimum:
            runs.append((run_start, offset))
        run_start = -1

    buf = bytearray(CHUNK)
    view = memoryview(buf)
    pos = 0
    for data, hole in [*data_ranges(fd, 0, size), (size, size)]:
        first = data - data % HOLE_BLOCK
        if first > pos and run_start < 0:
            run_start = pos  # the hole before this data: zero blocks
        pos = max(pos, first)
        stop = min(size, -(-hole // HOLE_BLOCK) * HOLE_BLOCK)
        while pos < stop:
            n = os.preadv(fd, [view[:min(len(buf), stop - pos)]], pos)
            if not n:
                break
            if run_start < 0 and buf.find(_ZERO_BLOCK, 0, n) < 0 and n == len(buf):
                pos += n  # no zero block anywhere in this chunk (nor a run going on)
                continue
            for offset in range(0, n, HOLE_BLOCK):
                if is_zero(view[offset:min(n, offset + HOLE_BLOCK)]):
                    if run_start < 0:
                        run_start = pos + offset
                else:
                    data_block(pos + offset)
            pos += n
    data_block(size)
    return runs
