"""Object deltas: a large file's new content rebuilt from the device's old object.

A package upgrade changes a library or a binary a little; shipping the whole new
object wastes most of its bytes.  An object delta names the old object (size and
fs-verity digest), the new one (size and fs-verity digest) and carries a payload
that turns one into the other.  Nothing in a delta is trusted: the rebuilt bytes
are accepted only when their fs-verity digest equals the digest the caller
expects (the one the signed pack names), so a bad delta can only fail.

Layout (version 1; integers little-endian)::

    header      _HEADER below (136 bytes)
    payload     payload_size bytes, by method:
                  zstd:   one zstd frame whose content is the new (inner) bytes, compressed
                          with the old (inner) bytes as a raw-content dictionary, the idea of
                          ``zstd --patch-from``;
                  bsdiff: one zstd frame whose content is ``control | diff | extra``: the
                          control block is ``count`` x (add u64, copy u64, seek i64), see
                          ``_bspatch`` (bsdiff 4's scheme, without its bzip2 containers)

With ``FLAG_GZIP`` both objects are gzip files, the payload works on their
decompressed ("inner") contents, and the new object is rebuilt as the 10-byte
gzip header carried in the delta, raw deflate at ``DEFLATE_LEVEL`` (zlib), then
CRC-32 and size: a delta is only made so when that reproduces the new object
exactly, which it does for Debian's ``gzip -9n`` man pages and changelogs of a
few KiB (compressed bytes do not delta; their contents do).  GNU gzip cuts its
deflate blocks elsewhere than zlib; the block table says where, and
``GzipRebuild`` how the device makes them again: zlib itself, told to end a
block at each of them (``FLAG_FLUSH``, version 2; ``FLAG_MEM9``: with zlib's
memLevel 9, whose blocks hold up to 32767 symbols as gzip's), or zlib's parse
re-encoded in Python (``store.deflate_blocks``, version 1's only way, some 40
times slower).  The maker picks the first that reproduces the object.

Checks, in this order (any failure: ``DeltaError`` naming the delta file):
length >= header, magic, version, flags, method, sizes against ``MAX_OBJECT``,
window, payload size = what follows the header; the source's size and
fs-verity digest; the payload decodes to exactly the inner result size (memory
bounded by the declared sizes, never by what the payload claims); the result's
size and fs-verity digest equal the header's and the expected one.

Memory: the old object, its inner content, the new inner content and the new
object, each at most ``MAX_OBJECT`` (64 MiB): at most 4 x 64 MiB plus the
payload (bsdiff: plus the old bytes its controls add to, at most the result's
size); a larger object gets no delta (it is fetched whole).
"""

from __future__ import annotations

import enum
import hmac
import os
import struct
import zlib
from dataclasses import dataclass

import zstandard

from . import deflate_blocks
from .atomic import atomic_file
from .deflate_blocks import Block
from .errors import DeltaError, FormatError, Name
from .fsverity import digest_bytes

MAGIC = b"SEALODLT"
VERSION = 2  # written only when a version-2 flag is set; otherwise version 1 (older readers)
SUPPORTED_VERSIONS = (1, 2)
FLAG_GZIP = 1
FLAG_FLUSH = 2  # version 2: the block table is rebuilt by zlib's own block flushes
FLAG_MEM9 = 4  # version 2, with FLAG_FLUSH: zlib's memLevel 9 instead of 8
KNOWN_FLAGS = FLAG_GZIP | FLAG_FLUSH | FLAG_MEM9
V1_FLAGS = FLAG_GZIP
MAX_OBJECT = 64 << 20  # source and result, raw and inner: what the device holds in memory
MAX_WINDOW_LOG = 27  # a zstd window of at most 128 MiB (covers dictionary + result)
DEFAULT_LEVEL = 19
DEFLATE_LEVEL = 9
GZIP_HEADER_SIZE = 10
MAX_APPLY_WORKERS = 8


class Method(enum.IntEnum):
    """How the payload encodes the new (inner) content."""

    ZSTD = 1
    BSDIFF = 2


class GzipRebuild(enum.IntEnum):
    """How a gzip file's deflate blocks are made again from its content and block table."""

    REENCODE = 0  # zlib's LZ77 parse re-encoded in the listed blocks (store.deflate_blocks)
    FLUSH = 1  # zlib, its block ended (Z_BLOCK) at every listed block end; memLevel 8
    FLUSH_MEM9 = 2  # the same with memLevel 9


_REBUILD_FLAGS = {GzipRebuild.REENCODE: 0, GzipRebuild.FLUSH: FLAG_FLUSH,
                  GzipRebuild.FLUSH_MEM9: FLAG_FLUSH | FLAG_MEM9}


# magic, format version, flags (FLAG_GZIP), method (Method), zstd window log of the payload,
# reserved (u16, zero), block count (FLAG_GZIP: entries of the block table, 0 when zlib alone
# rebuilds the stream; else 0), source size, source fs-verity digest, result size,
# result fs-verity digest, gzip header of the result (FLAG_GZIP; else zeros),
# source inner size, result inner size (decompressed under FLAG_GZIP; else = the sizes),
# payload size
_HEADER = struct.Struct("<8sHHBBHIQ32sQ32s10sQQQ")
# one block of the result's deflate stream: content bytes in it, block type (store.deflate_blocks)
_BLOCK = struct.Struct("<IB")
MAX_BLOCKS = 1 << 20
HEADER_SIZE = _HEADER.size
# bsdiff payload: number of control triples, diff bytes, extra bytes
_BSDIFF_COUNTS = struct.Struct("<QQQ")
# one control triple: bytes to add from old+diff, bytes to copy from extra, seek in old
_CONTROL = struct.Struct("<QQq")


@dataclass(frozen=True, slots=True)
class ObjectDeltaHeader:
    """What a delta says it turns into what."""

    flags: int
    method: Method
    window_log: int
    source_size: int
    source_digest: bytes
    result_size: int
    result_digest: bytes
    gzip_header: bytes
    source_inner_size: int
    result_inner_size: int
    payload_size: int
    blocks: tuple[Block, ...] = ()

    @property
    def payload_offset(self) -> int:
        return HEADER_SIZE + len(self.blocks) * _BLOCK.size

    @property
    def how(self) -> GzipRebuild:
        if not self.flags & FLAG_FLUSH:
            return GzipRebuild.REENCODE
        return GzipRebuild.FLUSH_MEM9 if self.flags & FLAG_MEM9 else GzipRebuild.FLUSH

    @property
    def version(self) -> int:
        return 1 if not self.flags & ~V1_FLAGS else VERSION

    def encode(self) -> bytes:
        table = b"".join(_BLOCK.pack(b.size, b.kind) for b in self.blocks)
        return _HEADER.pack(MAGIC, self.version, self.flags, self.method, self.window_log, 0,
                            len(self.blocks),
                            self.source_size, self.source_digest, self.result_size,
                            self.result_digest, self.gzip_header, self.source_inner_size,
                            self.result_inner_size, self.payload_size) + table


def _fail(message: str, path: Name | None, offset: int | None = None) -> DeltaError:
    return DeltaError(message, path=path, offset=offset)


def parse_header(data: bytes, file_size: int, path: Name | None = None) -> ObjectDeltaHeader:
    """Check the header and block table (``data`` holds at least both): length, magic,
    version, flags, method, sizes, block table, payload size."""
    if len(data) < HEADER_SIZE:
        raise _fail(f"truncated object delta: need {HEADER_SIZE} header bytes, got {len(data)}",
                    path, 0)
    (magic, version, flags, method, window_log, reserved, block_count, source_size, source_digest,
     result_size, result_digest, gzip_header, source_inner, result_inner,
     payload_size) = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise _fail(f"not an object delta: magic {magic!r}, expected {MAGIC!r}", path, 0)
    if version not in SUPPORTED_VERSIONS:
        raise _fail(f"unsupported object delta version: expected one of {SUPPORTED_VERSIONS}, "
                    f"got {version}", path, 8)
    if flags & ~(KNOWN_FLAGS if version >= 2 else V1_FLAGS) or reserved:
        raise _fail(f"unknown flags {flags:#x} or reserved bytes set", path, 10)
    if method not in Method.__members__.values():
        raise _fail(f"unknown method {method}", path, 12)
    if not 10 <= window_log <= MAX_WINDOW_LOG:
        raise _fail(f"window log {window_log} not in 10..{MAX_WINDOW_LOG}", path, 13)
    for name, size in (("source", source_size), ("result", result_size),
                       ("source inner", source_inner), ("result inner", result_inner)):
        if size > MAX_OBJECT:
            raise _fail(f"{name} size {size} exceeds {MAX_OBJECT}", path, 20)
    if not flags & FLAG_GZIP and (source_inner, result_inner, gzip_header) != (
            source_size, result_size, bytes(GZIP_HEADER_SIZE)):
        raise _fail("inner sizes or gzip header set without the gzip flag", path, 116)
    if block_count and not flags & FLAG_GZIP or block_count > MAX_BLOCKS:
        raise _fail(f"block table of {block_count} entries (gzip flag {flags & FLAG_GZIP})", path, 16)
    if flags & (FLAG_FLUSH | FLAG_MEM9) and (not block_count or not flags & FLAG_FLUSH):
        raise _fail(f"flags {flags:#x}: zlib flushes need a block table (and memLevel 9 the "
                    f"flush flag)", path, 10)
    table_end = HEADER_SIZE + block_count * _BLOCK.size
    if payload_size != file_size - table_end:
        raise _fail(f"object delta is {file_size} bytes, its header, block table and payload add "
                    f"up to {table_end + payload_size}", path, 128)
    if len(data) < table_end:
        raise _fail(f"truncated block table: need {table_end} bytes, got {len(data)}", path,
                    HEADER_SIZE)
    blocks = tuple(Block(*_BLOCK.unpack_from(data, HEADER_SIZE + i * _BLOCK.size))
                   for i in range(block_count))
    if any(b.kind not in (deflate_blocks.STORED, deflate_blocks.FIXED, deflate_blocks.DYNAMIC)
           for b in blocks):
        raise _fail("unknown deflate block type in the block table", path, HEADER_SIZE)
    return ObjectDeltaHeader(flags, Method(method), window_log, source_size, source_digest,
                             result_size, result_digest, gzip_header, source_inner, result_inner,
                             payload_size, blocks)


# -- gzip: deltas of what is inside ----------------------------------------------------------

def gunzip_member(data: bytes) -> bytes | None:
    """The content of a single-member gzip file of at most MAX_OBJECT bytes; None otherwise."""
    if data[:3] != b"\x1f\x8b\x08":
        return None
    inflater = zlib.decompressobj(31)
    try:
        inner = inflater.decompress(data, MAX_OBJECT + 1)
    except zlib.error:
        return None
    if not inflater.eof or inflater.unused_data or inflater.unconsumed_tail or len(inner) > MAX_OBJECT:
        return None
    return inner


def _gzip(header: bytes, inner: bytes) -> bytes:
    """``header``, ``inner`` as raw deflate at DEFLATE_LEVEL, CRC-32 and size: what gzip -9n
    writes, byte for byte, whenever zlib's deflate makes the same choices (checked on making)."""
    deflater = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15, 8)
    body = deflater.compress(inner) + deflater.flush()
    return header + body + struct.pack("<II", zlib.crc32(inner), len(inner) & 0xFFFFFFFF)


def _flushed(inner: bytes, blocks: tuple[Block, ...], mem_level: int) -> bytes:
    """zlib's raw deflate of ``inner``, a block ended (Z_BLOCK: no empty stored block, no
    byte alignment) after each listed block but the last: zlib keeps its parse, and builds
    and chooses each block's codes as gzip does, so where gzip cut its blocks on the same
    parse this gives gzip's stream (checked by the maker)."""
    if sum(b.size for b in blocks) != len(inner):
        raise FormatError(f"the block plan covers {sum(b.size for b in blocks)} bytes, the "
                          f"content has {len(inner)}")
    deflater = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15, mem_level)
    view = memoryview(inner)
    parts = []
    at = 0
    for block in blocks[:-1]:
        parts.append(deflater.compress(view[at:at + block.size]))
        parts.append(deflater.flush(zlib.Z_BLOCK))
        at += block.size
    parts.append(deflater.compress(view[at:]))
    parts.append(deflater.flush())
    return b"".join(parts)


def rebuild_gzip(header: bytes, inner: bytes, blocks: tuple[Block, ...],
                 how: GzipRebuild = GzipRebuild.REENCODE) -> bytes:
    """As ``_gzip``, but cut in ``blocks`` (how GNU gzip cut them), made by ``how``: zlib's
    own flushes, or zlib's LZ77 parse re-encoded (store.deflate_blocks); FormatError if the
    blocks do not fit the content or the parse."""
    if not blocks:
        return _gzip(header, inner)
    if how is GzipRebuild.REENCODE:
        deflater = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15, 8)
        zlib_stream = deflater.compress(inner) + deflater.flush()
        parse, _ = deflate_blocks.symbols(zlib_stream, len(inner))
        body = deflate_blocks.encode(parse, blocks, inner)
    else:
        body = _flushed(inner, blocks, 9 if how is GzipRebuild.FLUSH_MEM9 else 8)
    return header + body + struct.pack("<II", zlib.crc32(inner), len(inner) & 0xFFFFFFFF)


@dataclass(frozen=True)
class GzipRecipe:
    """What rebuilds a gzip file exactly: its content, block table (empty: zlib alone) and
    how the blocks are made."""

    inner: bytes
    blocks: tuple[Block, ...] = ()
    how: GzipRebuild = GzipRebuild.REENCODE


# The cheapest first: zlib's flushes cost what compressing costs; re-encoding, 40 times more.
_REBUILD_ORDER = (GzipRebuild.FLUSH_MEM9, GzipRebuild.FLUSH, GzipRebuild.REENCODE)


def gzip_recipe(new: bytes, *, v1: bool = False) -> GzipRecipe | None:
    """The recipe that rebuilds ``new`` exactly (``rebuild_gzip``), the cheapest to apply
    first; None when nothing does.  ``v1``: only what format version 1 knows (re-encoding)."""
    inner = gunzip_member(new)
    if inner is None or len(new) < GZIP_HEADER_SIZE + 8 or new[3] != 0:
        return None
    header = new[:GZIP_HEADER_SIZE]
    if _gzip(header, inner) == new:
        return GzipRecipe(inner)
    try:
        blocks = tuple(deflate_blocks.plan(new[GZIP_HEADER_SIZE:-8], len(inner)))
    except FormatError:
        return None
    if len(blocks) > MAX_BLOCKS:
        return None
    for how in (GzipRebuild.REENCODE,) if v1 else _REBUILD_ORDER:
        try:
            if rebuild_gzip(header, inner, blocks, how) == new:
                return GzipRecipe(inner, blocks, how)
        except FormatError:
            continue
    return None


# -- payloads -----------------------------------------------------------------------------

def _window_log(source: bytes, result: bytes) -> int:
    """The smallest zstd window covering dictionary and result (so every match can reach)."""
    return max(10, min(MAX_WINDOW_LOG, (len(source) + len(result)).bit_length()))


def _zstd_payload(source: bytes, result: bytes, level: int) -> tuple[bytes, int]:
    window_log = _window_log(source, result)
    params = zstandard.ZstdCompressionParameters.from_level(
        level, source_size=len(result), window_log=window_log, write_content_size=1,
        write_checksum=0, write_dict_id=0, enable_ldm=window_log >= MAX_WINDOW_LOG)
    dictionary = zstandard.ZstdCompressionDict(source, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return zstandard.ZstdCompressor(dict_data=dictionary, compression_params=params).compress(result), \
        window_log


def _bsdiff_payload(source: bytes, result: bytes, level: int) -> tuple[bytes, int] | None:
    """bsdiff's control/diff/extra blocks, zstd-compressed; None without the bsdiff4 package
    (only the maker needs it: applying is ``_bspatch`` below)."""
    try:
        import bsdiff4.core  # noqa: PLC0415 - optional, vendor side only
    except ImportError:
        return None
    control, diff, extra = bsdiff4.core.diff(source, result)
    triples = [tuple(bsdiff4.core.decode_int64(control[i + j:i + j + 8]) for j in (0, 8, 16))
               for i in range(0, len(control), 24)]
    body = (_BSDIFF_COUNTS.pack(len(triples), len(diff), len(extra))
            + b"".join(_CONTROL.pack(*t) for t in triples) + diff + extra)
    return zstandard.ZstdCompressor(level=level, write_checksum=False,
                                    write_content_size=True).compress(body), 10


_ADD_CHUNK = 1 << 20  # bytes per whole-number addition: bounds its temporaries


def _add_bytes(a: bytes, b: bytes) -> bytes:
    """Bytewise ``(a[i] + b[i]) % 256`` on equal-length inputs, as whole-number arithmetic
    (SWAR: add the low 7 bits of every byte, then fix the top bits without a carry), a MiB
    at a time (the temporaries stay a few MiB whatever the object's size)."""
    out = bytearray()
    high_full = int.from_bytes(b"\x80" * min(len(a), _ADD_CHUNK), "little")
    for at in range(0, len(a), _ADD_CHUNK):
        n = min(_ADD_CHUNK, len(a) - at)
        high = high_full if n == _ADD_CHUNK else int.from_bytes(b"\x80" * n, "little")
        low = high - (high >> 7)  # 0x7f in every byte
        x = int.from_bytes(a[at:at + n], "little")
        y = int.from_bytes(b[at:at + n], "little")
        out += (((x & low) + (y & low)) ^ ((x ^ y) & high)).to_bytes(n, "little")
    return bytes(out)


def _bspatch(source: bytes, body: bytes, result_size: int, path: Name | None) -> bytes:
    """Apply a bsdiff payload body; every count is checked against what is there."""
    if len(body) < _BSDIFF_COUNTS.size:
        raise _fail("bsdiff payload too short for its counts", path)
    count, diff_len, extra_len = _BSDIFF_COUNTS.unpack_from(body)
    control_end = _BSDIFF_COUNTS.size + count * _CONTROL.size
    if control_end + diff_len + extra_len != len(body):
        raise _fail(f"bsdiff payload is {len(body)} bytes, its counts add up to "
                    f"{control_end + diff_len + extra_len}", path)
    diff_at, extra_at, end = control_end, control_end + diff_len, len(body)
    diff_stop = extra_at
    olds: list[bytes] = []  # the old bytes each control adds to, out of range counted as zeros
    copies: list[tuple[int, int]] = []  # (add, extra start) per control
    total = 0
    old_at = 0
    for i in range(count):
        add, copy, seek = _CONTROL.unpack_from(body, _BSDIFF_COUNTS.size + i * _CONTROL.size)
        if (add > diff_stop - diff_at or copy > end - extra_at
                or total + add + copy > result_size):
            raise _fail(f"bsdiff control {i} overruns its blocks or the result size", path)
        lo, hi = max(old_at, 0), min(old_at + add, len(source))
        if lo == old_at and hi == old_at + add:
            olds.append(source[lo:hi])
        else:
            old = bytearray(add)
            if hi > lo:
                old[lo - old_at:hi - old_at] = source[lo:hi]
            olds.append(bytes(old))
        copies.append((add, extra_at))
        diff_at += add
        extra_at += copy
        total += add + copy
        old_at += add + seek
    if diff_at != diff_stop or extra_at != end or total != result_size:
        raise _fail("bsdiff payload does not add up to the result", path)
    # One bytewise addition over all the diff bytes (they are consecutive in the body).
    added = _add_bytes(b"".join(olds), body[control_end:diff_stop])
    del olds
    out = bytearray()
    at = 0
    for i, (add, extra) in enumerate(copies):
        out += added[at:at + add]
        at += add
        stop = copies[i + 1][1] if i + 1 < len(copies) else end
        out += body[extra:stop]
    return bytes(out)


def _decode_payload(header: ObjectDeltaHeader, source_inner: bytes, payload: bytes,
                    path: Name | None) -> bytes:
    """The new inner content, of exactly ``header.result_inner_size`` bytes."""
    dictionary = (zstandard.ZstdCompressionDict(source_inner,
                                                dict_type=zstandard.DICT_TYPE_RAWCONTENT)
                  if header.method is Method.ZSTD else None)
    dctx = zstandard.ZstdDecompressor(dict_data=dictionary,
                                      max_window_size=1 << header.window_log)
    try:
        declared = zstandard.frame_content_size(payload)
    except zstandard.ZstdError as err:
        raise _fail(f"payload is not a zstd frame ({err})", path, HEADER_SIZE) from err
    # A bsdiff body is bounded by what it can describe: controls, diff and extra of the result.
    limit = header.result_inner_size if header.method is Method.ZSTD else \
        _BSDIFF_COUNTS.size + 3 * MAX_OBJECT
    if declared < 0 or declared > limit:
        raise _fail(f"payload declares {declared} bytes, at most {limit} allowed", path, HEADER_SIZE)
    try:
        body = dctx.decompress(payload, max_output_size=declared, allow_extra_data=False)
    except zstandard.ZstdError as err:
        raise _fail(f"corrupt payload ({err})", path, HEADER_SIZE) from err
    if len(body) != declared:
        raise _fail(f"payload decompressed to {len(body)} bytes, it declares {declared}", path)
    if header.method is Method.BSDIFF:
        return _bspatch(source_inner, body, header.result_inner_size, path)
    if len(body) != header.result_inner_size:
        raise _fail(f"payload rebuilds {len(body)} bytes, the header says "
                    f"{header.result_inner_size}", path)
    return body


# -- making and applying -------------------------------------------------------------------

def make_object_delta(source: bytes, result: bytes, *, level: int = DEFAULT_LEVEL) -> bytes | None:
    """The smallest delta turning ``source`` into ``result`` (each method tried, on the raw
    bytes and, for gzip files, on their contents), checked by applying it; None when either
    is larger than MAX_OBJECT (fetch it whole)."""
    if len(source) > MAX_OBJECT or len(result) > MAX_OBJECT:
        return None
    pairs: list[tuple[int, bytes, bytes, bytes, tuple[Block, ...]]] = [
        (0, bytes(GZIP_HEADER_SIZE), source, result, ())]
    recipe = gzip_recipe(result)
    source_inner = gunzip_member(source) if recipe is not None else None
    if recipe is not None and source_inner is not None:
        pairs.append((FLAG_GZIP | _REBUILD_FLAGS[recipe.how], result[:GZIP_HEADER_SIZE],
                      source_inner, recipe.inner, recipe.blocks))
    best: bytes | None = None
    source_digest, result_digest = digest_bytes(source), digest_bytes(result)
    for flags, gzip_header, old, new, blocks in pairs:
        for method, made in ((Method.ZSTD, _zstd_payload(old, new, level)),
                             (Method.BSDIFF, _bsdiff_payload(old, new, level))):
            if made is None:
                continue
            payload, window_log = made
            header = ObjectDeltaHeader(flags, method, window_log, len(source), source_digest,
                                       len(result), result_digest, gzip_header, len(old), len(new),
                                       len(payload), blocks)
            delta = header.encode() + payload
            if best is None or len(delta) < len(best):
                best = delta
    if best is not None and apply_object_delta(source, best, result_digest) != result:
        raise DeltaError("an object delta made here does not rebuild its result")  # a bug
    return best


def apply_object_delta(source: bytes, delta: bytes, expected_digest: bytes, *,
                       path: Name | None = None) -> bytes:
    """The new object rebuilt from ``source`` and ``delta``, accepted only when its fs-verity
    digest is ``expected_digest`` (the one the signed pack names).  ``path`` names the delta
    in errors.  DeltaError for any fault: a bad delta never yields an object."""
    header = parse_header(delta, len(delta), path)
    if not hmac.compare_digest(header.result_digest, expected_digest):
        raise _fail(f"delta rebuilds the object {header.result_digest.hex()}, the pack names "
                    f"{expected_digest.hex()}", path, 64)
    if len(source) != header.source_size or not hmac.compare_digest(
            digest_bytes(source), header.source_digest):
        raise _fail(f"made from another object: expects {header.source_digest.hex()} "
                    f"({header.source_size} bytes)", path, 24)
    source_inner = source
    if header.flags & FLAG_GZIP:
        unpacked = gunzip_member(source)
        if unpacked is None or len(unpacked) != header.source_inner_size:
            raise _fail("the source object is not the gzip file the delta expects", path, 24)
        source_inner = unpacked
    inner = _decode_payload(header, source_inner, delta[header.payload_offset:], path)
    result = inner
    if header.flags & FLAG_GZIP:
        try:
            result = rebuild_gzip(header.gzip_header, inner, header.blocks, header.how)
        except FormatError as err:
            raise _fail(f"its block table does not fit the content: {err}", path, HEADER_SIZE) from err
    got = digest_bytes(result)
    if len(result) != header.result_size or not hmac.compare_digest(got, expected_digest):
        raise _fail(f"rebuilt object has digest {got.hex()} ({len(result)} bytes), expected "
                    f"{expected_digest.hex()} ({header.result_size} bytes)", path)
    return result


def _read_bounded(path: str, limit: int, what: str, delta_path: Name | None) -> bytes:
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise _fail(f"{what} is larger than {limit} bytes", delta_path)
    return data


def write_object_delta(source_path: str | os.PathLike[str], result_path: str | os.PathLike[str],
                       out: str | os.PathLike[str], *, level: int = DEFAULT_LEVEL) -> int | None:
    """Write the delta from the object file ``source_path`` to ``result_path`` at ``out``
    (atomically); return its size, or None (nothing written) when no delta can be made."""
    source = _read_bounded(os.fspath(source_path), MAX_OBJECT, "the source object", None) \
        if os.path.getsize(source_path) <= MAX_OBJECT else None
    result = _read_bounded(os.fspath(result_path), MAX_OBJECT, "the result object", None) \
        if os.path.getsize(result_path) <= MAX_OBJECT else None
    if source is None or result is None:
        return None
    delta = make_object_delta(source, result, level=level)
    if delta is None:
        return None
    with atomic_file(out, 0o644) as handle:
        handle.write(delta)
    return len(delta)


def apply_object_delta_file(source_path: str | os.PathLike[str], delta_path: str | os.PathLike[str],
                            expected_digest: bytes, out: str | os.PathLike[str], *,
                            mode: int = 0o644, durable: bool = True) -> int:
    """Rebuild the object ``delta_path`` describes from ``source_path`` into ``out``
    (atomically: ``out`` appears only when the digest matched); return its size.
    ``durable=False``: no fsync, for a caller that syncs once after many objects."""
    delta_name = os.fspath(delta_path)
    delta = _read_bounded(delta_name, HEADER_SIZE + MAX_OBJECT + (MAX_OBJECT >> 7) + 4096,
                          "the object delta", delta_name)
    header = parse_header(delta, len(delta), delta_name)
    source = _read_bounded(os.fspath(source_path), header.source_size, "the source object",
                           delta_name)
    result = apply_object_delta(source, delta, expected_digest, path=delta_name)
    with atomic_file(out, mode, durable=durable) as handle:
        handle.write(result)
    return len(result)


@dataclass(frozen=True)
class ObjectDeltaJob:
    """One object to rebuild: from ``source`` with ``delta`` into ``out``, whose fs-verity
    digest must be ``expected_digest``; ``mode`` is the new file's."""

    source: str
    delta: str
    expected_digest: bytes
    out: str
    mode: int = 0o644


def _apply_share(jobs: list[tuple[int, ObjectDeltaJob]]) -> list[tuple[int, int | DeltaError]]:
    results: list[tuple[int, int | DeltaError]] = []
    for index, job in jobs:
        try:
            size = apply_object_delta_file(job.source, job.delta, job.expected_digest, job.out,
                                           mode=job.mode, durable=False)
        except DeltaError as err:
            results.append((index, err))
        else:
            results.append((index, size))
    return results


def apply_object_deltas(jobs: list[ObjectDeltaJob], *, workers: int | None = None
                        ) -> list[int | DeltaError]:
    """Rebuild every job's object, in forked workers (one per core, at most ``workers``):
    rebuilding a gzip file's blocks is Python work that one core does alone.  Returns, per
    job, the rebuilt size or the DeltaError that refused it (the caller fetches that object
    whole); nothing is fsynced: the caller syncs once after all of them."""
    from .forked import Forked, collect, worker_count  # noqa: PLC0415 - only a pull needs it

    count = worker_count(workers or MAX_APPLY_WORKERS)
    by_size = sorted(enumerate(jobs), key=lambda item: -os.path.getsize(item[1].delta))
    shares: list[list[tuple[int, ObjectDeltaJob]]] = [[] for _ in range(count)]
    for position, item in enumerate(by_size):  # deal the largest first, round robin
        shares[position % count].append(item)
    if count == 1:
        done = _apply_share(shares[0])
    else:
        done = [result for share in collect([
            Forked(_apply_share, share, failure=lambda m: DeltaError(f"a delta worker failed: {m}"))
            for share in shares if share]) for result in share]
    results: list[int | DeltaError] = [0] * len(jobs)
    for index, result in done:
        results[index] = result
    return results
