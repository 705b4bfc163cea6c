"""Rebuild GNU gzip's deflate streams from zlib's: same LZ77 parse, other block boundaries.

A package's man pages and changelogs are ``gzip -9n`` files; an update changes
their text a little and their compressed bytes entirely.  An object delta can
carry the change of the text, if the device can compress the new text into
exactly the bytes the vendor's tree holds.  zlib at level 9 (memLevel 8)
makes the very same LZ77 parse as GNU gzip -9 (same hash, chains, lazy
matching: checked on every changed gzip file of a bookworm update) but cuts
Huffman blocks elsewhere: gzip ends a block after 4096 symbols when it
guesses that pays, and after 32767 in any case; zlib after 16383.  So: zlib
compresses, ``symbols`` reads its parse back, and ``encode`` writes the parse
again cut into the blocks the delta lists (content bytes and type of each),
building each block's Huffman codes exactly as gzip's and zlib's trees.c do.

``plan`` reads the block list off a real gzip stream; the maker keeps a delta
only when ``encode`` rebuilds that stream exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import FormatError

STORED, FIXED, DYNAMIC = 0, 1, 2
END_BLOCK = 256
MAX_BITS = 15
MAX_BL_BITS = 7
LITERALS = 256
L_CODES = 286
D_CODES = 30
BL_CODES = 19
HEAP_SIZE = 2 * L_CODES + 1
REP_3_6, REPZ_3_10, REPZ_11_138 = 16, 17, 18
BL_ORDER = (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15)
LENGTH_BASE = (3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99,
               115, 131, 163, 195, 227, 258)
LENGTH_EXTRA = (0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0)
DIST_BASE = (1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025,
             1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577)
DIST_EXTRA = (0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12,
              12, 13, 13)
FIXED_LIT_LENGTHS = (8,) * 144 + (9,) * 112 + (7,) * 24 + (8,) * 8
FIXED_DIST_LENGTHS = (5,) * 30

# A symbol: a literal byte (0..255), or a match as length << 16 | distance (>= 3 << 16).
Symbol = int


def _length_code(length: int) -> int:
    code = 28
    while LENGTH_BASE[code] > length:
        code -= 1
    return code


def _dist_code(dist: int) -> int:
    code = 29
    while DIST_BASE[code] > dist:
        code -= 1
    return code


_LENGTH_CODE = [0, 0, 0] + [_length_code(n) for n in range(3, 259)]
_DIST_CODE = [0] + [_dist_code(d) for d in range(1, 32769)]


@dataclass(frozen=True)
class Block:
    """One deflate block of a plan: how many bytes of content it holds, and its type.  Bytes,
    not symbols: a stored block's length says nothing of how the parse covered it."""

    size: int
    kind: int


# -- reading --------------------------------------------------------------------------------

class _BitReader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.acc = 0
        self.count = 0

    def bits(self, n: int) -> int:
        while self.count < n:
            if self.pos >= len(self.data):
                raise FormatError("deflate stream ends early")
            self.acc |= self.data[self.pos] << self.count
            self.pos += 1
            self.count += 8
        value = self.acc & ((1 << n) - 1)
        self.acc >>= n
        self.count -= n
        return value

    def peek(self, n: int) -> int:
        """The next ``n`` bits (zero past the end), not consumed."""
        while self.count < n and self.pos < len(self.data):
            self.acc |= self.data[self.pos] << self.count
            self.pos += 1
            self.count += 8
        return self.acc & ((1 << n) - 1)

    def align(self) -> None:
        drop = self.count % 8
        self.acc >>= drop
        self.count -= drop


def _decoder(lengths: Sequence[int]) -> tuple[list[int], int]:
    """A table indexed by the next ``width`` bits (LSB first): symbol << 4 | code length."""
    width = max(lengths, default=0)
    if width == 0:
        return [], 0
    table = [-1] * (1 << width)
    for symbol, (length, code) in enumerate(zip(lengths, _canonical(lengths), strict=True)):
        if length:
            step = 1 << length
            for index in range(code, 1 << width, step):
                table[index] = symbol << 4 | length
    return table, width


def _decode(reader: _BitReader, decoder: tuple[list[int], int]) -> int:
    table, width = decoder
    if not width:
        raise FormatError("empty Huffman code")
    entry = table[reader.peek(width)]
    if entry < 0:
        raise FormatError("invalid Huffman code")
    reader.bits(entry & 15)
    return entry >> 4


def _read_dynamic_lengths(reader: _BitReader) -> tuple[list[int], list[int]]:
    hlit, hdist, hclen = reader.bits(5) + 257, reader.bits(5) + 1, reader.bits(4) + 4
    code_lengths = [0] * BL_CODES
    for i in range(hclen):
        code_lengths[BL_ORDER[i]] = reader.bits(3)
    decoder = _decoder(code_lengths)
    lengths: list[int] = []
    while len(lengths) < hlit + hdist:
        symbol = _decode(reader, decoder)
        if symbol < 16:
            lengths.append(symbol)
        elif symbol == REP_3_6:
            if not lengths:
                raise FormatError("repeat with no previous length")
            lengths += [lengths[-1]] * (3 + reader.bits(2))
        elif symbol == REPZ_3_10:
            lengths += [0] * (3 + reader.bits(3))
        else:
            lengths += [0] * (11 + reader.bits(7))
    if len(lengths) != hlit + hdist:
        raise FormatError("code lengths overrun")
    return lengths[:hlit], lengths[hlit:]


def _huffman_block(reader: _BitReader, lit: tuple[list[int], int], dist: tuple[list[int], int],
                   out: list[Symbol], size: int, limit: int) -> int:
    """Decode one Huffman-coded block into ``out``; return the expanded size so far.  The bit
    reader is inlined: this loop runs once per symbol."""
    lit_table, lit_width = lit
    dist_table, dist_width = dist
    if not lit_width or not dist_width:
        raise FormatError("empty Huffman code")
    lit_mask, dist_mask = (1 << lit_width) - 1, (1 << dist_width) - 1
    data, pos, acc, count, end = reader.data, reader.pos, reader.acc, reader.count, len(reader.data)
    append = out.append
    while True:
        while count < 32 and pos < end:
            acc |= data[pos] << count
            pos += 1
            count += 8
        entry = lit_table[acc & lit_mask]
        used = entry & 15
        if entry < 0 or used > count:
            raise FormatError("invalid or truncated Huffman code")
        acc >>= used
        count -= used
        symbol = entry >> 4
        if symbol < LITERALS:
            append(symbol)
            size += 1
            continue
        if symbol == END_BLOCK:
            break
        code = symbol - LITERALS - 1
        if code > 28:
            raise FormatError("invalid length code")
        extra = LENGTH_EXTRA[code]
        length = LENGTH_BASE[code] + (acc & ((1 << extra) - 1))
        acc >>= extra
        count -= extra
        while count < 32 and pos < end:
            acc |= data[pos] << count
            pos += 1
            count += 8
        entry = dist_table[acc & dist_mask]
        used = entry & 15
        if entry < 0 or used > count or entry >> 4 >= D_CODES:
            raise FormatError("invalid or truncated distance code")
        acc >>= used
        count -= used
        dcode = entry >> 4
        extra = DIST_EXTRA[dcode]
        distance = DIST_BASE[dcode] + (acc & ((1 << extra) - 1))
        acc >>= extra
        count -= extra
        if count < 0:
            raise FormatError("deflate stream ends early")
        append(length << 16 | distance)
        size += length
        if size > limit:
            raise FormatError(f"deflate stream expands past {limit} bytes")
    reader.pos, reader.acc, reader.count = pos, acc, count
    return size


def symbols(stream: bytes, limit: int) -> tuple[list[Symbol], list[Block]]:
    """The LZ77 symbols of a raw deflate stream and its blocks; FormatError if it is not
    one, or expands past ``limit`` bytes."""
    reader = _BitReader(stream)
    out: list[Symbol] = []
    blocks: list[Block] = []
    size = 0
    final = 0
    while not final:
        final = reader.bits(1)
        kind = reader.bits(2)
        start = size
        if kind == STORED:
            reader.align()
            length, inverse = reader.bits(16), reader.bits(16)
            if length ^ inverse != 0xFFFF:
                raise FormatError("stored block length check fails")
            out += [reader.bits(8) for _ in range(length)]
            size += length
        elif kind in (FIXED, DYNAMIC):
            lit, dist = ((FIXED_LIT_LENGTHS, FIXED_DIST_LENGTHS) if kind == FIXED
                         else _read_dynamic_lengths(reader))
            size = _huffman_block(reader, _decoder(lit), _decoder(dist), out, size, limit)
        else:
            raise FormatError("reserved block type")
        if size > limit:
            raise FormatError(f"deflate stream expands past {limit} bytes")
        blocks.append(Block(size - start, kind))
    return out, blocks


def plan(stream: bytes, limit: int) -> list[Block]:
    """The blocks of a raw deflate stream (symbol count and type of each)."""
    return symbols(stream, limit)[1]


# -- Huffman codes, as trees.c builds them ---------------------------------------------------

def _canonical(lengths: Sequence[int]) -> list[int]:
    """Each symbol's code, bit-reversed (deflate sends codes most significant bit first)."""
    count = [0] * (MAX_BITS + 2)
    for length in lengths:
        count[length] += 1
    count[0] = 0
    next_code = [0] * (MAX_BITS + 2)
    code = 0
    for bits in range(1, MAX_BITS + 1):
        code = (code + count[bits - 1]) << 1
        next_code[bits] = code
    codes = []
    for length in lengths:
        if length:
            codes.append(_reverse(next_code[length], length))
            next_code[length] += 1
        else:
            codes.append(0)
    return codes


def _reverse(code: int, length: int) -> int:
    return int(f"{code:0{length}b}"[::-1], 2) if length else 0


def _build_lengths(freq: Sequence[int], max_length: int) -> tuple[list[int], int]:
    """Code lengths for the frequencies ``freq`` and the largest code used (max_code), as
    trees.c's build_tree and gen_bitlen make them: ties broken by frequency, then subtree
    depth, then heap order; lengths above ``max_length`` fixed up the same way."""
    elems = len(freq)
    size = 2 * elems + 1
    weight = list(freq) + [0] * (elems + 1)
    dad = [0] * size
    length = [0] * size
    depth = [0] * size
    heap = [0] * HEAP_SIZE
    heap_len, heap_max, max_code = 0, HEAP_SIZE, -1
    for n in range(elems):
        if weight[n]:
            heap_len += 1
            heap[heap_len] = max_code = n
    while heap_len < 2:  # at least two codes, even for one symbol or none
        if max_code < 2:
            max_code += 1
            node = max_code
        else:
            node = 0
        heap_len += 1
        heap[heap_len] = node
        weight[node] = 1
        depth[node] = 0

    def smaller(n: int, m: int) -> bool:
        return weight[n] < weight[m] or (weight[n] == weight[m] and depth[n] <= depth[m])

    def down(k: int) -> None:
        v = heap[k]
        j = k << 1
        while j <= heap_len:
            if j < heap_len and smaller(heap[j + 1], heap[j]):
                j += 1
            if smaller(v, heap[j]):
                break
            heap[k] = heap[j]
            k = j
            j <<= 1
        heap[k] = v

    for n in range(heap_len // 2, 0, -1):
        down(n)
    node = elems
    while True:
        n = heap[1]
        heap[1] = heap[heap_len]
        heap_len -= 1
        down(1)
        m = heap[1]
        heap_max -= 1
        heap[heap_max] = n
        heap_max -= 1
        heap[heap_max] = m
        weight[node] = weight[n] + weight[m]
        depth[node] = max(depth[n], depth[m]) + 1
        dad[n] = dad[m] = node
        heap[1] = node
        node += 1
        down(1)
        if heap_len < 2:
            break
    heap_max -= 1
    heap[heap_max] = heap[1]
    count = [0] * (MAX_BITS + 1)
    length[heap[heap_max]] = 0
    overflow = 0
    for h in range(heap_max + 1, HEAP_SIZE):
        n = heap[h]
        bits = length[dad[n]] + 1
        if bits > max_length:
            bits = max_length
            overflow += 1
        length[n] = bits
        if n <= max_code:
            count[bits] += 1
    if overflow:
        while overflow > 0:
            bits = max_length - 1
            while count[bits] == 0:
                bits -= 1
            count[bits] -= 1
            count[bits + 1] += 2
            count[max_length] -= 1
            overflow -= 2
        h = HEAP_SIZE
        for bits in range(max_length, 0, -1):
            left = count[bits]
            while left:
                h -= 1
                m = heap[h]
                if m > max_code:
                    continue
                length[m] = bits
                left -= 1
    return [length[n] if weight[n] else 0 for n in range(elems)], max_code


def _runs(lengths: Sequence[int], max_code: int) -> list[tuple[int, int]]:
    """trees.c's scan_tree/send_tree walk: the (code-length symbol, extra bits value) pairs
    that send ``lengths[0..max_code]`` with run-length codes 16, 17, 18."""
    out: list[tuple[int, int]] = []
    prevlen, nextlen, count = -1, lengths[0], 0
    max_count, min_count = (138, 3) if nextlen == 0 else (7, 4)
    guarded = list(lengths[:max_code + 1]) + [0xFFFF]
    for n in range(max_code + 1):
        curlen, nextlen = nextlen, guarded[n + 1]
        count += 1
        if count < max_count and curlen == nextlen:
            continue
        if count < min_count:
            out += [(curlen, -1)] * count
        elif curlen != 0:
            if curlen != prevlen:
                out.append((curlen, -1))
                count -= 1
            out.append((REP_3_6, count - 3))
        elif count <= 10:
            out.append((REPZ_3_10, count - 3))
        else:
            out.append((REPZ_11_138, count - 11))
        count, prevlen = 0, curlen
        if nextlen == 0:
            max_count, min_count = 138, 3
        elif curlen == nextlen:
            max_count, min_count = 6, 3
        else:
            max_count, min_count = 7, 4
    return out


_RUN_EXTRA = {REP_3_6: 2, REPZ_3_10: 3, REPZ_11_138: 7}


# -- writing --------------------------------------------------------------------------------

class _BitWriter:
    def __init__(self) -> None:
        self.out = bytearray()
        self.acc = 0
        self.count = 0

    def bits(self, value: int, n: int) -> None:
        self.acc |= value << self.count
        self.count += n
        while self.count >= 8:
            self.out.append(self.acc & 0xFF)
            self.acc >>= 8
            self.count -= 8

    def align(self) -> None:
        if self.count:
            self.out.append(self.acc & 0xFF)
        self.acc = 0
        self.count = 0


def _send_symbols(writer: _BitWriter, block: Sequence[Symbol], lit_lengths: Sequence[int],
                  dist_lengths: Sequence[int]) -> None:
    """Write a block's symbols and its end code (the bit writer inlined: once per symbol)."""
    lit_codes, dist_codes = _canonical(lit_lengths), _canonical(dist_lengths)
    # Length code and its extra bits as one value, per match length; likewise per distance code.
    length_value = [0] * 259
    length_bits = [0] * 259
    for length in range(3, 259):
        code = _LENGTH_CODE[length]
        symbol = code + LITERALS + 1
        length_value[length] = lit_codes[symbol] | (length - LENGTH_BASE[code]) << lit_lengths[symbol]
        length_bits[length] = lit_lengths[symbol] + LENGTH_EXTRA[code]
    out, acc, count = writer.out, writer.acc, writer.count
    dist_code = _DIST_CODE
    for symbol in block:
        if symbol < LITERALS:
            acc |= lit_codes[symbol] << count
            count += lit_lengths[symbol]
        else:
            length, dist = symbol >> 16, symbol & 0xFFFF
            acc |= length_value[length] << count
            count += length_bits[length]
            dcode = dist_code[dist]
            acc |= (dist_codes[dcode] | (dist - DIST_BASE[dcode]) << dist_lengths[dcode]) << count
            count += dist_lengths[dcode] + DIST_EXTRA[dcode]
        while count >= 32:
            out += (acc & 0xFFFFFFFF).to_bytes(4, "little")
            acc >>= 32
            count -= 32
    writer.acc, writer.count = acc, count
    writer.bits(lit_codes[END_BLOCK], lit_lengths[END_BLOCK])


def _dynamic_block(writer: _BitWriter, block: Sequence[Symbol], last: int) -> None:
    lit_freq = [0] * L_CODES
    dist_freq = [0] * D_CODES
    lit_freq[END_BLOCK] = 1
    for symbol in block:
        if symbol < LITERALS:
            lit_freq[symbol] += 1
        else:
            lit_freq[_LENGTH_CODE[symbol >> 16] + LITERALS + 1] += 1
            dist_freq[_DIST_CODE[symbol & 0xFFFF]] += 1
    lit_lengths, lit_max = _build_lengths(lit_freq, MAX_BITS)
    dist_lengths, dist_max = _build_lengths(dist_freq, MAX_BITS)
    runs = _runs(lit_lengths, lit_max) + _runs(dist_lengths, dist_max)
    bl_freq = [0] * BL_CODES
    for symbol, _extra in runs:
        bl_freq[symbol] += 1
    bl_lengths, _ = _build_lengths(bl_freq, MAX_BL_BITS)
    max_blindex = BL_CODES - 1
    while max_blindex >= 3 and bl_lengths[BL_ORDER[max_blindex]] == 0:
        max_blindex -= 1
    writer.bits(DYNAMIC << 1 | last, 3)
    writer.bits(lit_max + 1 - 257, 5)
    writer.bits(dist_max + 1 - 1, 5)
    writer.bits(max_blindex + 1 - 4, 4)
    for rank in range(max_blindex + 1):
        writer.bits(bl_lengths[BL_ORDER[rank]], 3)
    bl_codes = _canonical(bl_lengths)
    for symbol, extra in runs:
        writer.bits(bl_codes[symbol], bl_lengths[symbol])
        if extra >= 0:
            writer.bits(extra, _RUN_EXTRA[symbol])
    _send_symbols(writer, block, lit_lengths, dist_lengths)


def encode(parse: Sequence[Symbol], blocks: Sequence[Block], content: bytes) -> bytes:
    """The raw deflate stream of ``parse`` (whose expansion is ``content``) cut into
    ``blocks``; FormatError unless every block ends on a symbol of the parse and together
    they cover it exactly."""
    if sum(b.size for b in blocks) != len(content) or not blocks:
        raise FormatError(f"the block plan covers {sum(b.size for b in blocks)} bytes, the "
                          f"content has {len(content)}")
    writer = _BitWriter()
    at = offset = 0
    for index, block in enumerate(blocks):
        last = int(index == len(blocks) - 1)
        start, stop = at, offset + block.size
        while offset < stop and at < len(parse):
            symbol = parse[at]
            offset += 1 if symbol < LITERALS else symbol >> 16
            at += 1
        if offset != stop:
            raise FormatError(f"block {index} ends inside a match")
        if block.kind == STORED:
            if block.size > 0xFFFF:
                raise FormatError(f"stored block of {block.size} bytes")
            writer.bits(STORED << 1 | last, 3)
            writer.align()
            writer.out += block.size.to_bytes(2, "little") + (block.size ^ 0xFFFF).to_bytes(2, "little")
            writer.out += content[stop - block.size:stop]
        elif block.kind == FIXED:
            writer.bits(FIXED << 1 | last, 3)
            _send_symbols(writer, parse[start:at], FIXED_LIT_LENGTHS, FIXED_DIST_LENGTHS)
        elif block.kind == DYNAMIC:
            _dynamic_block(writer, parse[start:at], last)
        else:
            raise FormatError(f"block type {block.kind}")
    writer.align()
    return bytes(writer.out)
