"""A deterministic EROFS image writer: a tree of ``Node`` in, the bytes of a read-only image out.

The image is the subset of EROFS (Linux ``fs/erofs/erofs_fs.h``) that a tree of
directories, regular files and symlinks with owners, modes and xattrs needs,
written the same way every time (docs/FORMAT.md, section 19):

- 4096-byte blocks; the superblock at byte 1024; then the metadata area (every
  inode, its inline xattrs, its inline data tail or its chunk map), each inode at a
  32-byte slot (its ``nid``, counted from byte 0), the first one (the root) right
  after the superblock; then the data blocks;
- inodes in one fixed order (directories visited depth first, each one's entries
  numbered in name-byte order), placed in that order, a record that does not fit the
  rest of a block filling an earlier block's rest; a ``Node`` reached by several names
  is one inode (a hardlink);
- the 32-byte compact inode unless the 64-byte extended one is needed (an owner
  above 65535, a size of 4 GiB or more, more than 65535 links);
- every timestamp 0 (superblock epoch, every inode), uuid and volume name zero,
  no compression, no shared xattrs, no checksum;
- data ``FLAT_PLAIN`` (whole blocks) or ``FLAT_INLINE`` (whole blocks, and the tail
  after the inode's xattrs when inode + xattrs + tail fit one block); a sparse file
  with no data (``Node.size`` set, a metacopy stub) ``CHUNK_BASED`` with every chunk
  a hole (``EROFS_NULL_ADDR``): the image holds no byte of its content.

No pack knowledge: the caller (pack/image.py) decides the tree.  What this format
cannot hold (a name with ``/``, an xattr outside the known prefixes, a symlink
target over 4095 bytes, xattrs too large for the inode's block, ...) is refused with
``ImageError``, naming the path inside the tree.
"""

from __future__ import annotations

import struct
from typing import BinaryIO, Literal

from .errors import FormatError
from .names import show

Kind = Literal["dir", "file", "symlink"]
DIR: Kind = "dir"
FILE: Kind = "file"
SYMLINK: Kind = "symlink"


class Node:
    """One inode of the image.  A Node reachable by several names is one inode (a hardlink);
    a directory may be reachable by one name only.

    ``mode``: permission bits only (``<= 0o7777``, setuid/setgid/sticky included).
    ``xattrs``: full names (``b"security.capability"``), any order, each name once.
    ``data``: a file's content, a symlink's target, ``b""`` for a directory.
    ``size``: files only: not None (with ``data == b""``) = a sparse file of that size with
    no data at all (a metacopy stub: overlayfs reads its bytes from a data-only layer;
    read from the image itself it reads as zeros).
    ``entries``: directories only: name (bytes, no ``/``) -> Node.
    """

    __slots__ = ("kind", "mode", "uid", "gid", "xattrs", "data", "size", "entries")

    def __init__(self, kind: Kind, mode: int, uid: int = 0, gid: int = 0,
                 xattrs: tuple[tuple[bytes, bytes], ...] = (), data: bytes = b"",
                 size: int | None = None, entries: dict[bytes, Node] | None = None) -> None:
        self.kind = kind
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.xattrs = xattrs
        self.data = data
        self.size = size
        self.entries: dict[bytes, Node] = {} if entries is None else entries

    def __repr__(self) -> str:
        return f"Node({self.kind!r}, {self.mode:#o}, uid={self.uid}, gid={self.gid})"


class ImageError(FormatError):
    """A tree that an EROFS image cannot hold: ``path`` is the path inside the tree,
    ``value`` and ``limit`` the number that is too large, where one is."""

    def __init__(self, message: str, *, path: bytes, value: int | None = None,
                 limit: int | None = None) -> None:
        self.value = value
        self.limit = limit
        super().__init__(message, path=path)

    def detail(self) -> str:
        if self.value is not None and self.limit is not None:
            return f"{self.message} ({self.value}, at most {self.limit})"
        return self.message


BLOCK_BITS = 12
BLOCK = 1 << BLOCK_BITS
SUPER_OFFSET = 1024
MAGIC = 0xE0F5E1E2
META_BLKADDR = 0  # nids count from the image's start; the first inode follows the superblock
META_START = SUPER_OFFSET + 128  # never nid 0: the kernel's inode number is the nid, and 0 is no inode
NAME_MAX = 255
GAP_WINDOW = 16  # how many rests of blocks the placement keeps for later, smaller records
SYMLINK_MAX = 4095
U16 = 0xFFFF
U32 = 0xFFFFFFFF
SIZE_MAX = (1 << 63) - 1  # the kernel's loff_t
FEATURE_INCOMPAT_CHUNKED_FILE = 0x4
NULL_ADDR = b"\xff\xff\xff\xff"  # EROFS_NULL_ADDR as a 4-byte block map entry: a hole
MAX_CHUNK_BITS = BLOCK_BITS + 31  # EROFS_CHUNK_FORMAT_BLKBITS_MASK: 5 bits above the block

# i_format: bit 0 the inode version, bits 1-3 the data layout
FLAT_PLAIN = 0
FLAT_INLINE = 2
CHUNK_BASED = 4
S_IFREG = 0o100000
S_IFDIR = 0o040000
S_IFLNK = 0o120000
FT_REG_FILE = 1
FT_DIR = 2
FT_SYMLINK = 7

# erofs_super_block, the first 128 bytes (the rest of block 0 is zero)
_SUPER = struct.Struct(
    "<I"    # magic
    "I"     # checksum (crc32c): none, feature SB_CHKSUM off
    "I"     # feature_compat: 0
    "B"     # blkszbits: 12
    "B"     # sb_extslots: 0 (128-byte superblock)
    "H"     # root_nid (rootnid_2b): 36, the first slot after the superblock
    "Q"     # inos: the number of inodes
    "Q"     # epoch (build_time before 6.15): 0, compact inodes' time base
    "I"     # fixed_nsec: 0
    "I"     # blocks (blocks_lo): the image's size in blocks
    "I"     # meta_blkaddr
    "I"     # xattr_blkaddr: 0, no shared xattrs
    "16s"   # uuid: zero
    "16s"   # volume_name: zero
    "I"     # feature_incompat: CHUNKED_FILE when a sparse file is present
    "H"     # available_compr_algs: 0
    "H"     # extra_devices: 0
    "H"     # devt_slotoff: 0
    "B"     # dirblkbits: 0 (directory blocks are filesystem blocks)
    "B"     # xattr_prefix_count: 0
    "I"     # xattr_prefix_start: 0
    "Q"     # packed_nid: 0
    "B"     # xattr_filter_reserved: 0
    "23x"   # reserved
)
# erofs_inode_compact (32 bytes): format, xattr_icount, mode, nlink, size, mtime (0),
# i_u (start block / chunk format), ino, uid, gid, reserved
_COMPACT = struct.Struct("<HHHHIIIIHH4x")
# erofs_inode_extended (64 bytes): format, xattr_icount, mode, i_nb (0), size, i_u, ino,
# uid, gid, mtime (0), mtime_nsec (0), nlink, reserved
_EXTENDED = struct.Struct("<HHHHQIIIIQII16x")
# erofs_dirent (12 bytes): nid, nameoff, file_type, reserved
_DIRENT = struct.Struct("<QHBx")
# erofs_xattr_entry (4 bytes) + name suffix + value
_XATTR_ENTRY = struct.Struct("<BBH")
_IBODY_HEADER = bytes(12)  # h_name_filter 0 (no filter feature), h_shared_count 0, reserved

_XATTR_PREFIXES: tuple[tuple[bytes, int], ...] = (
    (b"user.", 1),
    (b"trusted.", 4),
    (b"security.", 6),
)
_XATTR_EXACT = {
    b"system.posix_acl_access": 2,
    b"system.posix_acl_default": 3,
}
_KIND_FORMAT = {DIR: (S_IFDIR, FT_DIR), FILE: (S_IFREG, FT_REG_FILE), SYMLINK: (S_IFLNK, FT_SYMLINK)}


def _join(parent: bytes, name: bytes) -> bytes:
    return (parent if parent != b"/" else b"") + b"/" + name


_NOT_NAMES = frozenset((b"", b".", b".."))


def _check_name(parent: bytes, name: bytes) -> None:
    """Raise the ImageError for a name that cannot be a directory entry."""
    if name in _NOT_NAMES:
        raise ImageError(f"the name '{show(name)}' cannot be a directory entry", path=parent)
    if b"/" in name or b"\0" in name:
        raise ImageError("a name holds '/' or NUL", path=_join(parent, name))
    if len(name) > NAME_MAX:
        raise ImageError("the name is too long", path=_join(parent, name),
                         value=len(name), limit=NAME_MAX)


def _xattr_key(name: bytes) -> tuple[int, bytes] | None:
    """The EROFS name index of xattr ``name`` and the suffix stored after it."""
    index = _XATTR_EXACT.get(name)
    if index is not None:
        return index, b""
    for prefix, index in _XATTR_PREFIXES:
        if name.startswith(prefix):
            return index, name[len(prefix):]
    return None


def _xattr_body(inode: _Inode, xattrs: tuple[tuple[bytes, bytes], ...]) -> bytes:
    """The inline xattr body: ibody header, then one entry per xattr sorted by full name,
    each 4-byte aligned."""
    parts = [_IBODY_HEADER]
    seen: set[bytes] = set()
    for name, value in sorted(xattrs):
        if name in seen:
            raise ImageError(f"the xattr {show(name)} is given twice", path=inode.path)
        seen.add(name)
        key = _xattr_key(name)
        if key is None:
            raise ImageError(f"the xattr {show(name)} has no EROFS name prefix", path=inode.path)
        index, suffix = key
        if index not in _XATTR_EXACT.values():
            if not suffix:
                raise ImageError(f"the xattr name {show(name)} is a bare prefix", path=inode.path)
            if len(suffix) > NAME_MAX:
                raise ImageError(f"the xattr name {show(name)} is too long", path=inode.path,
                                 value=len(suffix), limit=NAME_MAX)
        if len(value) > U16:
            raise ImageError(f"the xattr {show(name)} value is too large", path=inode.path,
                             value=len(value), limit=U16)
        entry = _XATTR_ENTRY.pack(len(suffix), index, len(value)) + suffix + value
        parts.append(entry + bytes(-len(entry) & 3))
    return b"".join(parts)


def _dir_blocks(names: list[bytes]) -> tuple[list[int], int]:
    """How sorted ``names`` fill directory blocks: the number of entries of each block, and
    the directory's size (whole blocks, then the bytes used in the last one)."""
    counts: list[int] = []
    count = used = 0
    for name in names:
        need = 12 + len(name)
        if used + need > BLOCK:
            counts.append(count)
            count = used = 0
        count += 1
        used += need
    counts.append(count)
    return counts, (len(counts) - 1) * BLOCK + used


class _Inode:
    """One inode being laid out: what write_image computes for a Node before writing it."""

    __slots__ = ("node", "name", "parent", "ino", "nlink", "names", "counts", "size",
                 "xattr", "extended", "layout", "record", "nid", "blocks", "start",
                 "chunk_bits", "chunks")

    def __init__(self, node: Node, name: bytes, parent: _Inode | None, ino: int) -> None:
        self.node = node
        self.name = name  # its first name, in ``parent``: the root's is b""
        self.parent: _Inode = self if parent is None else parent
        self.ino = ino
        self.nlink = 1
        self.names: list[bytes] = []
        self.counts: list[int] = []
        self.size = 0
        self.xattr = b""
        self.extended = False
        self.layout = FLAT_PLAIN
        self.record = 0
        self.nid = 0
        self.blocks = 0  # whole data blocks (FLAT_*)
        self.start = 0   # first data block
        self.chunk_bits = 0
        self.chunks = 0

    @property
    def path(self) -> bytes:
        """The inode's path in the tree (by its first name), for messages."""
        names = []
        inode = self
        while inode.parent is not inode:
            names.append(inode.name)
            inode = inode.parent
        return b"/" + b"/".join(reversed(names))


def _collect(root: Node) -> tuple[list[_Inode], dict[int, _Inode]]:
    """Every inode once, in inode order: the root, then directories visited depth first in
    name order, each visited directory's new entries numbered in name order.  Links counted,
    names checked."""
    if root.kind != DIR:
        raise ImageError("the root of an image is a directory", path=b"/")
    first = _Inode(root, b"", None, 1)
    first.nlink = 2
    order = [first]
    by_id = {id(root): first}
    stack: list[_Inode] = [first]
    while stack:
        parent = stack.pop()
        entries = parent.node.entries
        names = sorted(entries)
        parent.names = names
        subdirs: list[_Inode] = []
        for name in names:
            if name in _NOT_NAMES or len(name) > NAME_MAX or b"/" in name or b"\0" in name:
                _check_name(parent.path, name)
            child = entries[name]
            known = by_id.get(id(child))
            if known is not None:
                if child.kind == DIR:
                    raise ImageError("a directory is reachable by two names",
                                     path=_join(parent.path, name))
                known.nlink += 1
                continue
            inode = _Inode(child, name, parent, len(order) + 1)
            by_id[id(child)] = inode
            order.append(inode)
            if child.kind == DIR:
                inode.nlink = 2
                parent.nlink += 1
                subdirs.append(inode)
        stack.extend(reversed(subdirs))
    return order, by_id


def _plan(inode: _Inode) -> None:
    """Size, layout and metadata record of one inode."""
    node = inode.node
    kind = node.kind
    if kind not in _KIND_FORMAT:
        raise ImageError(f"unknown node kind {kind!r}", path=inode.path)
    if not 0 <= node.mode <= 0o7777:
        raise ImageError("the mode has bits beyond the permission bits", path=inode.path,
                         value=node.mode, limit=0o7777)
    if not (0 <= node.uid <= U32 and 0 <= node.gid <= U32):
        raise ImageError("an owner is out of range", path=inode.path,
                         value=node.uid if not 0 <= node.uid <= U32 else node.gid, limit=U32)
    if node.xattrs:
        inode.xattr = _xattr_body(inode, node.xattrs)
    data_len: int
    if kind == DIR:
        if node.data or node.size is not None:
            raise ImageError("a directory has data", path=inode.path)
        names = inode.names
        names.extend((b".", b".."))
        names.sort()
        inode.counts, data_len = _dir_blocks(names)
    else:
        if node.entries:
            raise ImageError("only a directory has entries", path=inode.path)
        data_len = len(node.data)
        if kind == SYMLINK:
            if node.size is not None:
                raise ImageError("a symlink has no separate size", path=inode.path)
            if not 0 < data_len <= SYMLINK_MAX:
                raise ImageError("the symlink target is empty or too long", path=inode.path,
                                 value=data_len, limit=SYMLINK_MAX)
            if b"\0" in node.data:
                raise ImageError("the symlink target holds NUL", path=inode.path)
    inode.size = data_len
    sparse = node.size is not None and node.size > 0
    if node.size is not None:
        if data_len:
            raise ImageError("a sparse file has data", path=inode.path)
        if node.size < 0:
            raise ImageError("the size is negative", path=inode.path, value=node.size, limit=0)
        if node.size > SIZE_MAX:
            raise ImageError("the size is too large", path=inode.path, value=node.size, limit=SIZE_MAX)
        inode.size = node.size
    inode.extended = (node.uid > U16 or node.gid > U16 or inode.size > U32 or inode.nlink > U16)
    head = (64 if inode.extended else 32) + len(inode.xattr)
    if head > BLOCK:
        raise ImageError("the xattrs do not fit the inode's block", path=inode.path,
                         value=head, limit=BLOCK)
    if sparse:
        bits = max(BLOCK_BITS, (inode.size - 1).bit_length())
        bits = min(bits, MAX_CHUNK_BITS)
        inode.layout = CHUNK_BASED
        inode.chunk_bits = bits
        inode.chunks = -(-inode.size >> bits)
        inode.record = head + 4 * inode.chunks
        if inode.record > BLOCK:  # beyond some 8 PiB: the chunk map would leave the block
            raise ImageError("the sparse file's chunk map does not fit the inode's block",
                             path=inode.path, value=inode.record, limit=BLOCK)
        return
    tail = data_len & (BLOCK - 1)
    if kind == DIR and tail:
        # A zero byte after a directory's inline tail: the kernel's lookup may compare the
        # block's last name up to a NUL or the block's end, not the directory's size, so
        # what follows the tail (the next inode) must not read as more of that name.
        tail += 1
    if tail and head + tail <= BLOCK:
        inode.layout = FLAT_INLINE
        inode.blocks = data_len >> BLOCK_BITS
        inode.record = head + tail
    else:
        inode.layout = FLAT_PLAIN
        inode.blocks = -(-data_len >> BLOCK_BITS)
        inode.record = head


def _place(order: list[_Inode]) -> int:
    """Give each inode its nid (its record's offset / 32), in inode order: a record (at
    most a block: ``_plan`` sees to it) never crosses a block boundary.  One that does not
    fit the rest of the current block goes to the first of the last ``GAP_WINDOW`` gaps
    so left behind (oldest first) that holds it, else to the next block.  Returns the
    metadata area's size in blocks."""
    pos = META_START
    gaps: list[list[int]] = []  # [start, end] of the rests of blocks left behind
    for inode in order:
        size = (inode.record + 31) & ~31
        off = pos & (BLOCK - 1)
        if off + size <= BLOCK or not off:
            inode.nid = pos >> 5
            pos += size
            continue
        for i, gap in enumerate(gaps):
            if gap[1] - gap[0] >= size:
                inode.nid = gap[0] >> 5
                gap[0] += size
                if gap[0] == gap[1]:
                    del gaps[i]
                break
        else:
            gaps.append([pos, pos + BLOCK - off])
            if len(gaps) > GAP_WINDOW:
                del gaps[0]
            pos += BLOCK - off
            inode.nid = pos >> 5
            pos += size
    return -(-pos >> BLOCK_BITS)


def _dir_data(inode: _Inode, nids: dict[int, _Inode]) -> bytes:
    """A directory's blocks (the last one cut at the directory's size)."""
    node = inode.node
    entries = node.entries
    out = bytearray()
    pack = _DIRENT.pack
    names = inode.names
    i = 0
    for count in inode.counts:
        block_names = names[i:i + count]
        i += count
        nameoff = 12 * count
        heads = []
        for name in block_names:
            if name == b".":
                nid, ftype = inode.nid, FT_DIR
            elif name == b"..":
                nid, ftype = inode.parent.nid, FT_DIR
            else:
                child = nids[id(entries[name])]
                nid, ftype = child.nid, _KIND_FORMAT[child.node.kind][1]
            heads.append(pack(nid, nameoff, ftype))
            nameoff += len(name)
        block = b"".join(heads) + b"".join(block_names)
        if i < len(names):
            block += bytes(BLOCK - len(block))
        out += block
    return bytes(out)


def image_bytes(root: Node) -> bytes:
    """The EROFS image of the tree under ``root`` (a directory Node).  The same tree gives
    the same bytes.  Raises ImageError for what the format cannot hold."""
    return bytes(_build(root))


def _build(root: Node) -> bytearray:
    order, by_id = _collect(root)
    for inode in order:
        _plan(inode)
    meta_blocks = _place(order)
    if order[0].nid > U16:
        raise ImageError("the root inode is beyond nid 65535", path=b"/")
    block = META_BLKADDR + meta_blocks
    for inode in order:
        if inode.blocks:
            inode.start = block
            block += inode.blocks
    if block > U32:
        raise ImageError("the image has too many blocks", path=b"/", value=block, limit=U32)
    buf = bytearray(block << BLOCK_BITS)
    incompat = 0
    meta = META_BLKADDR << BLOCK_BITS
    compact = _COMPACT.pack_into
    extended = _EXTENDED.pack_into
    for inode in order:
        node = inode.node
        ifmt = _KIND_FORMAT[node.kind][0]
        layout = inode.layout
        if layout == CHUNK_BASED:
            i_u = inode.chunk_bits - BLOCK_BITS
            incompat |= FEATURE_INCOMPAT_CHUNKED_FILE
        else:
            i_u = inode.start
        xattr = inode.xattr
        icount = (len(xattr) - 12) // 4 + 1 if xattr else 0
        pos = meta + (inode.nid << 5)
        if inode.extended:
            extended(buf, pos, 1 | layout << 1, icount, ifmt | node.mode, 0, inode.size, i_u,
                     inode.ino, node.uid, node.gid, 0, 0, inode.nlink)
            pos += 64
        else:
            compact(buf, pos, layout << 1, icount, ifmt | node.mode, inode.nlink, inode.size, 0,
                    i_u, inode.ino, node.uid, node.gid)
            pos += 32
        if xattr:
            buf[pos:pos + len(xattr)] = xattr
            pos += len(xattr)
        if layout == CHUNK_BASED:
            buf[pos:pos + 4 * inode.chunks] = NULL_ADDR * inode.chunks
            continue
        data = _dir_data(inode, by_id) if node.kind == DIR else node.data
        whole = inode.blocks << BLOCK_BITS
        if layout == FLAT_INLINE:
            buf[pos:pos + len(data) - whole] = data[whole:]
            if whole:
                start = inode.start << BLOCK_BITS
                buf[start:start + whole] = data[:whole]
        elif data:
            start = inode.start << BLOCK_BITS
            buf[start:start + len(data)] = data
    _SUPER.pack_into(buf, SUPER_OFFSET, MAGIC, 0, 0, BLOCK_BITS, 0, order[0].nid, len(order),
                     0, 0, block, META_BLKADDR, 0, b"", b"", incompat, 0, 0, 0, 0, 0, 0, 0, 0)
    return buf


def write_image(root: Node, out: BinaryIO) -> int:
    """Write the EROFS image of ``root`` to ``out``; returns the number of bytes written."""
    data = _build(root)
    out.write(data)
    return len(data)
