"""Site objects: a large file's content, zstd-compressed, named by the fs-verity digest of the
content (``remote.site.large_object``).

One zstd frame (or several, concatenated) declaring no dictionary, with a
window of at most 8 MiB, so that a reader's memory is bounded whatever a
server sends.  The compressed size is not signed: a reader accepts at most
``compress_bound(size)`` bytes for a file of ``size`` bytes (the largest a
zstd frame of that content can be), decompresses at most ``size`` bytes, and
accepts the object only when the content's size and fs-verity digest are the
ones the signed pack names.
"""

from __future__ import annotations

import contextlib
import hmac
import os
from typing import IO, BinaryIO, cast

import zstandard

from store.fsverity import VerityHasher
from store.inode_meta import apply_meta
from store.model import Meta

DEFAULT_LEVEL = 10  # about 40 MB/s on one core; level 19 saves ~5% more at a tenth of the speed
WINDOW_LOG = 23  # 8 MiB
MAX_WINDOW = 1 << WINDOW_LOG
CHUNK = 1 << 20


def compress_bound(size: int) -> int:
    """The most bytes a zstd frame of ``size`` bytes of content can take (ZSTD_COMPRESSBOUND),
    plus room for a frame header and block headers."""
    small = (128 << 10) - size >> 11 if size < (128 << 10) else 0
    return size + (size >> 8) + small + 64


def compressor(level: int = DEFAULT_LEVEL) -> zstandard.ZstdCompressor:
    params = zstandard.ZstdCompressionParameters.from_level(level, window_log=WINDOW_LOG,
                                                            write_content_size=True,
                                                            write_checksum=False, write_dict_id=False)
    return zstandard.ZstdCompressor(compression_params=params)


def compress(cctx: zstandard.ZstdCompressor, source: BinaryIO, out: BinaryIO, size: int) -> None:
    """Write ``size`` bytes of ``source`` to ``out`` as one zstd frame."""
    cctx.copy_stream(source, out, size=size, read_size=CHUNK, write_size=CHUNK)


def check_compressed(path: str, size: int, digest: bytes, content: str | None = None) -> str | None:
    """None when the compressed file at ``path`` holds ``size`` bytes whose fs-verity digest is
    ``digest``, else what is wrong.  With ``content``, the content is written there (a file
    that is removed again when the check fails)."""
    hasher = VerityHasher()
    dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
    out = open(content, "wb") if content is not None else None  # noqa: SIM115 - closed below
    try:
        with open(path, "rb") as src, dctx.stream_reader(src, read_size=CHUNK,
                                                           read_across_frames=True) as reader:
            while chunk := reader.read(CHUNK):
                if hasher.size + len(chunk) > size:
                    return f"decompresses to more than the signed size of {size} bytes"
                hasher.update(chunk)
                if out is not None:
                    out.write(chunk)
    except zstandard.ZstdError as err:
        return f"not a zstd stream of the object ({err})"
    finally:
        if out is not None:
            out.close()
    if hasher.size != size:
        return f"decompresses to {hasher.size} bytes, the signed size is {size}"
    got = hasher.digest()
    if not hmac.compare_digest(got, digest):
        return f"fs-verity digest {got.hex()}, the signed pack says {digest.hex()}"
    return None


def check_and_extract(path: str, size: int, digest: bytes, content: str) -> str | None:
    """``check_compressed`` writing the content to ``content``, removed again on failure."""
    wrong = check_compressed(path, size, digest, content)
    if wrong is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(content)
    return wrong


class _TooBig(Exception):
    pass


class _Sink:
    """Where the decompressor writes: the content, refused past ``size`` bytes, digested and
    written to a file in pieces of at least ``FLUSH`` bytes (a download arrives in small ones)."""

    FLUSH = 256 << 10

    def __init__(self, content: str, size: int) -> None:
        self.size = size
        self.received = 0
        self.hasher = VerityHasher()
        self.pending = bytearray()
        # unbuffered (pending is written by flush only): a sink given up on (a download
        # started over) leaves nothing that could land in the file its successor writes
        self.out = open(content, "wb", buffering=0)  # noqa: SIM115 - closed by Extracting.finish

    def write(self, chunk: bytes) -> int:
        self.received += len(chunk)
        if self.received > self.size:
            raise _TooBig
        self.pending += chunk
        if len(self.pending) >= self.FLUSH:
            self.flush()
        return len(chunk)

    def flush(self) -> None:
        self.hasher.update(self.pending)
        view = memoryview(self.pending)
        while view:
            view = view[self.out.write(view) or 0:]
        view.release()
        self.pending.clear()


class Extracting:
    """A hasher (``remote.http.Hasher``) fed an object's compressed bytes as they arrive: it
    decompresses them into ``content`` and fs-verity-digests the content in the same pass, so
    that the download is read once.  Never decompresses more than ``size`` bytes (output in
    ``CHUNK`` pieces, window at most ``MAX_WINDOW``); a failure is remembered, not raised, and
    ``finish`` says what was wrong (like ``check_compressed``) and removes ``content`` then;
    content that is right is given ``meta`` (owner, mode, xattrs) when there is one."""

    def __init__(self, content: str, size: int, meta: Meta | None = None) -> None:
        self.content = content
        self.meta = meta  # given to content's inode once it is checked
        self.wrong: str | None = None
        self._sink = _Sink(content, size)
        dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
        self._stream: zstandard.ZstdDecompressionWriter | None = dctx.stream_writer(
            cast(IO[bytes], self._sink), write_size=CHUNK, closefd=False)

    def update(self, data: bytes, /) -> None:
        if self.wrong is not None or self._stream is None:
            return
        try:
            self._stream.write(data)
        except _TooBig:
            self.wrong = f"decompresses to more than the signed size of {self._sink.size} bytes"
        except zstandard.ZstdError as err:
            self.wrong = f"not a zstd stream of the object ({err})"

    def digest(self) -> bytes:
        return self._sink.hasher.digest()

    def finish(self, digest: bytes) -> str | None:
        """None when what was fed decompressed to the signed size with fs-verity ``digest``
        (``content`` holds it), else what is wrong (``content`` is removed)."""
        self._stream = None  # the decompression context and its window go now
        out = self._sink.out
        try:
            if self.wrong is None:
                self._sink.flush()
            wrong, got_size, size = self.wrong, self._sink.hasher.size, self._sink.size
            if wrong is None and got_size != size:
                wrong = f"decompresses to {got_size} bytes, the signed size is {size}"
            if wrong is None:
                got = self._sink.hasher.digest()
                if not hmac.compare_digest(got, digest):
                    wrong = f"fs-verity digest {got.hex()}, the signed pack says {digest.hex()}"
            if wrong is None and self.meta is not None:
                apply_meta(out.fileno(), self.meta)  # while it is open: no second open
        finally:
            out.close()
        if wrong is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.content)
        return wrong
