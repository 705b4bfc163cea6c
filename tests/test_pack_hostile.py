"""Reading a pack is the attack surface: hand-made hostile packs, one per rule, and a
Hypothesis property that mutated, truncated and extended packs only ever raise PackError
and never write outside the unpack target."""

from __future__ import annotations

import os
import shutil
import struct
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pack import format as fmt
from pack.reader import PackReader
from pack.unpack import TreeWriter, unpack_inline
from store.commits import Commit
from store.errors import PackError
from store.model import Entry, Kind, Meta
from tests.test_pack_support import (
    FILE_META,
    ROOT_META,
    build_sample,
    craft,
    dir_entry,
    file_entry,
    frames_of,
    row,
    symlink_entry,
    tree_id,
    zstd_frame,
)

pytestmark = pytest.mark.usefixtures("needs_root")

HI = b"hi there"
BIG = b"B" * 5000


def good_parts():
    """A small consistent tree: a/ (a/f inline), b (large), l (symlink)."""
    f = file_entry(b"f", HI)
    a = dir_entry(b"a", [f])
    b = file_entry(b"b", BIG)
    link = symlink_entry(b"l", b"../../etc")
    rows = [row(b"", a), row(b"a", f, offset=0), row(b"", b), row(b"", link)]
    return rows, [a, b, link]


def good_pack() -> bytes:
    rows, root = good_parts()
    return craft(rows, root=root, data=HI)


def read_all(path: str, target: str | None = None) -> None:
    with PackReader(path) as reader:
        if target is None:
            reader.check_data()
        else:
            unpack_inline(reader, target)


def write(tmp_path, data: bytes) -> str:
    path = str(tmp_path / "hostile.pack")
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def test_crafted_good_pack_reads(tmp_path):
    target = tmp_path / "t"
    target.mkdir()
    read_all(write(tmp_path, good_pack()), str(target))
    assert (target / "a" / "f").read_bytes() == HI
    assert os.readlink(target / "l") == "../../etc"
    assert not (target / "b").exists()


def _rows_with(*extra: tuple[bytes, Entry], root_extra: list[Entry] = ()) -> bytes:
    rows, root = good_parts()
    rows += [row(parent, entry) for parent, entry in extra]
    return craft(rows, root=root + list(root_extra), data=HI)


def _swap_rows(i: int, j: int) -> bytes:
    rows, root = good_parts()
    rows[i], rows[j] = rows[j], rows[i]
    return craft(rows, root=root, data=HI)


def _header(**fields: int) -> bytes:
    rows, root = good_parts()
    return craft(rows, root=root, data=HI, header=fields)


def _image(identity: bytes) -> bytes:
    rows, root = good_parts()
    return craft(rows, root=root, data=HI, image=identity)


def _kind_9() -> bytes:
    rows, root = good_parts()
    bad = bytearray(rows[3])
    bad[2] = 9  # the kind byte follows the u16 parent length (empty parent)
    rows[3] = bytes(bad)
    return craft(rows, root=root, data=HI)


def _lying_frame() -> bytes:
    rows, root = good_parts()
    manifest = b"".join(rows)
    frame = zstd_frame(manifest + b"more")  # declares len + 4 bytes
    return craft(rows, root=root, data=HI, manifest_frames=[(frame, len(manifest))])


def _frame_without_size() -> bytes:
    rows, root = good_parts()
    manifest = b"".join(rows)
    frame = zstd_frame(manifest, content_size=False)
    return craft(rows, root=root, data=HI, manifest_frames=[(frame, len(manifest))])


def _bomb() -> bytes:
    # A tiny frame that would decompress to 64 MiB, declared as such: over FRAME_MAX.
    rows, root = good_parts()
    bomb = zstd_frame(bytes(64 << 20))
    return craft(rows, root=root, data=HI, data_frames=[(bomb, 64 << 20)])


def _junk_in_frame() -> bytes:
    rows, root = good_parts()
    manifest = b"".join(rows)
    frame = zstd_frame(manifest) + b"junk"
    return craft(rows, root=root, data=HI, manifest_frames=[(frame, len(manifest))])


def _straddle() -> bytes:
    f1, f2 = file_entry(b"f1", b"1" * 10), file_entry(b"f2", b"2" * 10)
    data = b"1" * 10 + b"2" * 10
    return craft([row(b"", f1, offset=0), row(b"", f2, offset=10)], root=[f1, f2], data=data,
                 data_frames=frames_of(data, [15]))


def _wasteful_frames() -> bytes:
    f1, f2 = file_entry(b"f1", b"1" * 10), file_entry(b"f2", b"2" * 10)
    data = b"1" * 10 + b"2" * 10
    return craft([row(b"", f1, offset=0), row(b"", f2, offset=10)], root=[f1, f2], data=data,
                 data_frames=frames_of(data, [10]))


def _wrong_data() -> bytes:
    rows, root = good_parts()
    return craft(rows, root=root, data=b"hi THERE")


def _tree_id_mismatch() -> bytes:
    f = file_entry(b"f", HI)
    a = Entry(b"a", Kind.DIR, ROOT_META, tree=tree_id([]))  # claims an empty directory
    return craft([row(b"", a), row(b"a", f)], root=[a], data=HI)


def _root_mismatch() -> bytes:
    rows, root = good_parts()
    return craft(rows, root=root[:2], data=HI)


def _commit_id_mismatch() -> bytes:
    rows, root = good_parts()
    commit = Commit(tree_id(root), ROOT_META, 1, version="1")
    return craft(rows, root=root, data=HI, commit=commit, commit_bytes=commit.encode()[:-1] + b"\1")


def _file_below(kind: str) -> bytes:
    below = file_entry(b"x", b"")
    top = symlink_entry(b"s", b"/") if kind == "symlink" else file_entry(b"s", b"")
    rows = [row(b"", top), row(b"s", below)]
    return craft(rows, root=[top])


def _bad_name(name: bytes) -> bytes:
    f = file_entry(name, b"")
    return craft([row(b"", f)], root=[f])


def _bad_parent(parent: bytes) -> bytes:
    f = file_entry(b"x", b"")
    return craft([row(parent, f)], root=[])


def _closed_parent() -> bytes:
    # a/ (empty, so closing it is consistent), b, then a/z: a was closed when b came.
    z = file_entry(b"z", b"")
    a = dir_entry(b"a", [])
    b = file_entry(b"b", b"")
    return craft([row(b"", a), row(b"", b), row(b"a", z)], root=[a, b])


def _inline_flag(flag: int, offset: int = 0) -> bytes:
    f = file_entry(b"f", HI)
    return craft([row(b"", f, inline=flag, offset=offset)], root=[f], data=HI if flag else b"")


def _xattr(name: bytes) -> bytes:
    f = file_entry(b"f", b"", Meta(0o644, 0, 0, ((name, b"v"),)))
    return craft([row(b"", f)], root=[f])


def _mode_bits() -> bytes:
    f = file_entry(b"f", b"", Meta(0o644 | 0o100000, 0, 0))
    return craft([row(b"", f)], root=[f])


def _symlink_target(target: bytes) -> bytes:
    link = Entry(b"l", Kind.SYMLINK, Meta(0o777, 0, 0), target=target)
    return craft([row(b"", link)], root=[link])


def _extra_manifest_bytes() -> bytes:
    rows, root = good_parts()
    return craft(rows + [b"\0"], root=root, data=HI, header={"entry_count": 4})


def _too_many_rows_claimed() -> bytes:
    rows, root = good_parts()
    return craft(rows, root=root, data=HI, header={"entry_count": 5})


def _bad_ref(ref: bytes) -> bytes:
    rows, root = good_parts()
    return craft(rows, root=root, data=HI, ref=ref)


def _large_with_offset() -> bytes:
    b = file_entry(b"b", BIG)
    return craft([row(b"", b, offset=7)], root=[b])


HOSTILE = {
    "truncated header": (lambda: good_pack()[:40], "truncated header"),
    "bad magic": (lambda: b"NOTAPACK" + good_pack()[8:], "bad magic"),
    "future version": (lambda: _header(version=4), "unsupported pack version"),
    "version 2 without its image identity": (lambda: _header(version=2), "image recipe"),
    "unknown image recipe": (lambda: _image(struct.pack("<HQ32s", 2, 4096, bytes(32))),
                             "unknown image recipe"),
    "image of no bytes": (lambda: _image(struct.pack("<HQ32s", 1, 0, bytes(32))), "image size 0"),
    "image over its cap": (lambda: _image(struct.pack("<HQ32s", 1, fmt.MAX_IMAGE + 1, bytes(32))),
                           "image size"),
    "unknown flags": (lambda: _header(flags=1), "unknown flags"),
    "inline_max over cap": (lambda: _header(inline_max=fmt.MAX_INLINE_MAX + 1), "inline_max"),
    "huge entry count": (lambda: _header(entry_count=fmt.MAX_ENTRIES + 1), "entry count"),
    "huge manifest": (lambda: _header(manifest_size=1 << 40, manifest_frames=1 << 20), "manifest size"),
    "frame count mismatch": (lambda: _header(manifest_frames=2), "frames"),
    "tables beyond the file": (lambda: _header(data_size=1 << 39, data_frames=1 << 30), "truncated"),
    "commit length zero": (lambda: _header(commit_len=0), "commit length"),
    "truncated": (lambda: good_pack()[:-1], "add up|truncated"),
    "trailing bytes": (lambda: good_pack() + b"\0", "add up"),
    "commit id mismatch": (_commit_id_mismatch, "commit id mismatch"),
    "bad ref": (lambda: _bad_ref(b"../etc"), "invalid ref"),
    "non-ascii ref": (lambda: _bad_ref(b"\xffref"), "invalid ref"),
    "frame declares another size": (_lying_frame, "declares"),
    "frame without content size": (_frame_without_size, "declares"),
    "decompression bomb": (_bomb, "decompresses to"),
    "junk after a frame": (_junk_in_frame, "corrupt zstd frame"),
    "file straddles frames": (_straddle, "straddles"),
    "frames not filled greedily": (_wasteful_frames, "greedily"),
    "inline data differs": (_wrong_data, "fs-verity digest"),
    "tree id mismatch": (_tree_id_mismatch, "tree id mismatch"),
    "root tree mismatch": (_root_mismatch, "root tree"),
    "dot-dot name": (lambda: _bad_name(b".."), "reserved"),
    "dot name": (lambda: _bad_name(b"."), "reserved"),
    "empty name": (lambda: _bad_name(b""), "empty name"),
    "slash in name": (lambda: _bad_name(b"a/b"), "'/'"),
    "absolute parent": (lambda: _bad_parent(b"/etc"), "absolute"),
    "dot-dot parent": (lambda: _bad_parent(b"a/../b"), "bad parent path component"),
    "missing parent": (lambda: _bad_parent(b"nowhere"), "not a directory listed before"),
    "file below a symlink": (lambda: _file_below("symlink"), "not a directory listed before"),
    "file below a file": (lambda: _file_below("file"), "not a directory listed before"),
    "child after its directory closed": (_closed_parent, "not a directory listed before"),
    "duplicate names": (lambda: _rows_with((b"", file_entry(b"l", b""))), "duplicate"),
    "unsorted rows": (lambda: _swap_rows(2, 3), "unsorted"),
    "unknown type": (_kind_9, "unknown entry kind"),
    "small file not inline": (lambda: _inline_flag(0), "inline flag"),
    "inline offset wrong": (lambda: _inline_flag(1, offset=3), "inline data offset"),
    "large file with an offset": (_large_with_offset, "large file with data offset"),
    "xattr outside namespaces": (lambda: _xattr(b"evil.name"), "namespace"),
    "xattr without a name": (lambda: _xattr(b"user."), "namespace"),
    "mode with type bits": (lambda: _mode_bits(), "mode"),
    "symlink target with NUL": (lambda: _symlink_target(b"a\0b"), "NUL"),
    "empty symlink target": (lambda: _symlink_target(b""), "out of range"),
    "trailing manifest bytes": (_extra_manifest_bytes, "trailing"),
    "more rows claimed than present": (_too_many_rows_claimed, "truncated"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_pack_refused_with_pack_error(tmp_path, name):
    make, pattern = HOSTILE[name]
    path = write(tmp_path, make())
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(PackError, match=pattern) as info:
        read_all(path, str(target))
    assert info.value.offset is not None or info.value.path is not None
    assert os.listdir(tmp_path) and set(os.listdir(tmp_path)) <= {"hostile.pack", "target"}


def test_escape_through_symlink_never_writes_outside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    link = symlink_entry(b"s", str(outside).encode())
    evil = file_entry(b"evil", b"pwned")
    data = craft([row(b"", link), row(b"s", evil, offset=0)], root=[link], data=b"pwned")
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(PackError):
        read_all(write(tmp_path, data), str(target))
    assert os.listdir(outside) == []


def test_tree_writer_refuses_writes_below_symlinks_and_bad_names(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(PackError):
        with TreeWriter(str(target)) as tree:
            tree.symlink(b"s", os.fsencode(outside), Meta(0o777, 0, 0))
            tree.write_file(b"s/evil", b"x", FILE_META)
    for bad in (b"..", b"a/../../x", b"/abs", b""):
        fresh = tmp_path / f"t{len(os.listdir(tmp_path))}"
        fresh.mkdir()
        with pytest.raises(PackError):
            with TreeWriter(str(fresh)) as tree:
                tree.write_file(bad, b"x", FILE_META)
    assert os.listdir(outside) == []


def test_unpack_needs_an_empty_target(tmp_path):
    from store.errors import UsageError
    (tmp_path / "t").mkdir()
    os.symlink("/", tmp_path / "t" / "a")  # a planted symlink where the pack puts a directory
    with pytest.raises(UsageError):
        read_all(write(tmp_path, good_pack()), str(tmp_path / "t"))


def test_not_a_regular_file(tmp_path):
    with pytest.raises(PackError, match="not a regular file"):
        PackReader(str(tmp_path))


# -- the property ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def valid_pack(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz")
    built = build_sample(str(base), inline_max=30000)  # every file inline: data frames too
    small = build_sample(str(base), name="small", version="2", inline_max=64)
    return open(built.pack, "rb").read(), open(small.pack, "rb").read()


def _mutations(size: int) -> st.SearchStrategy:
    position = st.one_of(st.integers(0, min(size - 1, 300)), st.integers(0, size - 1))
    flip = st.tuples(st.just("set"), position, st.integers(0, 255))
    word = st.tuples(st.just("word"), st.integers(0, fmt.HEADER_SIZE - 4),
                     st.sampled_from([0, 1, 0x7F, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]))
    cut = st.tuples(st.just("truncate"), st.integers(0, size - 1), st.just(0))
    extend = st.tuples(st.just("extend"), st.integers(1, 64), st.integers(0, 255))
    insert = st.tuples(st.just("insert"), position, st.integers(0, 255))
    delete = st.tuples(st.just("delete"), position, st.just(0))
    return st.lists(st.one_of(flip, word, cut, extend, insert, delete), min_size=1, max_size=4)


def _apply(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for op, where, value in edits:
        where = min(where, max(len(out) - 1, 0))
        if op == "set" and out:
            out[where] = value
        elif op == "word" and len(out) >= where + 4:
            out[where:where + 4] = struct.pack("<I", value)
        elif op == "truncate":
            del out[where:]
        elif op == "extend":
            out += bytes([value]) * where
        elif op == "insert":
            out[where:where] = bytes([value])
        elif op == "delete" and out:
            del out[where]
    return bytes(out)


@settings(max_examples=int(os.environ.get("SEALTREE_PACK_FUZZ_EXAMPLES", "300")), deadline=None)
@given(data=st.data())
def test_reading_damaged_packs_only_raises_pack_error(valid_pack, data):
    which = data.draw(st.integers(0, 1))
    original = valid_pack[which]
    damaged = _apply(original, data.draw(_mutations(len(original))))
    sandbox = tempfile.mkdtemp(prefix="pack-fuzz-")
    try:
        path = os.path.join(sandbox, "p.pack")
        with open(path, "wb") as handle:
            handle.write(damaged)
        outside = os.path.join(sandbox, "outside")
        target = os.path.join(sandbox, "target")
        os.mkdir(outside)
        os.mkdir(target)
        try:
            read_all(path, target)
        except PackError as err:
            assert str(err)  # anything else propagates and fails the property
        assert sorted(os.listdir(sandbox)) == ["outside", "p.pack", "target"]
        assert os.listdir(outside) == []
    finally:
        for directory, dirs, _files in os.walk(sandbox):
            for name in dirs:
                os.chmod(os.path.join(directory, name), 0o700)
        shutil.rmtree(sandbox)
