"""What a pack must be, checked independently of pack/: docs/FORMAT.md section 7 as code.

``problems(data)`` lists every rule the bytes break (empty: a valid pack).  The fuzzer
uses it as its oracle: a pack with problems that the product accepts is a pack wrongly
accepted.  ``Manifest`` is what a valid pack claims, path by path, to compare a mounted
view with.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass

import zstandard

from .packcodec import (
    FRAME,
    FRAME_MAX,
    HEADER,
    IMAGE,
    IMAGE_COUNT,
    IMAGE_OBJECT,
    KIND_DIR,
    KIND_FILE,
    KIND_SYMLINK,
    MAGIC,
    Entry,
    Malformed,
    _entry_at,
    encode_tree,
    fsverity_digest,
)

MAX_FRAME_COMPRESSED = FRAME_MAX + (FRAME_MAX >> 7) + 4096
XATTR_NAMESPACES = (b"security.", b"system.", b"trusted.", b"user.")
_REF_COMPONENT = re.compile(rb"[A-Za-z0-9_][A-Za-z0-9._+-]*")


@dataclass(frozen=True)
class Claim:
    """One path as the manifest says it is."""

    kind: int
    mode: int
    uid: int
    gid: int
    xattrs: tuple[tuple[bytes, bytes], ...]
    size: int = 0
    digest: bytes = b""
    target: bytes = b""
    inline: bool = False


# What only the passes that read a whole pack check (pack import, pack verify): a deploy
# trusts the image object list of the pack that import checked (section 7, "The image
# objects"), so a kept pack swapped for one whose list alone is wrong may deploy.
LIST_MISMATCH = "image objects are not what the manifest gives"
IMPORT_ONLY = (LIST_MISMATCH,)


@dataclass
class Verdict:
    problems: list[str]
    commit_id: bytes = b""
    ref: bytes = b""
    root: Claim | None = None
    claims: dict[bytes, Claim] | None = None  # path -> claim, for a pack valid for deploy

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def deploy_valid(self) -> bool:
        """Valid but perhaps for what only import and verify check (``IMPORT_ONLY``)."""
        return all(p in IMPORT_ONLY for p in self.problems)


def valid_ref(ref: bytes) -> bool:
    if not ref or len(ref) > 255:
        return False
    return all(_REF_COMPONENT.fullmatch(p) and not p.endswith(b".lock") and b".." not in p
               for p in ref.split(b"/"))


def _commit_problems(commit: bytes) -> tuple[list[str], bytes, Claim | None]:
    """Decode a commit (section 5); its root tree id and root metadata."""
    try:
        if commit[:4] != b"STCM" or struct.unpack_from("<H", commit, 4)[0] != 1:
            return ["commit magic/version"], b"", None
        root = commit[6:38]
        mode, uid, gid, count = struct.unpack_from("<IIIH", commit, 38)
        pos = 52
        xattrs = []
        for _ in range(count):
            nlen, vlen = struct.unpack_from("<HI", commit, pos)
            xattrs.append((commit[pos + 6:pos + 6 + nlen], commit[pos + 6 + nlen:pos + 6 + nlen + vlen]))
            pos += 6 + nlen + vlen
        has_parent = commit[pos]
        pos += 1 + 32 + 8
        if has_parent not in (0, 1):
            return ["commit has_parent"], root, None
        for _ in range(3):
            n, = struct.unpack_from("<I", commit, pos)
            if n > 1 << 20:
                return ["commit text field too long"], root, None
            commit[pos + 4:pos + 4 + n].decode("utf-8")
            pos += 4 + n
        count, = struct.unpack_from("<H", commit, pos)
        pos += 2
        keys = []
        for _ in range(count):
            for which in range(2):
                n, = struct.unpack_from("<I", commit, pos)
                text = commit[pos + 4:pos + 4 + n]
                text.decode("utf-8")
                if which == 0:
                    keys.append(text)
                pos += 4 + n
        if pos != len(commit) or keys != sorted(set(keys)) or count > 256:
            return ["commit trailing bytes or metadata order"], root, None
        meta_problems = _meta_problems(mode, xattrs)
        return meta_problems, root, Claim(KIND_DIR, mode, uid, gid, tuple(xattrs))
    except (struct.error, IndexError, UnicodeDecodeError):
        return ["commit does not decode"], b"", None


def _meta_problems(mode: int, xattrs: list[tuple[bytes, bytes]]) -> list[str]:
    out = []
    if mode > 0o7777:
        out.append(f"mode {mode:o}")
    names = [n for n, _ in xattrs]
    if names != sorted(set(names)) or len(names) > 1024:
        out.append("xattr names unsorted/duplicated")
    for name, value in xattrs:
        if not 1 <= len(name) <= 255 or b"\0" in name or not name.startswith(XATTR_NAMESPACES) \
                or len(value) > 65536:
            out.append(f"xattr {name!r}")
    return out


def _frames(data: bytes, pos: int, table: list[tuple[int, int]]) -> tuple[list[bytes], list[str]]:
    dctx = zstandard.ZstdDecompressor(max_window_size=FRAME_MAX)
    out, problems = [], []
    for compressed, size in table:
        frame = data[pos:pos + compressed]
        pos += compressed
        try:
            params = zstandard.get_frame_parameters(frame)
            if params.content_size != size or params.dict_id:
                problems.append("frame declared size/dict")
                out.append(b"")
                continue
            obj = dctx.decompressobj()
            chunk = obj.decompress(frame)
            if len(chunk) != size or obj.unused_data or not obj.eof:
                problems.append("frame content")
            out.append(chunk)
        except zstandard.ZstdError:
            problems.append("frame does not decompress")
            out.append(b"")
    return out, problems


def verdict(data: bytes) -> Verdict:
    """Every rule of section 7 that ``data`` breaks, in the reader's order (stops at the first
    failing stage, like the reader)."""
    if len(data) < HEADER.size:
        return Verdict(["short"])
    (magic, version, flags, inline_max, cid, commit_len, ref_len, entry_count, manifest_size,
     mframes, data_size, dframes) = HEADER.unpack_from(data)
    p = []
    if magic != MAGIC or version not in (1, 2, 3) or flags != 0:
        p.append("magic/version/flags")
    image_at = HEADER.size + commit_len + ref_len
    image_size = IMAGE.size if version in (2, 3) else 0
    objects: list[tuple[bytes, bytes, int]] | None = None  # version 3: the image objects
    if inline_max > FRAME_MAX or not 0 < commit_len <= 16 << 20 or not 0 < ref_len <= 255:
        p.append("header limits")
    if entry_count > 1 << 24 or manifest_size > 256 << 20 or data_size > 1 << 40 or dframes > data_size:
        p.append("header limits")
    if mframes != -(-manifest_size // FRAME_MAX):
        p.append("manifest frame count")
    tables_at = image_at + image_size
    if not p and image_size and image_at + image_size <= len(data):
        recipe, size, _digest = IMAGE.unpack_from(data, image_at)
        if recipe != 1 or not 0 < size <= 1 << 42:
            return Verdict(["image identity"])
    if not p and version == 3:
        if tables_at + IMAGE_COUNT.size > len(data):
            return Verdict(["image objects beyond the end"])
        count, = IMAGE_COUNT.unpack_from(data, tables_at)
        end = tables_at + IMAGE_COUNT.size + count * IMAGE_OBJECT.size
        if count > min(entry_count, 1 << 24) or end > len(data):
            return Verdict(["image object count"])
        objects = [IMAGE_OBJECT.unpack_from(data, tables_at + IMAGE_COUNT.size + IMAGE_OBJECT.size * i)
                   for i in range(count)]
        if any(not inline_max < size < 1 << 63 for _d, _k, size in objects) \
                or len({d for d, _k, _s in objects}) != count:
            return Verdict(["image object sizes or repeated digests"])
        tables_at = end
    if p or tables_at + 8 * (mframes + dframes) > len(data):
        return Verdict(p or ["tables beyond the end"])
    table = [FRAME.unpack_from(data, tables_at + 8 * i) for i in range(mframes + dframes)]
    for compressed, size in table:
        if not 1 <= compressed <= MAX_FRAME_COMPRESSED or not 1 <= size <= FRAME_MAX:
            p.append("frame sizes")
    mt, dt = table[:mframes], table[mframes:]
    if any(size != FRAME_MAX for _, size in mt[:-1]) or sum(s for _, s in mt) != manifest_size:
        p.append("manifest cut")
    if sum(s for _, s in dt) != data_size:
        p.append("data sizes")
    end = tables_at + 8 * len(table) + sum(c for c, _ in table)
    if end != len(data):
        p.append("sections do not end at the end of the file")
    if p:
        return Verdict(p)
    commit = data[HEADER.size:HEADER.size + commit_len]
    ref = data[HEADER.size + commit_len:image_at]
    if hashlib.sha256(commit).digest() != cid:
        return Verdict(["commit id"])
    cp, root_tree, root_claim = _commit_problems(commit)
    if cp or not valid_ref(ref):
        return Verdict(cp or ["ref name"])
    chunks, fp = _frames(data, tables_at + 8 * len(table), table)
    if fp:
        return Verdict(fp)
    manifest = b"".join(chunks[:mframes])
    try:
        problems, claims = _rows(manifest, entry_count, inline_max, root_tree, chunks[mframes:], dt)
    except (Malformed, struct.error, IndexError):
        return Verdict(["manifest rows do not decode"])
    if not problems and objects is not None and objects != image_objects(claims):
        return Verdict([LIST_MISMATCH], cid, ref, root_claim, claims)
    return Verdict(problems, cid, ref, root_claim, claims if not problems else None)


def meta_key(claim: Claim) -> bytes:
    """SHA-256 of the metadata's encoding (store.model.Meta.encode): a file object's key."""
    out = struct.pack("<IIIH", claim.mode, claim.uid, claim.gid, len(claim.xattrs))
    out += b"".join(struct.pack("<HI", len(n), len(v)) + n + v for n, v in claim.xattrs)
    return hashlib.sha256(out).digest()


def image_objects(claims: dict[bytes, Claim]) -> list[tuple[bytes, bytes, int]]:
    """The image objects a version-3 pack must list (section 7, "The image objects"): per
    distinct digest of the large files, in manifest order, the first one's digest, meta key
    and size."""
    out, seen = [], set()
    for claim in claims.values():  # in manifest order
        if claim.kind == KIND_FILE and not claim.inline and claim.digest not in seen:
            seen.add(claim.digest)
            out.append((claim.digest, meta_key(claim), claim.size))
    return out


def _rows(manifest: bytes, entry_count: int, inline_max: int, root_tree: bytes,
          data_chunks: list[bytes], data_table: list[tuple[int, int]]
          ) -> tuple[list[str], dict[bytes, Claim]]:
    problems: list[str] = []
    claims: dict[bytes, Claim] = {}
    # the stack of open directories: (path, last child name, children entries, its row entry)
    stack: list[tuple[bytes, list[bytes], list[Entry], Entry | None]] = [(b"", [], [], None)]
    pos = rows = 0
    offset = 0
    inline_rows: list[tuple[bytes, int, int, bytes]] = []

    def close_until(parent: bytes) -> bool:
        while stack and stack[-1][0] != parent:
            path, _names, children, entry = stack.pop()
            if entry is not None and hashlib.sha256(encode_tree(children)).digest() != entry.tree:
                problems.append(f"tree id of {path!r}")
            if not stack:
                return False
        return True

    while pos < len(manifest):
        plen, = struct.unpack_from("<H", manifest, pos)
        parent = manifest[pos + 2:pos + 2 + plen]
        entry, pos = _entry_at(manifest, pos + 2 + plen)
        inline = False
        if entry.kind == KIND_FILE:
            flag, off = struct.unpack_from("<BQ", manifest, pos)
            pos += 9
            if flag not in (0, 1) or bool(flag) != (entry.size <= inline_max):
                problems.append("inline flag")
            inline = flag == 1
            if inline:
                if off != offset:
                    problems.append("offset")
                inline_rows.append((parent + b"/" + entry.name if parent else entry.name, off,
                                    entry.size, entry.digest))
                offset += entry.size
            elif off != 0:
                problems.append("large offset")
        rows += 1
        if len(parent) > 4095 or not close_until(parent):
            problems.append(f"parent {parent!r} is not the open directory")
            break
        name = entry.name
        if not 1 <= len(name) <= 255 or name in (b".", b"..") or b"/" in name or b"\0" in name:
            problems.append(f"name {name!r}")
        _p, names, children, _e = stack[-1]
        if names and names[-1] >= name:
            problems.append(f"name order {name!r}")
        names.append(name)
        children.append(entry)
        problems += _meta_problems(entry.mode, entry.xattrs)
        if entry.kind == KIND_SYMLINK and (not 1 <= len(entry.target) <= 4095 or b"\0" in entry.target):
            problems.append("symlink target")
        path = parent + b"/" + name if parent else name
        claims[path] = Claim(entry.kind, entry.mode, entry.uid, entry.gid, tuple(entry.xattrs),
                             entry.size, entry.digest, entry.target, inline)
        if entry.kind == KIND_DIR:
            stack.append((path, [], [], entry))
        if problems:
            break
    if not problems:
        close_until(b"")
        if stack and hashlib.sha256(encode_tree(stack[0][2])).digest() != root_tree:
            problems.append("root tree")
    if rows != entry_count:
        problems.append("entry count")
    if offset != sum(s for _, s in data_table):
        problems.append("data size")
    if problems:
        return problems, claims
    # data: greedy frames (so no file straddles two), then every inline file's digest
    expected, pending = [], 0
    for _path, _off, size, _digest in inline_rows:
        if pending + size > FRAME_MAX and pending:
            expected.append(pending)
            pending = 0
        pending += size
    if pending:
        expected.append(pending)
    if expected != [size for _, size in data_table]:
        problems.append("data frames not cut greedily")
    data = b"".join(data_chunks)
    for path, off, size, digest in inline_rows:
        if fsverity_digest(data[off:off + size]) != digest:
            problems.append(f"{path!r} digest")
    return problems, claims
