"""The structure-aware pack fuzzer.

Each case takes the sample's signed pack apart (``packcodec``), changes one thing at the
level of the structure -- a header field, a frame, a frame table, a row, an entry's name,
kind, mode, owner, xattrs, size, digest, a symlink target, the row order, a zstd frame
replaced by a bomb, bits of the decompressed manifest -- and either recomputes what
follows from it (tree ids, root tree, commit id, frame tables, header: a *consistent*
hostile pack that reaches the unpacker) or not, then **re-signs it with the trusted key**
so that it gets past the signature check.  The product then runs, through the CLI:
``pack inspect``, ``pack verify``, ``pack import`` into a copy of the device repository,
and ``deploy --mount`` (of the imported commit; or, when import refused, of the device's
ref with the kept pack swapped for the mutated one, so that deploy's own checks are
reached).  Checked for every case:

- no traceback, exit statuses only from the documented set, every refusal one clean
  ``sealtree: error:`` line;
- a command that accepts the pack (exit 0) accepts only what ``oracle.verdict`` finds
  valid (the pack re-encodes to its manifest's claims; for deploy, but for what only
  import and verify check: ``oracle.IMPORT_ONLY``); deploy only what is also
  deployable (every large file an object the device has; no overlay xattrs);
- after a successful deploy the mounted view equals the manifest, path by path, and
  nothing was written outside the target (canary names looked for in every directory
  from the case up to /, and in a canary directory symlinks point at);
- no mount is left (``/proc/self/mountinfo`` before and after).
"""

from __future__ import annotations

import os
import random
import shutil
import stat
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import zstandard

from . import packcodec as pc
from .cli import DOCUMENTED_EXITS, Cli, Result
from .env import REF, Env, mounts_below, unmount_below
from .oracle import Claim, Verdict, verdict

CANARY = b"PWNED"
OVERLAY_XATTRS = (b"trusted.overlay.opaque", b"trusted.overlay.redirect", b"trusted.overlay.metacopy",
                  b"user.overlay.opaque", b"trusted.overlay.origin")


@dataclass
class Case:
    index: int
    mutation: str
    data: bytes


@dataclass
class Outcome:
    case: Case
    valid: bool
    deployable: bool
    codes: dict[str, int]
    failures: list[str]
    accepted_by: list[str]
    max_rss_kib: int


@dataclass
class Stats:
    tried: int = 0
    refused_everywhere: int = 0
    accepted_valid: int = 0
    deployed_and_matched: int = 0
    wrongly_accepted: int = 0
    crashes: int = 0
    unclean_errors: int = 0
    undocumented_exits: int = 0
    leftover_mounts: int = 0
    escapes: int = 0
    view_mismatches: int = 0
    generic_exit_1: int = 0
    valid_refused: int = 0
    max_rss_kib: int = 0
    max_rss_kib_by_mutation: dict[str, int] = field(default_factory=dict)
    by_mutation: Counter[str] = field(default_factory=Counter)
    exit_codes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("failures", "notes")}
        out["by_mutation"] = dict(sorted(self.by_mutation.items()))
        out["exit_codes"] = dict(sorted(self.exit_codes.items()))
        out["max_rss_kib_by_mutation"] = dict(sorted(self.max_rss_kib_by_mutation.items()))
        out["failures"] = self.failures[:50]
        out["notes"] = self.notes[:50]
        return out


# -- mutations ------------------------------------------------------------------------------

Mutator = Callable[[random.Random, bytes, pc.Pack], bytes]
INTERESTING = [0, 1, 2, 7, 8, 255, 256, 4095, 4096, 4097, 65535, 65536, (1 << 20) - 1, 1 << 20,
               (1 << 20) + 1, (1 << 24) + 1, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32,
               (1 << 40) + 1, (1 << 63) - 1, (1 << 64) - 1]


def _consistent(pack: pc.Pack, rng: random.Random, **kw: object) -> bytes:
    """Recompute the derived fields (most of the time) and encode."""
    if rng.random() < 0.85:
        pc.fix_derived(pack)
    return pc.encode(pack, **kw)  # type: ignore[arg-type]


def _pick(rng: random.Random, pack: pc.Pack, kind: int | None = None) -> int:
    choices = [i for i, r in enumerate(pack.rows) if kind is None or r.entry.kind == kind]
    return rng.choice(choices) if choices else 0


def m_header_field(rng: random.Random, data: bytes, _pack: pc.Pack) -> bytes:
    offsets = pc.header_offsets()
    name = rng.choice([n for n in offsets if n not in ("magic", "commit_id")] + ["magic", "commit_id"])
    pos, code = offsets[name]
    size = struct.calcsize("<" + code)
    if code in ("8s", "32s"):
        value = bytes(rng.randrange(256) for _ in range(size))
        return data[:pos] + value + data[pos + size:]
    old, = struct.unpack_from("<" + code, data, pos)
    new = rng.choice([rng.choice(INTERESTING), old + 1, old - 1, old * 2,
                      old ^ (1 << rng.randrange(size * 8))])
    new %= 1 << (8 * size)
    return data[:pos] + struct.pack("<" + code, new) + data[pos + size:]


def m_frame_table(rng: random.Random, data: bytes, pack: pc.Pack) -> bytes:
    (_m, version, _f, _i, _c, clen, rlen, _e, _ms, mf, _ds, df) = pc.HEADER.unpack_from(data)
    count = mf + df
    image = pc.IMAGE.size if version >= 2 else 0
    if version >= 3:
        count_at = pc.HEADER.size + clen + rlen + image
        image += pc.IMAGE_COUNT.size + pc.IMAGE_OBJECT.size * pc.IMAGE_COUNT.unpack_from(data, count_at)[0]
    at = pc.HEADER.size + clen + rlen + image + 8 * rng.randrange(max(count, 1)) + 4 * rng.randrange(2)
    old, = struct.unpack_from("<I", data, at)
    new = rng.choice([rng.choice(INTERESTING), old + 1, old - 1, 0]) % (1 << 32)
    return data[:at] + struct.pack("<I", new) + data[at + 4:]


def m_image_objects(rng: random.Random, data: bytes, pack: pc.Pack) -> bytes:
    """The image objects section (version 3) with one object changed, moved, dropped or
    repeated, or its count off by one; spliced in raw (the rest of the pack unchanged)."""
    section = pack.image_objects
    if section is None:
        return data
    at = pc.HEADER.size + len(pack.commit) + len(pack.ref) + pc.IMAGE.size
    size = pc.IMAGE_OBJECT.size
    count, = pc.IMAGE_COUNT.unpack_from(section)
    objects = [bytearray(section[4 + size * i:4 + size * (i + 1)]) for i in range(count)]
    what = rng.randrange(6)
    if objects and what == 0:  # another size
        one = rng.choice(objects)
        old, = struct.unpack_from("<Q", one, 64)
        struct.pack_into("<Q", one, 64, rng.choice([old + 1, old - 1, pack.inline_max, 1 << 63]))
    elif objects and what == 1:  # another meta key, or another digest
        one = rng.choice(objects)
        one[rng.randrange(64)] ^= 1 << rng.randrange(8)
    elif len(objects) > 1 and what == 2:  # two swapped
        i, j = rng.sample(range(len(objects)), 2)
        objects[i], objects[j] = objects[j], objects[i]
    elif objects and what == 3:  # one dropped
        del objects[rng.randrange(len(objects))]
    elif objects and what == 4:  # one repeated
        objects.insert(rng.randrange(len(objects) + 1), rng.choice(objects))
    else:  # the count off by one, the objects unchanged
        new = pc.IMAGE_COUNT.pack(count + rng.choice([1, -1 if count else 1]))
        return data[:at] + new + section[4:] + data[at + len(section):]
    new = pc.IMAGE_COUNT.pack(len(objects)) + b"".join(objects)
    return data[:at] + new + data[at + len(section):]


def m_bitflips(rng: random.Random, data: bytes, _pack: pc.Pack) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 4, 16])):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def m_splice(rng: random.Random, data: bytes, _pack: pc.Pack) -> bytes:
    i = rng.randrange(len(data) + 1)
    how = rng.randrange(4)
    if how == 0:
        return data[:i]  # truncated
    if how == 1:
        return data + bytes(rng.randrange(256) for _ in range(rng.choice([1, 8, 100])))
    if how == 2:
        return data[:i] + data[i + rng.randint(1, 64):]
    return data[:i] + rng.randbytes(rng.randint(1, 64)) + data[i:]


_BOMBS: dict[tuple[int, int], tuple[bytes, int]] = {}


def _bomb_frame(rng: random.Random) -> tuple[bytes, int]:
    kind = rng.randrange(6)
    key = (kind, rng.randrange(2))
    if key not in _BOMBS:
        _BOMBS[key] = _make_bomb(kind, key[1])
    return _BOMBS[key]


def _make_bomb(kind: int, variant: int) -> tuple[bytes, int]:
    if kind == 0:  # declared huge: 64 MiB (or 1 GiB) of zeros in a few KiB
        n = [64 << 20, 1 << 30][variant]
        return zstandard.ZstdCompressor(level=1).compress(bytes(n)) if n < 1 << 30 else \
            _zeros_frame(n), n
    if kind == 1:  # no content size, decompresses to 16 MiB
        cctx = zstandard.ZstdCompressor(level=1, write_content_size=False)
        return cctx.compress(bytes(16 << 20)), 1 << 20
    if kind == 2:  # a window above 1 MiB
        params = zstandard.ZstdCompressionParameters.from_level(3, window_log=24, enable_ldm=True)
        return zstandard.ZstdCompressor(compression_params=params).compress(bytes(range(256)) * 4096), 1 << 20
    if kind == 3:  # a checksum
        return zstandard.ZstdCompressor(write_checksum=True).compress(b"x" * 100), 100
    if kind == 4:  # a skippable frame
        return struct.pack("<II", 0x184D2A50, 8) + bytes(8), 8
    return b"\x28\xb5\x2f\xfd" + bytes(range(20)), 100  # junk after the magic


def _zeros_frame(n: int) -> bytes:
    cctx = zstandard.ZstdCompressor(level=1)
    chunker = cctx.chunker(size=n)
    out = b""
    zero = bytes(1 << 20)
    for _ in range(n >> 20):
        out += b"".join(chunker.compress(zero))
    return out + b"".join(chunker.finish())


def m_bomb(rng: random.Random, _data: bytes, pack: pc.Pack) -> bytes:
    bomb = _bomb_frame(rng)
    which = rng.randrange(2)

    def swap(frames: list[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
        if not frames:
            return [bomb]
        frames = list(frames)
        frames[rng.randrange(len(frames))] = bomb
        return frames

    return pc.encode(pack, level=3, **{"manifest_frame_hook" if which == 0 else "data_frame_hook": swap})


def m_manifest_bits(rng: random.Random, _data: bytes, pack: pc.Pack) -> bytes:
    """Flip bits in the decompressed manifest, re-compress (the table stays consistent)."""
    def flip(frames: list[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
        out = []
        for frame, size in frames:
            raw = bytearray(zstandard.ZstdDecompressor().decompress(frame))
            for _ in range(rng.choice([1, 1, 2, 3])):
                raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
            out.append((zstandard.ZstdCompressor(level=3).compress(bytes(raw)), size))
        return out
    return pc.encode(pack, level=3, manifest_frame_hook=flip)


def m_frame_cuts(rng: random.Random, _data: bytes, pack: pc.Pack) -> bytes:
    """Same content, other frame cuts (small manifest frames, one data frame split)."""
    def recut(frames: list[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
        raw = b"".join(zstandard.ZstdDecompressor().decompress(f) for f, _ in frames)
        if not raw:
            return frames
        step = rng.choice([1, 7, 100, max(1, len(raw) // 2)])
        cctx = zstandard.ZstdCompressor(level=1)
        return [(cctx.compress(raw[i:i + step]), len(raw[i:i + step])) for i in range(0, len(raw), step)]
    hook = "manifest_frame_hook" if rng.random() < 0.5 else "data_frame_hook"
    return pc.encode(pack, level=3, **{hook: recut})


def m_big_manifest(rng: random.Random, _data: bytes, pack: pc.Pack) -> bytes:
    """A memory probe: a manifest declared (and compressed) as up to 256 MiB in 1 MiB frames of
    zeros -- a few KiB of pack.  Zero bytes are not a valid row (kind 0), so a reader that
    checks rows as frames arrive stops at once; one that decompresses everything first holds
    the whole manifest.  The peak RSS of the commands is recorded per mutation."""
    frames = rng.choice([16, 64, 256])
    zero = _BOMBS.get((-1, 0))
    if zero is None:
        zero = _BOMBS[(-1, 0)] = (zstandard.ZstdCompressor(level=1).compress(bytes(pc.FRAME_MAX)),
                                  pc.FRAME_MAX)
    pack.header_overrides["entry_count"] = rng.choice([1, 1 << 20])
    return pc.encode(pack, level=3, manifest_frame_hook=lambda _frames: [zero] * frames)


def m_level(rng: random.Random, _data: bytes, pack: pc.Pack) -> bytes:
    """A valid pack with other compression: must be accepted (build options change bytes only)."""
    return pc.encode(pack, level=rng.choice([1, 3, 9, 22]))


HOSTILE_NAMES = [b"..", b".", b"", b"a/b", b"x\0y", b"/abs", b"n" * 256, b"new\nline",
                 CANARY + b"-dots/../..", b"\xff\xfe"]


def m_name(rng: random.Random, _data: bytes, pack: pc.Pack) -> bytes:
    row = pack.rows[_pick(rng, pack)]
    if rng.random() < 0.3:  # a sibling's name: a duplicate
        siblings = [r.entry.name for r in pack.rows if r.parent == row.parent and r is not row]
        row.entry.name = rng.choice(siblings) if siblings else b".."
    else:
        row.entry.name = rng.choice(HOSTILE_NAMES)
    return _consistent(pack, rng)


def m_parent(rng: random.Random, _data: bytes, pack: pc.Pack) -> bytes:
    row = pack.rows[_pick(rng, pack)]
    row.entry.name = CANARY + b"-parent"
    paths = [r.path for r in pack.rows]
    row.parent = rng.choice([b"/tmp", b"/", b"..", b"../..", b"etc/..", b"etc/../..", b"/etc",
                             b"nonexistent", rng.choice(paths), b"etc//deep", b"etc/"])
    return _consistent(pack, rng)


def m_duplicate_row(rng: random.Random, _data: bytes, pack: pc.Pack) -> bytes:
    i = _pick(rng, pack)
    copy = pack.copy().rows[i]
    if rng.random() < 0.5 and copy.entry.kind != pc.KIND_DIR:
        copy.entry.kind = rng.choice([pc.KIND_FILE, pc.KIND_SYMLINK])
        copy.entry.target = b"/" + CANARY
    pack.rows.insert(i + 1, copy)
    if i in pack.inline_data:
        pack.inline_data = {(k + 1 if k > i else k): v for k, v in pack.inline_data.items()}
        pack.inline_data[i + 1] = pack.inline_data[i]
    return _consistent(pack, rng)


def m_reorder(rng: random.Random, _data: bytes, pack: pc.Pack) -> bytes:
    i, j = rng.randrange(len(pack.rows)), rng.randrange(len(pack.rows))
    pack.rows[i], pack.rows[j] = pack.rows[j], pack.rows[i]
    if i in pack.inline_data or j in pack.inline_data:
        a, b = pack.inline_data.pop(i, None), pack.inline_data.pop(j, None)
        if a is not None:
            pack.inline_data[j] = a
        if b is not None:
            pack.inline_data[i] = b
    return _consistent(pack, rng)


def m_delete_row(rng: random.Random, _data: bytes, pack: pc.Pack) -> bytes:
    i = _pick(rng, pack)
    del pack.rows[i]
    pack.inline_data = {(k - 1 if k > i else k): v for k, v in pack.inline_data.items() if k != i}
    return _consistent(pack, rng)


def m_kind(rng: random.Random, _data: bytes, pack: pc.Pack) -> bytes:
    row = pack.rows[_pick(rng, pack)]
    row.entry.kind = rng.choice([pc.KIND_FILE, pc.KIND_DIR, pc.KIND_SYMLINK, 0, 4, 9, 255])
    row.entry.target = row.entry.target or b"x"
    return _consistent(pack, rng)


def m_meta(rng: random.Random, _data: bytes, pack: pc.Pack) -> bytes:
    row = pack.rows[_pick(rng, pack)]
    what = rng.randrange(3)
    if what == 0:
        row.entry.mode = rng.choice([0o7777, 0o10000, 0o170755, 0o4777, 0o20644, (1 << 32) - 1])
    elif what == 1:
        row.entry.uid = rng.choice([0, 1, 65534, 65535, (1 << 32) - 1, (1 << 31)])
    else:
        row.entry.gid = rng.choice([0, 42, (1 << 32) - 2, (1 << 32) - 1])
    return _consistent(pack, rng)


def m_xattr(rng: random.Random, _data: bytes, pack: pc.Pack) -> bytes:
    kind = rng.choice([pc.KIND_DIR, pc.KIND_DIR, pc.KIND_FILE, pc.KIND_SYMLINK])
    row = pack.rows[_pick(rng, pack, kind)]
    choice = rng.randrange(8)
    xs = row.entry.xattrs
    if choice <= 2:
        xs.append((rng.choice(OVERLAY_XATTRS), rng.choice([b"y", b"/etc", b""])))
    elif choice == 3:
        xs.append((rng.choice([b"foo.bar", b"", b"user.", b"user.a\0b", b"u" * 256]), b"v"))
    elif choice == 4:
        xs.append((b"user.big", bytes(rng.choice([65536, 65537]))))
    elif choice == 5:
        xs.extend([(b"user.dup", b"1"), (b"user.dup", b"2")])
    elif choice == 6:
        xs.append((b"system.posix_acl_access", rng.randbytes(rng.choice([3, 4, 28]))))
    else:
        xs.append((b"security.capability", rng.randbytes(rng.choice([4, 20]))))
    if rng.random() < 0.8:
        xs.sort()
    return _consistent(pack, rng)


def m_symlink(rng: random.Random, _data: bytes, pack: pc.Pack) -> bytes:
    """Symlinks out of the root, and rows below a symlinked parent."""
    outside = os.fsencode(pack.__dict__.get("canary_dir", "/tmp"))
    target = rng.choice([outside, b"../../../../../../" + outside.lstrip(b"/"), b"/", b"..",
                         b"", b"t" * 4096, b"a\0b"])
    if rng.random() < 0.5:
        i = _pick(rng, pack, pc.KIND_SYMLINK)
        pack.rows[i].entry.target = target
        return _consistent(pack, rng)
    link = pc.Row(b"", pc.Entry(pc.KIND_SYMLINK, b"0lnk", 0o777, 0, 0, [], target=target or b"/"))
    below = pc.Row(b"0lnk", pc.Entry(pc.KIND_FILE, CANARY + b"-below-link", 0o644, 0, 0, [],
                                     size=4, digest=pc.fsverity_digest(b"evil")), inline=1)
    pack.rows[0:0] = [link, below]
    pack.inline_data = {k + 2: v for k, v in pack.inline_data.items()}
    pack.inline_data[1] = b"evil"
    return _consistent(pack, rng)


def m_file(rng: random.Random, _data: bytes, pack: pc.Pack) -> bytes:
    i = _pick(rng, pack, pc.KIND_FILE)
    row = pack.rows[i]
    what = rng.randrange(7)
    if what == 0:  # a huge size, large
        row.entry.size = rng.choice([1 << 33, 1 << 40, (1 << 63) - 1, (1 << 64) - 1])
        row.inline = 0
    elif what == 1:  # flip the inline flag
        row.inline ^= 1
    elif what == 2:  # a wrong offset
        row.offset = rng.choice([1, 4096, (1 << 64) - 1])
        return pc.encode(pack)
    elif what == 3 and row.inline:  # other content, digest kept (a lie) or recomputed (valid)
        pack.inline_data[i] = b"evil"
        row.entry.size = 4
        if rng.random() < 0.5:
            row.entry.digest = pc.fsverity_digest(b"evil")
    elif what == 4:  # a large file pointing at another object's digest or nowhere
        row.entry.digest = rng.choice([bytes(32), rng.randbytes(32)] +
                                      [r.entry.digest for r in pack.rows if r.entry.kind == pc.KIND_FILE])
    elif what == 5:  # inline data longer or shorter than the file
        pack.inline_data[i] = pack.inline_data.get(i, b"") + b"+"
    else:  # a large file made inline with its (fake) bytes
        row.inline = 1
        pack.inline_data[i] = bytes(min(row.entry.size, 5000))
    return _consistent(pack, rng)


def m_tree_id(rng: random.Random, _data: bytes, pack: pc.Pack) -> bytes:
    pc.fix_derived(pack)
    i = _pick(rng, pack, pc.KIND_DIR)
    pack.rows[i].entry.tree = rng.randbytes(32)
    return pc.encode(pack)


def m_commit(rng: random.Random, _data: bytes, pack: pc.Pack) -> bytes:
    what = rng.randrange(4)
    if what == 0:
        pack.ref = rng.choice([b"../x", b"a..b", b"x.lock", b"r" * 256, b"/abs", b"", b"a//b", b"\xff"])
    elif what == 1:  # another version string (valid, newer or older)
        version = rng.choice([b"0.1", b"9.9", b"1.0", b"x" * 10])
        pack.commit = _with_commit_field(pack.commit, 2, version)
    elif what == 2:  # a commit that does not decode
        pack.commit = pack.commit[:rng.randrange(len(pack.commit))]
    else:
        pack.inline_max = rng.choice([0, 1, 4095, 4097, 1 << 20, (1 << 20) + 1])
    return _consistent(pack, rng)


def _with_commit_field(commit: bytes, which: int, value: bytes) -> bytes:
    """Replace subject (0), body (1) or version (2) in commit bytes."""
    _m, _v, _root, _mode, _uid, _gid, count = struct.unpack_from("<4sH32sIIIH", commit)
    pos = 52
    for _ in range(count):
        nlen, vlen = struct.unpack_from("<HI", commit, pos)
        pos += 6 + nlen + vlen
    pos += 1 + 32 + 8
    for _ in range(which):
        n, = struct.unpack_from("<I", commit, pos)
        pos += 4 + n
    n, = struct.unpack_from("<I", commit, pos)
    return commit[:pos] + struct.pack("<I", len(value)) + value + commit[pos + 4 + n:]


MUTATORS: dict[str, Mutator] = {
    "header-field": m_header_field, "frame-table": m_frame_table, "bit-flips": m_bitflips,
    "splice": m_splice, "bomb": m_bomb, "manifest-bits": m_manifest_bits,
    "frame-cuts": m_frame_cuts, "level": m_level, "big-manifest": m_big_manifest,
    "name": m_name, "parent": m_parent,
    "duplicate-row": m_duplicate_row, "reorder": m_reorder, "delete-row": m_delete_row,
    "kind": m_kind, "meta": m_meta, "xattr": m_xattr, "symlink": m_symlink, "file": m_file,
    "tree-id": m_tree_id, "commit": m_commit, "image-objects": m_image_objects,
}


def make_case(index: int, seed: int, original: bytes, canary_dir: str) -> Case:
    rng = random.Random(f"{seed}:{index}")
    name = list(MUTATORS)[index % len(MUTATORS)] if index < 2 * len(MUTATORS) else rng.choice(list(MUTATORS))
    pack = pc.parse(original)
    pack.__dict__["canary_dir"] = canary_dir
    data = MUTATORS[name](rng, original, pack)
    if data == original:
        data = m_bitflips(rng, original, pack)
        name += "+bit-flips"
    return Case(index, name, data)


# -- running a case -------------------------------------------------------------------------

class Fuzzer:
    """Runs cases in ``work`` against the device repository of ``env``."""

    def __init__(self, env: Env, work: str) -> None:
        self.env = env
        self.work = work
        os.makedirs(work, exist_ok=True)
        self.canary_dir = os.path.join(work, "outside")
        os.makedirs(self.canary_dir, exist_ok=True)
        with open(self.env.pack_path(env.commit), "rb") as handle:
            self.original = handle.read()
        with open(self.env.key("vendor"), "rb") as handle:
            self.private = handle.read()
        good = verdict(self.original)
        assert good.valid and good.claims is not None, good.problems
        self.objects = {(c.digest, c.size, c.mode, c.uid, c.gid, c.xattrs)
                        for c in good.claims.values() if c.kind == pc.KIND_FILE and not c.inline}
        self.canary_places = self._ancestors()

    def _ancestors(self) -> list[str]:
        out, path = [], os.path.realpath(self.work)
        while True:
            out.append(path)
            if path == "/":
                return out
            path = os.path.dirname(path)

    def deployable(self, v: Verdict) -> bool:
        if not v.deploy_valid or v.claims is None:
            return False
        for claim in [*v.claims.values(), *([v.root] if v.root else [])]:
            if any(n.startswith((b"trusted.overlay.", b"user.overlay.")) for n, _ in claim.xattrs):
                return False
            key = (claim.digest, claim.size, claim.mode, claim.uid, claim.gid, claim.xattrs)
            if claim.kind == pc.KIND_FILE and not claim.inline and key not in self.objects:
                return False
        return True

    def run(self, case: Case) -> Outcome:
        cdir = os.path.join(self.work, f"case-{case.index}")
        if os.path.exists(cdir):
            unmount_below(cdir)
            shutil.rmtree(cdir)
        os.makedirs(cdir)
        pack = os.path.join(cdir, "fuzzed.pack")
        with open(pack, "wb") as handle:
            handle.write(case.data)
        with open(pack + ".sig", "wb") as handle:
            handle.write(pc.sign_bytes(case.data, self.private))
        repo = self.env.fresh_repo(os.path.join(cdir, "repo"))
        target = os.path.join(cdir, "target")
        os.mkdir(target)
        before = set(mounts_below(self.work))
        v = verdict(case.data)
        deployable = self.deployable(v)
        cli = Cli(repo)
        results: dict[str, Result] = {}
        results["inspect"] = Cli()("pack", "inspect", pack)
        results["verify"] = Cli()("pack", "verify", pack, "--keys", self.env.keys)
        results["import"] = cli("pack", "import", pack, "--keys", self.env.keys, "--allow-downgrade")
        if results["import"].code == 0:
            rev = v.commit_id.hex() if v.commit_id else REF
        else:  # deploy must check the kept pack again: swap it for the mutated one
            kept = os.path.join(repo, "packs", f"{self.env.commit}.pack")
            shutil.copyfile(pack, kept)
            shutil.copyfile(pack + ".sig", kept + ".sig")
            rev = REF
        results["deploy"] = cli("deploy", rev, "--keys", self.env.keys, "--mount", target,
                                "--allow-downgrade", "--verify", "userspace")
        failures: list[str] = []
        accepted = [name for name, r in results.items() if r.code == 0]
        for name, r in results.items():
            if r.traceback:
                failures.append(f"crash in {name}: {r.describe()}")
            elif r.code not in DOCUMENTED_EXITS or r.code < 0:
                failures.append(f"undocumented exit in {name}: {r.describe()}")
            elif r.code != 0 and not r.clean_error():
                failures.append(f"unclean error in {name}: {r.describe()}")
            if name in ("verify", "import", "deploy") and r.code == 0 and not (
                    v.deploy_valid if name == "deploy" else v.valid):
                failures.append(f"wrongly accepted by {name} ({'; '.join(v.problems[:3])}): {r.describe()}")
        if results["deploy"].code == 0:
            if not deployable:
                failures.append(f"wrongly deployed (not deployable): {results['deploy'].describe()}")
            elif v.claims is not None and v.root is not None:
                failures += [f"mounted view: {m}" for m in compare_view(target, v.claims, v.root)]
            umount = Cli(repo)("umount", target)
            if umount.code != 0:
                failures.append(f"umount failed: {umount.describe()}")
        failures += self._escapes(cdir)
        left = sorted(set(mounts_below(self.work)) - before)
        if left:
            failures.append(f"mounts left behind: {left}")
            unmount_below(cdir)
        outcome = Outcome(case, v.valid, deployable, {k: r.code for k, r in results.items()},
                          failures, accepted, max(r.maxrss_kib for r in results.values()))
        if not failures:
            shutil.rmtree(cdir, ignore_errors=True)
        return outcome

    def _escapes(self, cdir: str) -> list[str]:
        found = []
        for place in [*self.canary_places, self.canary_dir, os.path.join(cdir, "repo")]:
            try:
                names = os.listdir(place)
            except OSError:
                continue
            found += [os.path.join(place, n) for n in names if n.startswith("PWNED")]
        for name in os.listdir(self.canary_dir):
            found.append(os.path.join(self.canary_dir, name))
        for path in found:
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
            except OSError:
                pass
        return [f"written outside the target: {p}" for p in found]


def compare_view(target: str, claims: dict[bytes, Claim], root: Claim) -> list[str]:
    """Every difference between the mounted tree and the manifest's claims."""
    problems = []
    seen: set[bytes] = set()
    top = os.fsencode(target)
    for directory, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(directory, name)
            seen.add(os.path.relpath(path, top))
    if seen != set(claims):
        problems.append(f"paths differ: {sorted(seen ^ set(claims))[:5]}")
    for rel, claim in [(b".", root), *claims.items()]:
        path = os.path.join(top, rel)
        try:
            st = os.lstat(path)
            xs = tuple(sorted((os.fsencode(n), os.getxattr(path, n, follow_symlinks=False))
                              for n in os.listxattr(path, follow_symlinks=False)))
        except OSError as err:
            problems.append(f"{rel!r}: {err}")
            continue
        kind = {stat.S_IFREG: pc.KIND_FILE, stat.S_IFDIR: pc.KIND_DIR, stat.S_IFLNK: pc.KIND_SYMLINK}.get(
            stat.S_IFMT(st.st_mode))
        meta = (kind, st.st_uid, st.st_gid, xs)
        want = (claim.kind, claim.uid, claim.gid, claim.xattrs)
        if meta != want or (kind != pc.KIND_SYMLINK and stat.S_IMODE(st.st_mode) != claim.mode):
            problems.append(f"{rel!r}: {meta} {oct(st.st_mode)} != {want} {oct(claim.mode)}")
        elif kind == pc.KIND_SYMLINK and os.readlink(path) != claim.target:
            problems.append(f"{rel!r}: symlink target")
        elif kind == pc.KIND_FILE:
            with open(path, "rb") as handle:
                content = handle.read()
            if len(content) != claim.size or pc.fsverity_digest(content) != claim.digest:
                problems.append(f"{rel!r}: content")
    return problems


def fuzz(env: Env, work: str, *, cases: int, seed: int, stats: Stats | None = None,
         deadline: float | None = None, workers: int = 1) -> Stats:
    """Run cases 0 .. ``cases``-1 (stopping early at ``deadline``, a time.monotonic value);
    with ``workers`` > 1, in that many forked processes (case i in worker i % workers), each
    in its own directory, their statistics summed."""
    if workers > 1:
        return _fuzz_parallel(env, work, cases=cases, seed=seed, deadline=deadline, workers=workers)
    return _fuzz_some(env, work, range(cases), seed, stats or Stats(), deadline)


def _fuzz_parallel(env: Env, work: str, *, cases: int, seed: int, deadline: float | None,
                   workers: int) -> Stats:
    import pickle  # noqa: PLC0415

    pids = []
    for worker in range(workers):
        result = os.path.join(work, f"worker-{worker}.pickle")
        os.makedirs(work, exist_ok=True)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                part = _fuzz_some(env, os.path.join(work, f"w{worker}"), range(worker, cases, workers),
                                  seed, Stats(), deadline)
                with open(result, "wb") as handle:
                    pickle.dump(part, handle)
                code = 0
            finally:
                os._exit(code)
        pids.append((pid, result))
    total = Stats()
    for pid, result in pids:
        os.waitpid(pid, 0)
        with open(result, "rb") as handle:
            part = pickle.load(handle)
        for name, value in part.__dict__.items():
            if name == "max_rss_kib":
                total.max_rss_kib = max(total.max_rss_kib, value)
            elif name == "max_rss_kib_by_mutation":
                for k, v in value.items():
                    total.max_rss_kib_by_mutation[k] = max(total.max_rss_kib_by_mutation.get(k, 0), v)
            elif name == "seconds":
                total.seconds = max(total.seconds, value)
            elif isinstance(value, Counter):
                getattr(total, name).update(value)
            elif isinstance(value, list):
                getattr(total, name).extend(value)
            else:
                setattr(total, name, getattr(total, name) + value)
    return total


def _fuzz_some(env: Env, work: str, indices: range, seed: int, stats: Stats,
               deadline: float | None) -> Stats:
    fuzzer = Fuzzer(env, work)
    started = time.monotonic()
    for index in indices:
        if deadline is not None and time.monotonic() > deadline:
            stats.notes.append(f"stopped at the deadline before case {index}")
            break
        case = make_case(index, seed, fuzzer.original, fuzzer.canary_dir)
        outcome = fuzzer.run(case)
        record(stats, outcome)
    stats.seconds += time.monotonic() - started
    return stats


def record(stats: Stats, outcome: Outcome) -> None:
    stats.tried += 1
    stats.by_mutation[outcome.case.mutation.split("+")[0]] += 1
    for name, code in outcome.codes.items():
        stats.exit_codes[f"{name}:{code}"] += 1
    stats.max_rss_kib = max(stats.max_rss_kib, outcome.max_rss_kib)
    kind = outcome.case.mutation.split("+")[0]
    stats.max_rss_kib_by_mutation[kind] = max(stats.max_rss_kib_by_mutation.get(kind, 0),
                                              outcome.max_rss_kib)
    if not outcome.accepted_by or outcome.accepted_by == ["inspect"]:
        stats.refused_everywhere += 1
    if outcome.valid and outcome.accepted_by:
        stats.accepted_valid += 1
    if outcome.codes.get("deploy") == 0 and not outcome.failures:
        stats.deployed_and_matched += 1
    if outcome.valid and outcome.deployable and outcome.codes.get("deploy") != 0:
        stats.valid_refused += 1
        stats.notes.append(f"case {outcome.case.index} ({outcome.case.mutation}): valid and deployable "
                           f"by the oracle, refused: {outcome.codes}")
    if 1 in outcome.codes.values():
        stats.generic_exit_1 += 1
    for failure in outcome.failures:
        kind = failure.split(":")[0]
        if kind.startswith("crash"):
            stats.crashes += 1
        elif kind.startswith("wrongly"):
            stats.wrongly_accepted += 1
        elif kind.startswith("unclean"):
            stats.unclean_errors += 1
        elif kind.startswith("undocumented"):
            stats.undocumented_exits += 1
        elif kind.startswith("mounts left"):
            stats.leftover_mounts += 1
        elif kind.startswith("written outside"):
            stats.escapes += 1
        elif kind.startswith("mounted view"):
            stats.view_mismatches += 1
        stats.failures.append(f"case {outcome.case.index} ({outcome.case.mutation}): {failure[:1500]}")


def _write_big_manifest_pack(env: Env, path: str, count: int) -> None:
    with open(env.pack_path(env.commit), "rb") as handle:
        pack = pc.parse(handle.read())
    empty = pc.fsverity_digest(b"")
    pack.rows = [pc.Row(b"", pc.Entry(pc.KIND_FILE, b"%0255d" % i, 0o644, 0, 0, [], 0, empty), 1, 0)
                 for i in range(count)]
    pack.inline_data = {}
    pc.fix_derived(pack)
    data = pc.encode(pack, level=1)
    with open(path, "wb") as handle:
        handle.write(data)
    with open(env.key("vendor"), "rb") as handle:
        sig = pc.sign_bytes(data, handle.read())
    with open(path + ".sig", "wb") as handle:
        handle.write(sig)
    with open(path + ".size", "w") as handle:
        handle.write(str(sum(len(r.encode()) for r in pack.rows)))


def memory_probe(env: Env, work: str, *, manifest_mib: int = 250) -> dict[str, object]:
    """A valid, signed pack whose manifest decompresses to about ``manifest_mib`` MiB (empty
    inline files with 255-byte names, all in the root: legal by docs/FORMAT.md), a small file
    on disk; the peak RSS and time of ``pack inspect`` and ``pack verify`` run as real
    ``python3 -m sealtree`` processes (the fuzzer's forked children would count the
    parent's memory too)."""
    os.makedirs(work, exist_ok=True)
    path = os.path.join(work, "big-manifest.pack")
    per_row = 2 + 3 + 255 + 14 + 40 + 9
    count = min(manifest_mib * (1 << 20) // per_row, (1 << 20) - 1)
    # Built in a child of its own: the rows take some GiB as Python objects, and a parent
    # that had grown so would hand its peak to every child it starts (ru_maxrss counts the
    # pages a forked child inherits before it execs).
    pid = os.fork()
    if pid == 0:
        try:
            _write_big_manifest_pack(env, path, count)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    with open(path + ".size") as handle:
        manifest = int(handle.read())
    out: dict[str, object] = {"pack_bytes": os.path.getsize(path), "manifest_bytes": manifest,
                              "rows": count}
    for name, args in (("inspect", ["pack", "inspect", path]),
                       ("verify", ["pack", "verify", path, "--keys", env.keys])):
        result = Cli(exec_=True)(*args, timeout=600)
        out[name] = {"exit": result.code, "peak_rss_mib": round(result.maxrss_kib / 1024, 1),
                     "seconds": round(result.seconds, 1), "traceback": result.traceback}
    os.unlink(path)
    os.unlink(path + ".size")
    return out
