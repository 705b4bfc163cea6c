"""fs-verity file digests computed in userspace, bit-exact with ``fsverity digest``.

The algorithm (Linux Documentation/filesystems/fsverity.rst): hash every
zero-padded data block; the concatenated hashes, cut into zero-padded blocks,
are hashed again, level after level, until one block remains, whose hash is the
root.  The file digest is the hash of a 256-byte descriptor holding the root
hash, the data size and the parameters.  Hashing streams: memory is bounded by
one read buffer plus one pending block per tree level.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import threading
from collections.abc import Callable

from .errors import SealtreeError, UsageError
from .record import Frozen
from .sparse import fd_pieces, has_holes

# Descriptor (little-endian): version, hash_algorithm, log2(block size),
# salt_size, reserved u32, data_size u64, root_hash[64], salt[32], 144 reserved.
_DESCRIPTOR = struct.Struct("<BBBBIQ64s32s144x")

# A multiple of every supported block size; small enough that a chunk is still in the
# CPU's cache when it is hashed (4 MiB chunks made deploy's object checks ~25% slower).
READ_CHUNK = 256 << 10
# A file at least this big is hashed by forked workers when parallel=True (threads would
# share one core: the per-block loop holds the GIL).  Commit and fsck hash many files in
# worker processes already, so only ``sealtree digest`` asks.
PARALLEL_MIN = 32 << 20
MAX_WORKERS = 4


def _hash_blocks(hash_block: Callable[[bytes | memoryview], bytes], view: memoryview,
                 block_size: int) -> bytes:
    """Concatenated hashes of the whole blocks of ``view`` (its length is a multiple)."""
    return b"".join([hash_block(view[o:o + block_size]) for o in range(0, len(view), block_size)])


class Algorithm(Frozen):
    __slots__ = ("name", "number", "digest_size", "hash_block_size")
    _fields = __slots__
    name: str
    number: int  # FS_VERITY_HASH_ALG_*
    digest_size: int
    hash_block_size: int  # what a salt is padded to

    def __init__(self, name: str, number: int, digest_size: int, hash_block_size: int) -> None:
        for field, value in zip(self._fields, (name, number, digest_size, hash_block_size),
                                strict=True):
            object.__setattr__(self, field, value)


SHA256 = Algorithm("sha256", 1, 32, 64)
SHA512 = Algorithm("sha512", 2, 64, 128)
ALGORITHMS = {a.name: a for a in (SHA256, SHA512)}
BY_NUMBER = {a.number: a for a in (SHA256, SHA512)}


class VerityParams(Frozen):
    """The parameters of a digest; the default is sealtree's (sha256, 4 KiB, no salt).
    Parameters the kernel would refuse are a UsageError."""

    __slots__ = ("algorithm", "block_size", "salt")
    _fields = __slots__
    algorithm: Algorithm
    block_size: int
    salt: bytes

    def __init__(self, algorithm: Algorithm = SHA256, block_size: int = 4096, salt: bytes = b""
                 ) -> None:
        object.__setattr__(self, "algorithm", algorithm)
        object.__setattr__(self, "block_size", block_size)
        object.__setattr__(self, "salt", salt)
        self._check()

    def _check(self) -> None:
        bs = self.block_size
        if bs & (bs - 1) or bs < 2 * self.algorithm.digest_size or bs > 65536:
            raise UsageError(f"fs-verity block size must be a power of two in "
                                f"[{2 * self.algorithm.digest_size}, 65536], got {bs}")
        if len(self.salt) > 32:
            raise UsageError(f"fs-verity salt is at most 32 bytes, got {len(self.salt)}")


DEFAULT_PARAMS = VerityParams()


def _block_hasher(params: VerityParams) -> Callable[[bytes | memoryview], bytes]:
    """Return a function hashing one block, with the salt prepended when there is one."""
    constructor = getattr(hashlib, params.algorithm.name)
    if not params.salt:
        def hash_plain(block: bytes | memoryview) -> bytes:
            digest: bytes = constructor(block).digest()
            return digest

        return hash_plain
    padded = params.salt.ljust(params.algorithm.hash_block_size, b"\0")
    salted = constructor(padded)

    def hash_salted(block: bytes | memoryview) -> bytes:
        h = salted.copy()
        h.update(block)
        digest: bytes = h.digest()
        return digest

    return hash_salted


class VerityHasher:
    """Incremental fs-verity digest: ``update()`` with any chunks, then ``digest()``."""

    def __init__(self, params: VerityParams = DEFAULT_PARAMS) -> None:
        self.params = params
        self.size = 0
        self._hash_block = _block_hasher(params)
        self._tail = bytearray()  # data not yet forming a whole block
        # Per tree level: hashes not yet forming a whole block, and how many were made.
        self._pending: list[bytearray] = [bytearray()]
        self._counts: list[int] = [0]

    def update(self, data: bytes | bytearray | memoryview) -> None:
        bs, ds = self.params.block_size, self.params.algorithm.digest_size
        view = memoryview(data).cast("B")
        self.size += len(view)
        if self._tail:
            need = bs - len(self._tail)
            self._tail += view[:need]
            view = view[need:]
            if len(self._tail) < bs:
                return
            _push(self._hash_block, bs, ds, self._pending, self._counts,
                  self._hash_block(bytes(self._tail)), 0)
            self._tail = bytearray()
        whole = len(view) - len(view) % bs
        if whole:
            hashes = _hash_blocks(self._hash_block, view[:whole], bs)
            _push(self._hash_block, bs, ds, self._pending, self._counts, hashes, 0)
        if whole < len(view):
            self._tail = bytearray(view[whole:])

    def update_zeros(self, count: int) -> None:
        """Continue with ``count`` zero bytes (a hole), in time and memory logarithmic in
        ``count``: every whole zero block has the same hash, and every whole block of equal
        hashes at one tree level the same hash one level up."""
        bs, ds = self.params.block_size, self.params.algorithm.digest_size
        if self._tail:
            head = min(count, bs - len(self._tail))
            self.update(bytes(head))
            count -= head
        blocks, rest = divmod(count, bs)
        if blocks:
            self.size += blocks * bs
            _push_repeated(self._hash_block, bs, ds, self._pending, self._counts,
                           self._hash_block(bytes(bs)), blocks, 0)
        if rest:
            self.update(bytes(rest))

    def update_block_hashes(self, hashes: bytes, size: int) -> None:
        """Continue with ``size`` bytes of data hashed elsewhere: the hashes of its blocks, the
        last one zero-padded if partial (then nothing may follow).  Nothing may be pending
        from ``update``."""
        if self._tail:
            raise ValueError("block hashes after a partial block")
        self.size += size
        _push(self._hash_block, self.params.block_size, self.params.algorithm.digest_size,
              self._pending, self._counts, hashes, 0)

    def root_hash(self) -> bytes:
        """The Merkle tree root (all zero for an empty file).  Does not consume the hasher."""
        bs, ds = self.params.block_size, self.params.algorithm.digest_size
        pending = [bytearray(p) for p in self._pending]
        counts = list(self._counts)
        if self._tail:
            last = self._hash_block(bytes(self._tail).ljust(bs, b"\0"))
            _push(self._hash_block, bs, ds, pending, counts, last, 0)
        if counts[0] == 0:
            return bytes(self.params.algorithm.digest_size)
        level = 0
        while True:
            above = counts[level + 1] if level + 1 < len(counts) else 0
            if counts[level] == 1 and above == 0:
                return bytes(pending[level])
            if pending[level]:
                padded = bytes(pending[level]).ljust(bs, b"\0")
                pending[level] = bytearray()
                _push(self._hash_block, bs, ds, pending, counts, self._hash_block(padded), level + 1)
            level += 1

    def descriptor(self) -> bytes:
        p = self.params
        return _DESCRIPTOR.pack(1, p.algorithm.number, p.block_size.bit_length() - 1,
                                len(p.salt), 0, self.size, self.root_hash(), p.salt)

    def digest(self) -> bytes:
        """The fs-verity file digest: the hash of the descriptor."""
        digest: bytes = getattr(hashlib, self.params.algorithm.name)(self.descriptor()).digest()
        return digest


def _push(hash_block: Callable[[bytes | memoryview], bytes], block_size: int, digest_size: int,
          pending: list[bytearray], counts: list[int], hashes: bytes, level: int) -> None:
    """Add ``hashes`` to tree ``level``; every whole block of them is hashed one level up."""
    while len(pending) <= level:
        pending.append(bytearray())
        counts.append(0)
    buf = pending[level]
    counts[level] += len(hashes) // digest_size
    buf += hashes
    if len(buf) < block_size:
        return
    whole = len(buf) - len(buf) % block_size
    view = memoryview(buf)
    upper = b"".join([hash_block(view[o:o + block_size]) for o in range(0, whole, block_size)])
    view.release()
    del buf[:whole]
    _push(hash_block, block_size, digest_size, pending, counts, upper, level + 1)


def _push_repeated(hash_block: Callable[[bytes | memoryview], bytes], block_size: int,
                   digest_size: int, pending: list[bytearray], counts: list[int], one: bytes,
                   times: int, level: int) -> None:
    """``_push`` of the hash ``one`` repeated ``times`` times, without making them all: the
    pending block of ``level`` is filled first; then every whole block of copies hashes to the
    same hash, which goes one level up repeated once per block; fewer than a block's worth
    stay pending (after those, in file order, as ``_push`` keeps them)."""
    per_block = block_size // digest_size
    while times:
        while len(pending) <= level:
            pending.append(bytearray())
            counts.append(0)
        if pending[level]:
            fill = min(times, per_block - len(pending[level]) // digest_size)
            _push(hash_block, block_size, digest_size, pending, counts, one * fill, level)
            times -= fill
            continue
        whole, rest = divmod(times, per_block)
        counts[level] += times
        pending[level] += one * rest
        if not whole:
            return
        one, times, level = hash_block(one * per_block), whole, level + 1


def digest_bytes(data: bytes, params: VerityParams = DEFAULT_PARAMS) -> bytes:
    """The fs-verity digest of ``data``."""
    if params is DEFAULT_PARAMS and len(data) <= 4096:
        # Most files of an OS tree fit in one block: its hash is the root (zeros if empty).
        root = hashlib.sha256(data.ljust(4096, b"\0")).digest() if data else bytes(32)
        return hashlib.sha256(_DESCRIPTOR.pack(1, 1, 12, 0, 0, len(data), root, b"")).digest()
    hasher = VerityHasher(params)
    hasher.update(data)
    return hasher.digest()


_buffers = threading.local()


def _read_buffer() -> bytearray:
    """This thread's read buffer, allocated once: a fresh buffer per file costs page faults
    and zeroing, more than hashing a small file."""
    buf: bytearray | None = getattr(_buffers, "buf", None)
    if buf is None:
        buf = _buffers.buf = bytearray(READ_CHUNK)
    return buf


def digest_fd(fd: int, params: VerityParams = DEFAULT_PARAMS) -> tuple[bytes, int]:
    """Digest an open file from its current offset to EOF; return (digest, size)."""
    hasher = VerityHasher(params)
    for piece in fd_pieces(fd, _read_buffer()):  # holes are hashed, not read
        if isinstance(piece, int):
            hasher.update_zeros(piece)
        else:
            hasher.update(piece)
    return hasher.digest(), hasher.size


def _block_hashes(path: str | os.PathLike[str], start: int, stop: int, params: VerityParams
                  ) -> bytes:
    """The hashes of the data blocks of ``path`` from ``start`` (a block boundary) to ``stop``
    (a block boundary, or the end of the file, whose last block is zero-padded)."""
    bs = params.block_size
    hash_block = _block_hasher(params)
    out = []
    view = memoryview(_read_buffer())
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        offset = start
        while offset < stop:
            want = min(len(view), stop - offset)
            n = os.preadv(fd, [view[:want]], offset)
            whole = n - n % bs
            out.append(_hash_blocks(hash_block, view[:whole], bs))
            if whole < n:
                out.append(hash_block(bytes(view[whole:n]).ljust(bs, b"\0")))
            offset += n
            if n < want:  # the end of the file, earlier than its size said
                break
    finally:
        os.close(fd)
    return b"".join(out)


def _digest_in_workers(path: str | os.PathLike[str], size: int, params: VerityParams,
                       workers: int) -> bytes:
    """The digest of a file of ``size`` bytes, its data blocks hashed by forked workers, a
    contiguous range each; the tree above them is built here."""
    from .forked import Forked, collect  # noqa: PLC0415 - only big files on several cores

    bs = params.block_size
    step = -(-size // bs // workers) * bs or bs
    ranges = [(start, min(start + step, size)) for start in range(0, size, step)]
    hashes = collect([Forked(_block_hashes, path, start, stop, params,
                             failure=lambda m: SealtreeError(f"a digest worker failed: {m}",
                                                             path=path))
                      for start, stop in ranges])
    hasher = VerityHasher(params)
    hasher.update_block_hashes(b"".join(hashes), size)
    return hasher.digest()


def digest_file(path: str | os.PathLike[str], params: VerityParams = DEFAULT_PARAMS, *,
                parallel: bool = False) -> bytes:
    """The fs-verity digest of the file at ``path`` (streamed, bounded memory).

    ``parallel``: a regular file of at least PARALLEL_MIN bytes is hashed by
    forked workers on every core.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if parallel:
            from .forked import worker_count  # noqa: PLC0415 - as in _digest_in_workers
            st = os.fstat(fd)
            workers = worker_count(MAX_WORKERS)
            if (stat.S_ISREG(st.st_mode) and st.st_size >= PARALLEL_MIN and workers > 1
                    and not has_holes(fd, 0, st.st_size)):  # holes: one pass that skips them
                return _digest_in_workers(path, st.st_size, params, workers)
        return digest_fd(fd, params)[0]
    finally:
        os.close(fd)

