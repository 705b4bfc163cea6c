"""An independent reader and writer of the pack format (docs/FORMAT.md, section 7).

Written from the format document, not from pack/, so that the fuzzer can take a pack
apart, change one thing at the level of its structure (a header field, a frame, a row,
an entry's name, a tree id) and put it back together -- consistently (every derived
field recomputed: tree ids, root tree, commit id, frame tables, header) or not -- and
so that an accepted pack can be checked against what it claims without trusting the
product's own parser.  Also: a userspace fs-verity digest and a signer that writes
``PACK.sig`` for any bytes (the product's signer refuses what is not laid out as a
pack; a fuzzer must be able to sign broken layouts too).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field, replace

import zstandard

MAGIC = b"SEALPACK"
HEADER = struct.Struct("<8sHHI32sIHIQIQI")
FRAME = struct.Struct("<II")
IMAGE = struct.Struct("<HQ32s")  # version 2: recipe, size, fs-verity digest, after the ref
IMAGE_COUNT = struct.Struct("<I")  # version 3: the image objects' count, after the identity,
IMAGE_OBJECT = struct.Struct("<32s32sQ")  # then per object: digest, meta key, size
FRAME_MAX = 1 << 20
KIND_FILE, KIND_DIR, KIND_SYMLINK = 1, 2, 3
SIG_DOMAIN = b"sealtree-pack-v1\0"
SIG_MAGIC = b"SEALSIG\0"


class Malformed(ValueError):
    """The bytes do not parse as a pack (the fuzzer then mutates at the byte level only)."""


# -- fs-verity (SHA-256, 4096-byte blocks, no salt) ----------------------------------------

def fsverity_digest(data: bytes) -> bytes:
    """The fs-verity file digest of ``data``, as `fsverity digest` prints it."""
    if not data:
        root = bytes(32)
    else:
        level = data
        while len(level) > 4096:
            level = b"".join(hashlib.sha256(level[i:i + 4096].ljust(4096, b"\0")).digest()
                             for i in range(0, len(level), 4096))
        root = hashlib.sha256(level.ljust(4096, b"\0")).digest()
    descriptor = (struct.pack("<BBBBIQ", 1, 1, 12, 0, 0, len(data)) + root.ljust(64, b"\0")
                  + bytes(32) + bytes(144))
    return hashlib.sha256(descriptor).digest()


# -- entries, trees ----------------------------------------------------------------------

@dataclass
class Entry:
    kind: int
    name: bytes
    mode: int
    uid: int
    gid: int
    xattrs: list[tuple[bytes, bytes]]
    size: int = 0
    digest: bytes = bytes(32)
    tree: bytes = bytes(32)
    target: bytes = b""

    def encode(self) -> bytes:
        out = struct.pack("<BH", self.kind, len(self.name)) + self.name
        out += struct.pack("<IIIH", self.mode, self.uid, self.gid, len(self.xattrs))
        for name, value in self.xattrs:
            out += struct.pack("<HI", len(name), len(value)) + name + value
        if self.kind == KIND_FILE:
            out += struct.pack("<Q", self.size) + self.digest
        elif self.kind == KIND_DIR:
            out += self.tree
        elif self.kind == KIND_SYMLINK:
            out += struct.pack("<H", len(self.target)) + self.target
        return out


def _entry_at(buf: bytes, pos: int) -> tuple[Entry, int]:
    try:
        kind, name_len = struct.unpack_from("<BH", buf, pos)
        pos += 3
        name = buf[pos:pos + name_len]
        pos += name_len
        mode, uid, gid, count = struct.unpack_from("<IIIH", buf, pos)
        pos += 14
        xattrs = []
        for _ in range(count):
            nlen, vlen = struct.unpack_from("<HI", buf, pos)
            pos += 6
            xattrs.append((buf[pos:pos + nlen], buf[pos + nlen:pos + nlen + vlen]))
            pos += nlen + vlen
        entry = Entry(kind, name, mode, uid, gid, xattrs)
        if kind == KIND_FILE:
            entry.size, = struct.unpack_from("<Q", buf, pos)
            entry.digest = buf[pos + 8:pos + 40]
            pos += 40
        elif kind == KIND_DIR:
            entry.tree = buf[pos:pos + 32]
            pos += 32
        elif kind == KIND_SYMLINK:
            tlen, = struct.unpack_from("<H", buf, pos)
            entry.target = buf[pos + 2:pos + 2 + tlen]
            pos += 2 + tlen
        else:
            raise Malformed(f"kind {kind}")
    except struct.error as err:
        raise Malformed(str(err)) from None
    if pos > len(buf):
        raise Malformed("entry runs past the end")
    return entry, pos


def encode_tree(entries: list[Entry]) -> bytes:
    ordered = sorted(entries, key=lambda e: e.name)
    return b"STRE" + struct.pack("<HI", 1, len(ordered)) + b"".join(e.encode() for e in ordered)


# -- rows, the pack ----------------------------------------------------------------------

@dataclass
class Row:
    parent: bytes
    entry: Entry
    inline: int = 0
    offset: int = 0

    @property
    def path(self) -> bytes:
        return self.parent + b"/" + self.entry.name if self.parent else self.entry.name

    def encode(self) -> bytes:
        out = struct.pack("<H", len(self.parent)) + self.parent + self.entry.encode()
        if self.entry.kind == KIND_FILE:
            out += struct.pack("<BQ", self.inline, self.offset)
        return out


@dataclass
class Pack:
    """A pack taken apart: every field of the header and the sections, decoded."""

    version: int
    flags: int
    inline_max: int
    commit: bytes
    ref: bytes
    rows: list[Row]
    inline_data: dict[int, bytes]  # row index -> bytes, for inline files
    header_overrides: dict[str, int] = field(default_factory=dict)
    image: bytes | None = None  # version 2: the image identity, raw
    image_objects: bytes | None = None  # version 3: the image objects section, raw

    @property
    def commit_id(self) -> bytes:
        return hashlib.sha256(self.commit).digest()

    def copy(self) -> Pack:
        return replace(self, rows=[Row(r.parent, replace(r.entry, xattrs=list(r.entry.xattrs)),
                                       r.inline, r.offset) for r in self.rows],
                       inline_data=dict(self.inline_data), header_overrides=dict(self.header_overrides))


def parse(data: bytes) -> Pack:
    """Take a well-formed pack apart (Malformed if it is not)."""
    if len(data) < HEADER.size:
        raise Malformed("short")
    (magic, version, flags, inline_max, _cid, commit_len, ref_len, entry_count, manifest_size,
     manifest_frames, data_size, data_frames) = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise Malformed("magic")
    pos = HEADER.size
    commit = data[pos:pos + commit_len]
    pos += commit_len
    ref = data[pos:pos + ref_len]
    pos += ref_len
    image = image_objects = None
    if version >= 2:
        image = data[pos:pos + IMAGE.size]
        pos += IMAGE.size
    if version >= 3:
        try:
            count, = IMAGE_COUNT.unpack_from(data, pos)
        except struct.error:
            raise Malformed("image object count") from None
        if count > 1 << 24:
            raise Malformed("image object count")
        image_objects = data[pos:pos + IMAGE_COUNT.size + count * IMAGE_OBJECT.size]
        pos += len(image_objects)
    if manifest_frames > 1 << 20 or data_frames > 1 << 20:
        raise Malformed("frame counts")
    tables = [FRAME.unpack_from(data, pos + 8 * i) for i in range(manifest_frames + data_frames)]
    pos += 8 * len(tables)
    dctx = zstandard.ZstdDecompressor()
    chunks = []
    for compressed, size in tables:
        try:
            chunks.append(dctx.decompress(data[pos:pos + compressed], max_output_size=size))
        except zstandard.ZstdError as err:
            raise Malformed(str(err)) from None
        pos += compressed
    manifest = b"".join(chunks[:manifest_frames])
    inline_bytes = b"".join(chunks[manifest_frames:])
    if len(manifest) != manifest_size or len(inline_bytes) != data_size:
        raise Malformed("sizes")
    rows: list[Row] = []
    at = 0
    while at < len(manifest):
        try:
            plen, = struct.unpack_from("<H", manifest, at)
        except struct.error:
            raise Malformed("row") from None
        parent = manifest[at + 2:at + 2 + plen]
        entry, at = _entry_at(manifest, at + 2 + plen)
        row = Row(parent, entry)
        if entry.kind == KIND_FILE:
            try:
                row.inline, row.offset = struct.unpack_from("<BQ", manifest, at)
            except struct.error:
                raise Malformed("row tail") from None
            at += 9
        rows.append(row)
    if len(rows) != entry_count:
        raise Malformed("entry count")
    inline_data = {i: inline_bytes[r.offset:r.offset + r.entry.size]
                   for i, r in enumerate(rows) if r.entry.kind == KIND_FILE and r.inline}
    return Pack(version, flags, inline_max, commit, ref, rows, inline_data, image=image,
                image_objects=image_objects)


def fix_derived(pack: Pack) -> None:
    """Recompute what follows from the rows: offsets, tree ids (deepest first), the commit's
    root tree (so the commit id changes), in place.  Rows keep their order.  The image
    identity (versions 2 and 3) cannot be recomputed here (that takes an EROFS writer): the
    pack becomes version 1, which has none (nor image objects)."""
    if pack.version in (2, 3) and pack.image is not None:
        pack.version, pack.image, pack.image_objects = 1, None, None
    offset = 0
    for i, row in enumerate(pack.rows):
        if row.entry.kind == KIND_FILE and row.inline:
            row.offset = offset
            offset += len(pack.inline_data.get(i, b""))
    children: dict[bytes, list[Entry]] = {}
    for row in pack.rows:
        children.setdefault(row.parent, []).append(row.entry)
    dir_rows = [r for r in pack.rows if r.entry.kind == KIND_DIR]
    for row in sorted(dir_rows, key=lambda r: -r.path.count(b"/")):
        row.entry.tree = hashlib.sha256(encode_tree(children.get(row.path, []))).digest()
    root = hashlib.sha256(encode_tree(children.get(b"", []))).digest()
    pack.commit = pack.commit[:6] + root + pack.commit[38:]


def encode(pack: Pack, *, level: int = 3, manifest_frame_hook=None, data_frame_hook=None) -> bytes:
    """Put a pack together: manifest cut every 1 MiB, inline data in greedy frames.  The hooks
    may replace the list of (frame bytes, declared size) before the tables are written."""
    cctx = zstandard.ZstdCompressor(level=level, write_checksum=False, write_content_size=True,
                                    write_dict_id=False)
    manifest = b"".join(r.encode() for r in pack.rows)
    mframes = [(cctx.compress(manifest[i:i + FRAME_MAX]), len(manifest[i:i + FRAME_MAX]))
               for i in range(0, len(manifest), FRAME_MAX)]
    dframes: list[tuple[bytes, int]] = []
    pending = b""
    data_size = 0
    for i, row in enumerate(pack.rows):
        if row.entry.kind == KIND_FILE and row.inline:
            blob = pack.inline_data.get(i, b"")
            data_size += len(blob)
            if len(pending) + len(blob) > FRAME_MAX and pending:
                dframes.append((cctx.compress(pending), len(pending)))
                pending = b""
            pending += blob
    if pending:
        dframes.append((cctx.compress(pending), len(pending)))
    if manifest_frame_hook:
        mframes = manifest_frame_hook(mframes)
    if data_frame_hook:
        dframes = data_frame_hook(dframes)
    fields = dict(magic=MAGIC, version=pack.version, flags=pack.flags, inline_max=pack.inline_max,
                  commit_id=pack.commit_id, commit_len=len(pack.commit), ref_len=len(pack.ref),
                  entry_count=len(pack.rows), manifest_size=len(manifest),
                  manifest_frames=len(mframes), data_size=data_size, data_frames=len(dframes))
    fields.update(pack.header_overrides)
    header = HEADER.pack(*fields.values())
    tables = b"".join(FRAME.pack(len(f), n) for f, n in mframes + dframes)
    return (header + pack.commit + pack.ref + (pack.image or b"") + (pack.image_objects or b"")
            + tables
            + b"".join(f for f, _ in mframes + dframes))


HEADER_FIELDS = ("magic", "version", "flags", "inline_max", "commit_id", "commit_len", "ref_len",
                 "entry_count", "manifest_size", "manifest_frames", "data_size", "data_frames")


def header_offsets() -> dict[str, tuple[int, str]]:
    """Each header field's offset and struct code."""
    out, pos = {}, 0
    for name, code in zip(HEADER_FIELDS, ["8s", "H", "H", "I", "32s", "I", "H", "I", "Q", "I", "Q", "I"],
                          strict=True):
        out[name] = (pos, code)
        pos += struct.calcsize("<" + code)
    return out


# -- signing -------------------------------------------------------------------------------

def sign_bytes(pack_bytes: bytes, private_pem: bytes) -> bytes:
    """A ``PACK.sig`` file (one signature) over ``pack_bytes`` by the PEM private key."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    key = serialization.load_pem_private_key(private_pem, password=None)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    signature = key.sign(SIG_DOMAIN + hashlib.sha256(pack_bytes).digest())  # type: ignore[call-arg]
    return SIG_MAGIC + struct.pack("<HH", 1, 1) + hashlib.sha256(raw).digest() + signature
