"""Pack and object deltas: round trips rebuild exactly the new pack and objects; a damaged,
truncated or misapplied delta only ever raises one DeltaError naming the delta file and
leaves no output; applying a delta to a large pack stays within the stated memory bound."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import struct
import subprocess
import sys
import zlib

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from pack import build as pack_build
from pack import delta as pdelta
from pack import format as fmt
from pack.build import DEFAULT_LEVEL, FAST_LEVEL, build_pack
from pack.reader import PackReader
from sealtree.commands import delta_cmds
from store import deflate_blocks
from store import object_delta as odelta
from store.errors import DeltaError, FormatError, PackError
from store.fsverity import digest_bytes
from store.repo import Repository
from tests.helpers import ROOT, materialise, trees
from tests.test_pack_support import build_sample, commit_dir, sample_tree

pytestmark = pytest.mark.usefixtures("needs_root")


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _write(path: str, data: bytes) -> str:
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def _pack_pair(base: str, old_tree: dict, new_tree: dict, **build_args: int) -> tuple[str, str]:
    """Two packs of one ref built from two trees committed in one repository."""
    repo = Repository.init(os.path.join(base, "repo"))
    packs = []
    for name, tree in (("old", old_tree), ("new", new_tree)):
        src = os.path.join(base, name)
        os.mkdir(src)
        materialise(os.fsencode(src), tree)
        commit_id = commit_dir(repo, src, "os/main", version=name)
        pack = os.path.join(base, f"{name}.pack")
        build_pack(repo, commit_id, "os/main", pack, **build_args)
        packs.append(pack)
    return packs[0], packs[1]


def _man_pages(src: str, release: int) -> None:
    """Inline gzip -9n manual pages (as Debian ships them), edited from release to release."""
    directory = os.path.join(src, "usr", "share", "man", "man1")
    os.makedirs(directory, exist_ok=True)
    for i in range(3):
        text = _manual(100 + i, 60).replace(b".TP\n", b".TP %d\n" % release, 1 + i)
        _write(os.path.join(directory, f"tool{i}.1.gz"), _gnu_gzip(text))


@pytest.fixture
def pair(tmp_path):
    """The sample tree's pack, and the pack of the same tree one release later."""
    (tmp_path / "sample-src").mkdir()
    sample_tree(str(tmp_path / "sample-src"))
    _man_pages(str(tmp_path / "sample-src"), 1)
    old = build_sample(str(tmp_path), version="1")
    with open(os.path.join(old.src, "etc", "hostname"), "w") as handle:
        handle.write("device-2\n")
    _man_pages(old.src, 2)
    new = build_sample(str(tmp_path), version="2")
    made = pdelta.make_pack_delta(old.pack, new.pack, str(tmp_path / "1-2.pdelta"))
    return old.pack, new.pack, made.path


# -- pack deltas: round trips ---------------------------------------------------------------

@settings(max_examples=15)
@given(old_tree=trees, new_tree=trees, level=st.sampled_from([1, 3, 19]))
def test_pack_delta_rebuilds_the_new_pack_byte_for_byte(tmp_path_factory, old_tree, new_tree, level):
    base = str(tmp_path_factory.mktemp("pd"))
    old, new = _pack_pair(base, old_tree, new_tree, inline_max=300, level=level)
    made = pdelta.make_pack_delta(old, new, os.path.join(base, "d"))
    rebuilt = pdelta.apply_pack_delta(old, made.path, os.path.join(base, "rebuilt.pack"))
    assert _read(rebuilt.path) == _read(new)
    header = pdelta.parse_header(_read(made.path)[:pdelta.HEADER_SIZE], made.size)
    assert (header.version, header.level) == (2, 0)  # the levels are in the carried form
    assert (header.source_size, header.result_size) == (os.path.getsize(old), os.path.getsize(new))


def test_pack_delta_of_a_small_change_is_small(pair):
    old, new, delta = pair
    assert os.path.getsize(delta) < os.path.getsize(new) // 2  # the commit differs, little else
    out = delta + ".pack"
    result = pdelta.apply_pack_delta(old, delta, out)
    assert _read(out) == _read(new) and result.size == os.path.getsize(new)


def test_pack_delta_carries_changed_inline_gzip_files_as_their_text(pair):
    old, new, delta = pair
    data = _read(delta)
    header = pdelta.parse_header(data[:pdelta.HEADER_SIZE], len(data))
    dictionary = zstandard.ZstdCompressionDict(pdelta.reference(pdelta.expand_pack(old)),
                                               dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    carried = zstandard.ZstdDecompressor(dict_data=dictionary).decompress(
        data[pdelta.HEADER_SIZE:])
    assert len(carried) == header.expanded_size
    (frames,) = pdelta.LEVEL_COUNT.unpack_from(carried)
    assert frames == len(pdelta.expand_pack(new).layout.frames)
    gzip_table = pdelta.LEVEL_COUNT.size + frames
    assert pdelta.GZ_COUNT.unpack_from(carried, gzip_table)[0] == 3  # the three edited pages
    for row, content in pdelta.expand_pack(new).inline_files():
        if row.path.endswith(b".gz"):
            assert zlib.decompress(content, 31) in carried


def test_pack_delta_from_a_pack_to_itself(tmp_path):
    built = build_sample(str(tmp_path))
    made = pdelta.make_pack_delta(built.pack, built.pack, str(tmp_path / "same.pdelta"))
    pdelta.apply_pack_delta(built.pack, made.path, str(tmp_path / "again.pack"))
    assert _read(str(tmp_path / "again.pack")) == _read(built.pack)


# -- pack deltas: every fault is one DeltaError, and nothing is written -----------------------

def _refused(old: str, delta: str, out: str) -> DeltaError:
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with pytest.raises(DeltaError) as caught:
        pdelta.apply_pack_delta(old, delta, out)
    assert caught.value.path == delta
    assert str(caught.value).startswith(delta + ": ")
    assert not os.path.exists(out)
    assert not [n for n in os.listdir(os.path.dirname(out)) if n.startswith(".")]  # no temp left
    return caught.value


def test_truncated_pack_delta_is_refused_at_every_length(pair, tmp_path):
    old, _new, delta = pair
    data = _read(delta)
    lengths = sorted({*range(0, pdelta.HEADER_SIZE + 24), *range(0, len(data), max(1, len(data) // 40)),
                      len(data) - 1})
    for length in lengths:
        _refused(old, _write(str(tmp_path / "cut"), data[:length]), str(tmp_path / "out" / "p"))


def test_corrupt_pack_delta_never_yields_another_pack(pair, tmp_path):
    old, new, delta = pair
    refused = 0
    data = _read(delta)
    rng = random.Random(18)
    positions = [*range(pdelta.HEADER_SIZE + 8), *rng.sample(range(len(data)), 60)]
    (tmp_path / "out").mkdir()
    for position in positions:
        damaged = bytearray(data)
        damaged[position] ^= 1 << rng.randrange(8)
        path = _write(str(tmp_path / "bad"), bytes(damaged))
        out = str(tmp_path / "out" / "p")
        try:
            pdelta.apply_pack_delta(old, path, out)
        except DeltaError as err:
            assert err.path == path, position
            assert not os.path.exists(out)
            refused += 1
        else:  # a bit that changes nothing the result depends on (the zstd version, a window)
            assert _read(out) == _read(new), position
            os.unlink(out)
    assert refused >= len(positions) - 8


def test_trailing_bytes_after_the_payload_are_refused(pair, tmp_path):
    old, _new, delta = pair
    data = _read(delta)
    header = pdelta.parse_header(data[:pdelta.HEADER_SIZE], len(data))
    for tail in (b"\0", b"garbage" * 10, data[pdelta.HEADER_SIZE:]):  # the last: a second frame
        longer = header.__class__(**{**{f: getattr(header, f) for f in header.__slots__},
                                     "payload_size": header.payload_size + len(tail)})
        path = _write(str(tmp_path / "long"), longer.encode() + data[pdelta.HEADER_SIZE:] + tail)
        error = _refused(old, path, str(tmp_path / "out" / "p"))
        assert "more than the expanded pack" in str(error) or "corrupt payload" in str(error)


def test_pack_delta_applied_to_another_pack_says_so_before_any_work(pair, tmp_path):
    _old, new, delta = pair
    error = _refused(new, delta, str(tmp_path / "out" / "p"))
    assert "made from another pack" in str(error) and error.offset == 20


def test_not_a_delta_and_a_missing_delta(pair, tmp_path):
    old, new, _delta = pair
    error = _refused(old, new, str(tmp_path / "out" / "p"))  # a pack is not a delta
    assert "not a pack delta" in str(error)
    missing = str(tmp_path / "nope.pdelta")
    with pytest.raises(DeltaError) as caught:
        pdelta.apply_pack_delta(old, missing, str(tmp_path / "out" / "p"))
    assert caught.value.path == missing


def test_making_a_delta_from_a_file_that_is_not_a_pack_is_refused(pair, tmp_path):
    _old, new, delta = pair
    with pytest.raises(PackError):
        pdelta.make_pack_delta(delta, new, str(tmp_path / "x.pdelta"))
    assert not os.path.exists(tmp_path / "x.pdelta")


# -- object deltas ---------------------------------------------------------------------------

def _mutate(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    out = bytearray(data)
    for at, cut, insert in edits:
        at = at % (len(out) + 1)
        out[at:at + cut] = insert
    return bytes(out)


edits = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 64), st.binary(max_size=64)),
                 max_size=6)


@settings(max_examples=40)
@given(source=st.binary(max_size=5000), changes=edits)
def test_object_delta_round_trip(source, changes):
    result = _mutate(source, changes)
    delta = odelta.make_object_delta(source, result)
    assert delta is not None
    assert odelta.apply_object_delta(source, delta, digest_bytes(result)) == result


def test_object_delta_of_a_program_is_small_and_uses_the_best_method():
    rng = random.Random(7)
    code = bytes(rng.getrandbits(8) for _ in range(200_000))
    shifted = _mutate(code, [(1000, 0, b"patched!" * 4), (150_000, 100, b"")])
    delta = odelta.make_object_delta(code, shifted)
    assert delta is not None and len(delta) < 2000
    assert odelta.apply_object_delta(code, delta, digest_bytes(shifted)) == shifted


def test_object_delta_inside_gzip_files():
    text = b"".join(b".TH APT.CONF 5 line %d of the manual page\n" % i for i in range(400))
    old = gzip.compress(text, 9, mtime=0)
    new_text = text.replace(b"line 200 ", b"line two hundred ")
    new = _gzip_n(new_text)
    delta = odelta.make_object_delta(old, new)
    assert delta is not None
    header = odelta.parse_header(delta, len(delta))
    assert header.flags & odelta.FLAG_GZIP and len(delta) < len(new) // 3
    assert odelta.apply_object_delta(old, delta, digest_bytes(new)) == new


def _gzip_n(text: bytes) -> bytes:
    """What zlib's gzip -9n equivalent writes (header: no name, mtime 0, max compression)."""
    return odelta._gzip(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03", text)


def _gnu_gzip(data: bytes) -> bytes:
    """``gzip -9n``, as Debian compresses manual pages and changelogs."""
    return subprocess.run(["gzip", "-9n"], input=data, capture_output=True, check=True).stdout


def _manual(seed: int, lines: int) -> bytes:
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(1, 6)).hex() for _ in range(300)]
    return b"".join(b".TP\n\\fB%s\\fR %s\n" % (rng.choice(words).encode(),
                                                " ".join(rng.choices(words, k=rng.randint(3, 12))).encode())
                    for _ in range(lines))


@pytest.mark.parametrize("content", [
    _manual(1, 40), _manual(2, 700), _manual(3, 3000), _manual(4, 20000),  # 1 to many blocks
    random.Random(5).randbytes(150_000),  # incompressible: stored blocks
    b"a" * 300_000,  # long runs of matches
    _manual(6, 500) + random.Random(6).randbytes(40_000) + _manual(7, 500),  # mixed
], ids=["small", "medium", "large", "huge", "random", "runs", "mixed"])
def test_gnu_gzip_streams_are_rebuilt_from_zlibs_parse(content):
    packed = _gnu_gzip(content)
    inner = zlib.decompress(packed, 31)
    blocks = tuple(deflate_blocks.plan(packed[10:-8], len(inner)))
    assert odelta.rebuild_gzip(packed[:10], inner, blocks) == packed


@pytest.mark.parametrize("content", [
    _manual(1, 40), _manual(2, 700), _manual(3, 3000), _manual(4, 20000),
    random.Random(5).randbytes(150_000), b"a" * 300_000,
    _manual(6, 500) + random.Random(6).randbytes(40_000) + _manual(7, 500),
], ids=["small", "medium", "large", "huge", "random", "runs", "mixed"])
def test_gnu_gzip_streams_are_rebuilt_by_zlibs_own_block_flushes(content):
    packed = _gnu_gzip(content)
    recipe = odelta.gzip_recipe(packed)
    assert recipe is not None and recipe.inner == zlib.decompress(packed, 31)
    assert odelta.rebuild_gzip(packed[:10], recipe.inner, recipe.blocks, recipe.how) == packed
    if recipe.blocks:  # zlib alone does not cut them as gzip: its flushes do, in C
        assert recipe.how is not odelta.GzipRebuild.REENCODE
        assert odelta.rebuild_gzip(packed[:10], recipe.inner, recipe.blocks,
                                   odelta.GzipRebuild.REENCODE) == packed
    v1 = odelta.gzip_recipe(packed, v1=True)
    assert v1 is not None and v1.how is odelta.GzipRebuild.REENCODE


def test_object_delta_with_zlib_flushes_is_version_2_and_its_flags_are_checked():
    text = _manual(3, 3000)
    old, new = _gnu_gzip(text), _gnu_gzip(text.replace(b".TP\n", b".TP 4\n", 3))
    delta = odelta.make_object_delta(old, new)
    assert delta is not None
    header = odelta.parse_header(delta, len(delta))
    assert header.blocks and header.flags & odelta.FLAG_FLUSH and header.version == 2
    assert delta[8:10] == b"\x02\x00"
    assert odelta.apply_object_delta(old, delta, digest_bytes(new)) == new
    as_v1 = bytearray(delta)
    struct.pack_into("<H", as_v1, 8, 1)  # version 1 knows no flushes
    mem9_alone = bytearray(delta)
    struct.pack_into("<H", mem9_alone, 10, odelta.FLAG_GZIP | odelta.FLAG_MEM9)
    no_blocks = odelta.ObjectDeltaHeader(**{**{f: getattr(header, f) for f in header.__slots__},
                                            "blocks": ()})
    for bad in (bytes(as_v1), bytes(mem9_alone),
                no_blocks.encode() + delta[header.payload_offset:]):
        with pytest.raises(DeltaError, match="flags") as caught:
            odelta.apply_object_delta(old, bad, digest_bytes(new), path="d")
        assert caught.value.path == "d"


def test_object_delta_without_version_2_flags_stays_version_1():
    source, result = b"a" * 10000, b"a" * 5000 + b"b" * 5000
    delta = odelta.make_object_delta(source, result)
    assert delta is not None and delta[8:10] == b"\x01\x00"


# -- format version 1 deltas (tests/data/delta-v1: made by the version-1 code) -----------------

V1 = os.path.join(ROOT, "tests", "data", "delta-v1")


def test_version_1_pack_delta_still_applies(tmp_path):
    delta = os.path.join(V1, "old-new.pdelta")
    header = pdelta.parse_header(_read(delta)[:pdelta.HEADER_SIZE], os.path.getsize(delta))
    assert (header.version, header.level) == (1, 19)
    out = str(tmp_path / "new.pack")
    pdelta.apply_pack_delta(os.path.join(V1, "old.pack"), delta, out)
    assert _read(out) == _read(os.path.join(V1, "new.pack"))


def test_version_1_object_delta_still_applies():
    old, new = _read(os.path.join(V1, "old.1.gz")), _read(os.path.join(V1, "new.1.gz"))
    delta = _read(os.path.join(V1, "old-new.odelta"))
    header = odelta.parse_header(delta, len(delta))
    assert header.version == 1 and header.blocks and header.how is odelta.GzipRebuild.REENCODE
    assert odelta.apply_object_delta(old, delta, digest_bytes(new)) == new


# -- frame levels ------------------------------------------------------------------------------

def test_frames_where_the_level_gains_little_are_written_at_the_fast_level(tmp_path, monkeypatch):
    """Random bytes gain nothing at level 19 over 9; near copies of one file (as time zone
    files are) gain some 20%: with the threshold at 10%, a pack of both has frames at both
    levels, each by the rule, and a delta records and rebuilds each."""
    monkeypatch.setattr(pack_build, "MIN_GAIN", 0.10)
    rng = random.Random(12)
    base = rng.randbytes(4000)

    def near_copy() -> bytes:
        copy = bytearray(base)
        for _ in range(40):
            copy[rng.randrange(len(copy))] = rng.randrange(256)
        return bytes(copy)

    old_tree, new_tree = tmp_path / "old", tmp_path / "new"
    for tree in (old_tree, new_tree):
        for i in range(100):  # the first frame: mostly random bytes
            _write_under(tree / "a-random" / f"r{i}", rng.randbytes(4000))
        for i in range(400):  # the second: near copies only
            _write_under(tree / "b-near" / f"s{i}", near_copy())
    repo = Repository.init(str(tmp_path / "repo"))
    packs = []
    for name, src in (("old", old_tree), ("new", new_tree)):
        commit_id = commit_dir(repo, str(src), "os/main", version=name)
        packs.append(str(tmp_path / f"{name}.pack"))
        build_pack(repo, commit_id, "os/main", packs[-1])
    made = pdelta.make_pack_delta(packs[0], packs[1], str(tmp_path / "d"))
    new = pdelta.expand_pack(packs[1])
    levels = pdelta._frame_levels(_read(packs[1]), new.data, new.layout)
    assert levels is not None and levels[0] == FAST_LEVEL  # the manifest gains 2-3%
    assert {FAST_LEVEL, DEFAULT_LEVEL} <= set(levels)
    assert levels[-1] == DEFAULT_LEVEL  # the near copies, last in the data
    for level, content in zip(levels, pdelta._frames_of(new.data, new.layout), strict=True):
        best, fast = (len(fmt.compressor(lv).compress(content)) for lv in (DEFAULT_LEVEL, FAST_LEVEL))
        assert level == (DEFAULT_LEVEL if best <= fast * 0.9 else FAST_LEVEL)
    rebuilt = pdelta.apply_pack_delta(packs[0], made.path, str(tmp_path / "r"))
    assert _read(rebuilt.path) == _read(packs[1])


def _write_under(path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_a_level_table_for_another_frame_count_is_refused(pair, tmp_path):
    old, _new, delta = pair
    data = _read(delta)
    header = pdelta.parse_header(data[:pdelta.HEADER_SIZE], len(data))
    dictionary = zstandard.ZstdCompressionDict(pdelta.reference(pdelta.expand_pack(old)),
                                               dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    carried = zstandard.ZstdDecompressor(dict_data=dictionary).decompress(data[pdelta.HEADER_SIZE:])
    (frames,) = pdelta.LEVEL_COUNT.unpack_from(carried)
    for table, message in ((pdelta.LEVEL_COUNT.pack(frames + 1) + carried[4:4 + frames] + b"\x13",
                            "level table lists"),
                           (pdelta.LEVEL_COUNT.pack(frames) + b"\x17" * frames, "outside")):
        changed = table + carried[4 + frames:]
        payload = zstandard.ZstdCompressor(dict_data=dictionary).compress(changed)
        bad = header.__class__(**{**{f: getattr(header, f) for f in header.__slots__},
                                  "expanded_size": len(changed), "payload_size": len(payload)})
        error = _refused(old, _write(str(tmp_path / "bad"), bad.encode() + payload),
                         str(tmp_path / "out" / "p"))
        assert message in str(error)


def test_object_delta_of_a_gnu_gzip_manual_page_carries_the_change_only():
    text = _manual(8, 2000)
    old, new = _gnu_gzip(text), _gnu_gzip(text.replace(b".TP\n", b".TP 4\n", 3))
    assert odelta._gzip(new[:10], zlib.decompress(new, 31)) != new  # zlib alone cannot
    delta = odelta.make_object_delta(old, new)
    assert delta is not None and len(delta) < len(new) // 20
    header = odelta.parse_header(delta, len(delta))
    assert header.flags & odelta.FLAG_GZIP and header.blocks
    assert odelta.apply_object_delta(old, delta, digest_bytes(new)) == new


@settings(max_examples=200)
@given(stream=st.binary(max_size=400))
def test_deflate_parser_only_raises_format_error(stream):
    try:
        parse, blocks = deflate_blocks.symbols(stream, 1 << 16)
    except FormatError:
        return
    assert sum(b.size for b in blocks) == sum(1 if s < 256 else s >> 16 for s in parse)


def test_a_block_table_that_does_not_fit_is_refused():
    text = _manual(9, 2000)
    old, new = _gnu_gzip(text), _gnu_gzip(text + b"tail\n")
    delta = bytearray(odelta.make_object_delta(old, new) or b"")
    header = odelta.parse_header(bytes(delta), len(delta))
    assert header.blocks
    struct.pack_into("<I", delta, odelta.HEADER_SIZE, header.blocks[0].size + 1)
    with pytest.raises(DeltaError, match="block table") as caught:
        odelta.apply_object_delta(old, bytes(delta), digest_bytes(new), path="d")
    assert caught.value.path == "d"


def test_object_delta_result_must_have_the_signed_digest():
    source, result = b"a" * 10000, b"a" * 5000 + b"b" * 5000
    delta = odelta.make_object_delta(source, result)
    assert delta is not None
    with pytest.raises(DeltaError, match="the pack names"):
        odelta.apply_object_delta(source, delta, digest_bytes(b"something else"), path="d")
    with pytest.raises(DeltaError, match="made from another object"):
        odelta.apply_object_delta(b"c" * 10000, delta, digest_bytes(result), path="d")


@settings(max_examples=60)
@given(data=st.data())
def test_damaged_object_delta_never_yields_an_object(data):
    source = bytes(range(256)) * 40
    result = _mutate(source, [(5000, 10, b"new bytes here")])
    delta = odelta.make_object_delta(source, result)
    assert delta is not None
    kind = data.draw(st.sampled_from(["cut", "flip", "extend"]))
    if kind == "cut":
        damaged = delta[:data.draw(st.integers(0, len(delta) - 1))]
    elif kind == "flip":
        at = data.draw(st.integers(0, len(delta) - 1))
        damaged = delta[:at] + bytes([delta[at] ^ data.draw(st.integers(1, 255))]) + delta[at + 1:]
    else:
        damaged = delta + data.draw(st.binary(min_size=1, max_size=20))
    try:
        rebuilt = odelta.apply_object_delta(source, damaged, digest_bytes(result), path="d")
    except DeltaError as err:
        assert err.path == "d"
    else:
        assert rebuilt == result  # a flip in a reserved-for-nothing bit may still rebuild it


def test_object_delta_files(tmp_path):
    old = _write(str(tmp_path / "old"), b"library v1 " * 3000)
    new = _write(str(tmp_path / "new"), b"library v1 " * 1500 + b"library v2 " * 1500)
    delta = str(tmp_path / "obj.odelta")
    size = odelta.write_object_delta(old, new, delta)
    assert size == os.path.getsize(delta) < 500
    out = str(tmp_path / "rebuilt")
    odelta.apply_object_delta_file(old, delta, digest_bytes(_read(new)), out, mode=0o600)
    assert _read(out) == _read(new) and os.stat(out).st_mode & 0o777 == 0o600
    with pytest.raises(DeltaError) as caught:
        odelta.apply_object_delta_file(old, delta, digest_bytes(b"other"), str(tmp_path / "no"))
    assert caught.value.path == delta and not os.path.exists(tmp_path / "no")


def test_apply_many_object_deltas_in_workers_reports_each_refusal(tmp_path):
    jobs, expected = [], []
    for i in range(6):
        old = _write(str(tmp_path / f"old{i}"), b"object %d " % i * 2000)
        new = _write(str(tmp_path / f"new{i}"), b"object %d " % i * 1000 + b"changed " * 1000)
        delta = str(tmp_path / f"d{i}")
        odelta.write_object_delta(old, new, delta)
        digest = digest_bytes(_read(new)) if i != 3 else digest_bytes(b"not it")
        jobs.append(odelta.ObjectDeltaJob(old, delta, digest, str(tmp_path / f"out{i}")))
        expected.append(_read(new))
    results = odelta.apply_object_deltas(jobs, workers=2)
    assert isinstance(results[3], DeltaError) and results[3].path == jobs[3].delta
    assert not os.path.exists(tmp_path / "out3")
    for i in (0, 1, 2, 4, 5):
        assert results[i] == len(expected[i]) and _read(str(tmp_path / f"out{i}")) == expected[i]


def test_bspatch_matches_bsdiff4_when_installed():
    bsdiff4 = pytest.importorskip("bsdiff4")
    rng = random.Random(3)
    old = bytes(rng.getrandbits(8) for _ in range(30000))
    new = _mutate(old, [(rng.randrange(30000), rng.randrange(50), rng.randbytes(20)) for _ in range(20)])
    made = odelta._bsdiff_payload(old, new, 3)
    assert made is not None
    import zstandard
    body = zstandard.ZstdDecompressor().decompress(made[0])
    assert odelta._bspatch(old, body, len(new), None) == new == bsdiff4.patch(old, bsdiff4.diff(old, new))


def test_object_delta_pairs_by_path_each_new_object_once(tmp_path):
    old = build_sample(str(tmp_path), version="1")
    tool = os.path.join(old.src, "usr", "bin", "tool")
    new_tool = _read(tool)[:10000] + b"patched" + _read(tool)[10000:]
    _write(tool, new_tool)
    _write(os.path.join(old.src, "usr", "bin", "tool-copy"), new_tool)  # same object again
    _write(os.path.join(old.src, "usr", "bin", "brand-new"), b"n" * 9000)
    _write(os.path.join(old.src, "etc", "libz.so.1.2.13"), b"zlib 1.2.13 " * 1000)
    first = build_sample(str(tmp_path), version="2")
    os.rename(os.path.join(old.src, "etc", "libz.so.1.2.13"), os.path.join(old.src, "etc", "libz.so.1.3"))
    _write(os.path.join(old.src, "etc", "libz.so.1.3"), b"zlib 1.3 " * 1000)
    os.unlink(os.path.join(old.src, "usr", "bin", "brand-new"))
    new = build_sample(str(tmp_path), version="3")
    with PackReader(old.pack) as old_reader, PackReader(first.pack) as new_reader:
        pairs, whole = pdelta.object_delta_pairs(old_reader.manifest, new_reader.manifest)
    assert [(p.source.path, p.result.path) for p in pairs] == [(b"usr/bin/tool", b"usr/bin/tool")]
    assert sorted(row.path for row in whole) == [b"etc/libz.so.1.2.13", b"usr/bin/brand-new"]
    with PackReader(first.pack) as old_reader, PackReader(new.pack) as new_reader:
        renamed, _whole = pdelta.object_delta_pairs(old_reader.manifest, new_reader.manifest)
    assert [(p.source.path, p.result.path) for p in renamed] == [
        (b"etc/libz.so.1.2.13", b"etc/libz.so.1.3")]
    source = old.repo.objects.file_path(pairs[0].source.entry.digest, pairs[0].source.entry.meta)
    delta = str(tmp_path / "tool.odelta")
    assert (odelta.write_object_delta(source, tool, delta) or 0) < 300
    odelta.apply_object_delta_file(source, delta, pairs[0].result.entry.digest, str(tmp_path / "t"))
    assert _read(str(tmp_path / "t")) == new_tool


# -- the CLI module (wired into `pack` by the lead) -----------------------------------------

def _cli(*argv: str) -> None:
    parser = argparse.ArgumentParser()
    delta_cmds.register(parser.add_subparsers(dest="pack_command"))
    args = parser.parse_args(argv)
    args.func(args)


def test_cli_delta_and_apply_delta(pair, tmp_path, capsys):
    old, new, _delta = pair
    delta = str(tmp_path / "cli.pdelta")
    _cli("delta", old, new, "-o", delta, "--json")
    made = json.loads(capsys.readouterr().out)
    assert made["size"] == os.path.getsize(delta)
    out = str(tmp_path / "cli.pack")
    _cli("apply-delta", old, delta, "-o", out)
    assert "verify it with its signatures" in capsys.readouterr().out
    assert _read(out) == _read(new)


# -- memory --------------------------------------------------------------------------------

# Peak RSS from VmHWM, which exec resets: ru_maxrss would carry over the forking parent's
# (pytest's) high-water mark and hide the child's own.
_CHILD = """
import sys
from pack.delta import apply_pack_delta
def peak():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
before = peak()
apply_pack_delta(sys.argv[1], sys.argv[2], sys.argv[3], workers=2)
print(before, peak())
"""


def _text_files(root: str, count: int, seed: int) -> None:
    rng = random.Random(seed)
    words = [rng.randbytes(6).hex().encode() for _ in range(4000)]
    for i in range(count):
        directory = os.path.join(root, f"d{i % 64:02}")
        os.makedirs(directory, exist_ok=True)
        body = b" ".join(rng.choice(words) for _ in range(300))[:4000]
        _write(os.path.join(directory, f"f{i}"), b"%d " % i + body)


def test_applying_a_delta_to_a_large_pack_stays_within_the_bound(tmp_path):
    old_src, new_src = str(tmp_path / "old"), str(tmp_path / "new")
    _text_files(old_src, 6000, 1)  # ~24 MB of inline files: packs of ~10 MB
    _text_files(new_src, 6000, 1)
    for i in range(0, 6000, 97):
        _write(os.path.join(new_src, f"d{i % 64:02}", f"f{i}"), b"changed %d\n" % i)
    repo = Repository.init(str(tmp_path / "repo"))
    packs = []
    for name, src in (("old", old_src), ("new", new_src)):
        commit_id = commit_dir(repo, src, "os/main", version=name)
        packs.append(str(tmp_path / f"{name}.pack"))
        build_pack(repo, commit_id, "os/main", packs[-1], level=1)
    delta = pdelta.make_pack_delta(packs[0], packs[1], str(tmp_path / "d"), level=3)
    header = pdelta.parse_header(_read(delta.path)[:pdelta.HEADER_SIZE], delta.size)
    expanded = pdelta.reference(pdelta.expand_pack(packs[0]))
    assert len(expanded) > 20 << 20
    proc = subprocess.run([sys.executable, "-c", _CHILD, packs[0], delta.path, str(tmp_path / "r")],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT),
                          check=True)
    before, after = (int(x) * 1024 for x in proc.stdout.split())
    # The stated bound: the old expanded form (held once by us, once by zstd's dictionary),
    # the window, and a few frames in flight with their compressors.
    bound = 2 * len(expanded) + (1 << header.window_log) + 16 * (1 << 20)
    assert after - before <= bound, (after - before, bound)
    assert _read(str(tmp_path / "r")) == _read(packs[1])
