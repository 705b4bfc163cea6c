"""Strict decompression of a tar stream: gzip, xz or zstd, every checksum checked.

``open_decompressed`` recognises the compression by its magic bytes and gives a
reader of the decompressed bytes.  The reader refuses, as a SourceError naming
the input, what the usual readers let through:

- a checksum that does not match: gzip's CRC-32 and ISIZE (zlib checks both in
  its gzip mode), xz's block check, index and footer, a zstd frame's content
  checksum when the frame carries one;
- a stream that ends early: a gzip member without its trailer, an xz stream
  without its footer, a zstd frame cut anywhere (its checksum included).  The
  decoders say so by not reaching their end (``eof`` false) when the input is
  exhausted;
- anything after the last member, stream or frame that is not another one (all
  three formats may be concatenated), except zero bytes after gzip and xz data
  (xz's stream padding; gzip files padded to a block size).

Reading to the end (``read`` returning ``b""``) is what checks the last
checksum: the caller reads on after the data it needs.  Memory stays bounded
whatever the compression ratio: at most ``OUTPUT_STEP`` bytes are produced at a
time (zstd's decoder has no such bound: it is fed one block at a time).
"""

from __future__ import annotations

import lzma
import queue
import threading
import zlib
from collections.abc import Callable
from typing import Protocol

from .errors import Name, SourceError

GZIP_MAGIC = b"\x1f\x8b"
XZ_MAGIC = b"\xfd7zXZ\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZSTD_SKIPPABLE = (0x184D2A50, 0x184D2A5F)  # little-endian magic range of skippable frames
BZIP2_MAGIC = b"BZh"

INPUT_STEP = 1 << 16
OUTPUT_STEP = 1 << 20


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Decoder(Protocol):
    """One gzip member, xz stream or zstd frame being decoded."""

    def step(self, data: bytes) -> bytes:
        """Take ``data`` (maybe b"") and return what it decodes to, at most about OUTPUT_STEP."""

    def has_output(self) -> bool:
        """Whether ``step(b"")`` may give more without new input."""

    def done(self) -> bool:
        """Whether the end of the member (its trailer, footer or checksum) was read and checked."""

    def unused(self) -> bytes:
        """The input after the member's end (once ``done``)."""


class _Gzip:
    def __init__(self) -> None:
        self.decoder = zlib.decompressobj(wbits=31)  # 16 + 15: a gzip member, CRC and ISIZE checked

    def step(self, data: bytes) -> bytes:
        tail = self.decoder.unconsumed_tail
        return self.decoder.decompress(tail + data if tail else data, OUTPUT_STEP)

    def has_output(self) -> bool:
        return bool(self.decoder.unconsumed_tail)

    def done(self) -> bool:
        return self.decoder.eof

    def unused(self) -> bytes:
        return self.decoder.unused_data


class _Xz:
    def __init__(self) -> None:
        self.decoder = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)

    def step(self, data: bytes) -> bytes:
        return self.decoder.decompress(data, OUTPUT_STEP)

    def has_output(self) -> bool:
        return not self.decoder.eof and not self.decoder.needs_input

    def done(self) -> bool:
        return self.decoder.eof

    def unused(self) -> bytes:
        return self.decoder.unused_data


class _Zstd:
    """A zstd frame, fed to the decoder a block at a time: a block decodes to at most
    128 KiB, so memory stays bounded however well the frame compresses (a 4-byte RLE block
    makes 128 KiB; python-zstandard's decoder has no bound on the output of one call)."""

    def __init__(self) -> None:
        import zstandard  # noqa: PLC0415 - imported by Decompressed, before any thread starts

        self.decoder = zstandard.ZstdDecompressor().decompressobj()
        self.waiting = b""  # input not given to the decoder yet
        self.framing = ZstdFraming()
        self.unit = 0  # bytes of the current unit (header, block, checksum) still to feed

    def step(self, data: bytes) -> bytes:
        self.waiting += data
        if not self.unit:
            self.unit = self.framing.next_unit(self.waiting)
            if not self.unit:  # the unit's own header is not all here yet
                return b""
        piece, self.waiting = self.waiting[:self.unit], self.waiting[self.unit:]
        self.unit -= len(piece)
        return self.decoder.decompress(piece)

    def has_output(self) -> bool:
        return (bool(self.waiting) and not self.decoder.eof
                and (self.unit > 0 or len(self.waiting) >= self.framing.needed()))

    def done(self) -> bool:
        return bool(self.decoder.eof)

    def unused(self) -> bytes:
        return bytes(self.decoder.unused_data) + self.waiting


class ZstdFraming:
    """Where the units of one zstd frame (RFC 8878) end: the frame header, each block
    (3-byte header and content), the checksum.  Only lengths are read here; the decoder
    checks everything else."""

    def __init__(self) -> None:
        self.state = "header"
        self.checksum = False

    def needed(self) -> int:
        """How many bytes ``next_unit`` needs to tell the next unit's length."""
        return {"header": 8, "block": 3}.get(self.state, 1)

    def next_unit(self, data: bytes) -> int:
        """The length of the unit that starts ``data``; 0 when more bytes are needed to tell."""
        if self.state == "header":
            return self._header(data)
        if self.state == "block":
            if len(data) < self.needed():
                return 0
            header = int.from_bytes(data[:3], "little")
            last, kind, size = header & 1, (header >> 1) & 3, header >> 3
            self.state = ("checksum" if self.checksum else "end") if last else "block"
            return 3 + (1 if kind == 1 else size)  # an RLE block holds one byte
        if self.state == "checksum":
            self.state = "end"
            return 4
        return len(data)  # after the frame: the decoder reports it as unused

    def _header(self, data: bytes) -> int:
        if len(data) < self.needed():
            return 0
        if not data.startswith(ZSTD_MAGIC):  # a skippable frame: magic, length, data
            self.state = "end"
            return 8 + int.from_bytes(data[4:8], "little")
        descriptor = data[4]
        single_segment = descriptor >> 5 & 1
        content_size = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
        self.checksum = bool(descriptor >> 2 & 1)
        self.state = "block"
        return 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 3] + content_size


def _is_zstd_frame(head: bytes) -> bool:
    if head.startswith(ZSTD_MAGIC):
        return True
    number = int.from_bytes(head[:4], "little")
    return len(head) >= 4 and ZSTD_SKIPPABLE[0] <= number <= ZSTD_SKIPPABLE[1]


class _Format:
    __slots__ = ("decoder", "starts_member", "magic_size", "zero_padding")

    def __init__(self, decoder: Callable[[], _Decoder], starts_member: Callable[[bytes], bool],
                 magic_size: int, zero_padding: bool) -> None:
        self.decoder = decoder
        self.starts_member = starts_member  # whether bytes begin a member, stream or frame
        self.magic_size = magic_size  # how many bytes starts_member needs
        self.zero_padding = zero_padding  # whether zero bytes may follow a member


_FORMATS = {
    "gzip": _Format(_Gzip, lambda head: head.startswith(GZIP_MAGIC), len(GZIP_MAGIC), True),
    "xz": _Format(_Xz, lambda head: head.startswith(XZ_MAGIC), len(XZ_MAGIC), True),
    "zstd": _Format(_Zstd, _is_zstd_frame, len(ZSTD_MAGIC), False),
}


class ChunkReader:
    """``read(size)`` over a source of chunks: ``_chunk()`` gives the next one, b"" at the end."""

    def __init__(self) -> None:
        self.chunk = b""  # the chunk being handed out, from ``offset``
        self.offset = 0
        self.ended = False

    def _chunk(self) -> bytes:
        raise NotImplementedError

    def read(self, size: int = -1, /) -> bytes:
        """Up to ``size`` bytes (all that is left for -1); b"" at the end."""
        parts = []
        want = size
        while want:
            if self.offset >= len(self.chunk):
                if self.ended:
                    break
                self.chunk, self.offset = self._chunk(), 0
                if not self.chunk:
                    self.ended = True
                    break
            available = len(self.chunk) - self.offset
            take = available if want < 0 else min(want, available)
            parts.append(self.chunk[self.offset:self.offset + take])
            self.offset += take
            if want > 0:
                want -= take
        return parts[0] if len(parts) == 1 else b"".join(parts)


class Decompressed(ChunkReader):
    """The decompressed bytes of ``source``; ``read`` returns b"" only at the checked end."""

    def __init__(self, source: Readable, compression: str, label: Name) -> None:
        super().__init__()
        self.source = source
        self.compression = compression
        self.label = label
        self.format = _FORMATS[compression]
        self.errors: tuple[type[Exception], ...] = (zlib.error, lzma.LZMAError)
        if compression == "zstd":
            import zstandard  # noqa: PLC0415 - for zstd input only: start-up time counts

            self.errors += (zstandard.ZstdError,)
        self.decoder: _Decoder | None = None
        self.pending = b""  # input read but not yet given to a decoder
        self.members = 0

    def _fail(self, what: str) -> SourceError:
        return SourceError(f"corrupt {self.compression} data: {what}", path=self.label)

    def _input(self) -> bytes:
        if self.pending:
            data, self.pending = self.pending, b""
            return data
        return self.source.read(INPUT_STEP)

    def _start(self) -> bool:
        """Begin the next member; False at the end of the input (after padding, if any)."""
        while len(self.pending) < self.format.magic_size:
            more = self.source.read(INPUT_STEP)
            if not more:
                break
            self.pending += more
        if not self.pending:
            return False
        if self.members and self.format.zero_padding:  # zero bytes may pad between and after
            while self.pending and self.pending.count(0) == len(self.pending):
                self.pending = self.source.read(INPUT_STEP)
            self.pending = self.pending.lstrip(b"\0")
            while self.pending and len(self.pending) < self.format.magic_size:
                more = self.source.read(INPUT_STEP)
                if not more:
                    break
                self.pending += more
            if not self.pending:
                return False
        if not self.format.starts_member(self.pending):
            raise self._fail(f"data after the end of the {self.compression} stream that "
                             f"does not start another one")
        self.decoder = self.format.decoder()
        self.members += 1
        return True

    def _chunk(self) -> bytes:
        """The next decoded bytes (never empty), or b"" at the end of the checked input."""
        while True:
            if self.decoder is None and not self._start():
                return b""
            decoder = self.decoder
            assert decoder is not None
            try:
                if decoder.has_output():
                    out = decoder.step(b"")
                else:
                    data = self._input()
                    if not data:
                        raise self._fail(f"the input ends inside a {self.compression} "
                                         f"{'frame' if self.compression == 'zstd' else 'stream'}"
                                         f" (truncated)")
                    out = decoder.step(data)
            except self.errors as err:
                raise self._fail(str(err)) from err
            if decoder.done():
                self.pending = decoder.unused() + self.pending
                self.decoder = None
            if out:
                return out



def compression_of(head: bytes) -> str:
    """The compression the first bytes of a stream show: gzip, xz, zstd or none.

    bzip2 is refused: SourceError (the caller names the input with ``located``).
    """
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(XZ_MAGIC):
        return "xz"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if head.startswith(BZIP2_MAGIC):
        raise SourceError("bzip2-compressed tar is not supported (plain, gzip, xz or zstd; "
                          "decompress it with bunzip2 first)")
    return "none"


class ReadAhead(ChunkReader):
    """``source`` read on a thread of its own, up to ``depth`` chunks ahead of the reader.

    Reading the input, hashing it and decompressing it (C code that lets go of the GIL)
    then overlap with what the reader does with the bytes.  An error of the source is
    raised to the reader, in order.  Use as a context manager: leaving stops the thread.
    """

    def __init__(self, source: Readable, step: int = OUTPUT_STEP, depth: int = 4) -> None:
        super().__init__()
        self.source = source
        self.step = step
        self.queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=depth)
        self.stopping = threading.Event()
        self.failed: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="read-ahead", daemon=True)
        self.thread.start()

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self.stopping.set()
        if kind is None:  # after a failure, a read blocked on a pipe must not hold us up
            self.thread.join()

    def _run(self) -> None:
        try:
            while not self.stopping.is_set():
                data = self.source.read(self.step)
                self._put(data)
                if not data:
                    return
        except BaseException as err:  # noqa: BLE001 - raised again by the reading thread
            self._put(err)

    def _put(self, item: bytes | BaseException) -> None:
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _chunk(self) -> bytes:
        if self.failed is not None:
            raise self.failed
        item = self.queue.get()
        if isinstance(item, BaseException):
            self.failed = item
            self.stopping.set()
            raise item
        return item
