"""The manifest decoder's fast path (``pack.manifest._Decoder.fast_row``) against the
field-by-field path it stands in for: on valid manifests and on mutated, truncated and
extended ones, split into frames anywhere, both give the same rows, counts and tree
objects, or the same PackError (message and offset)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pack import manifest as manifest_mod
from pack.manifest import check_manifest, iter_rows
from store.errors import PackError
from store.model import Entry, Meta
from tests.test_pack_support import FILE_META, dir_entry, file_entry, row, symlink_entry

XATTR_META = Meta(0o644, 0, 0, ((b"user.a", b"1"), (b"user.b", b"")))
OTHER_META = Meta(0o4755, 1000, 1000)


def _sample() -> tuple[bytes, int]:
    """A manifest (decompressed) of a small tree with every kind of row, some metadata with
    xattrs, a setuid file, an empty file and a large one; and its row count."""
    f = file_entry(b"f", b"hi there")
    g = file_entry(b"g", b"x" * 300, XATTR_META)
    empty = file_entry(b"e", b"", OTHER_META)
    deep = file_entry(b"z", b"deep")
    inner = dir_entry(b"in", [deep])
    a = dir_entry(b"a", [empty, f, g, inner])
    big = file_entry(b"b", b"B" * 5000, FILE_META)
    link = symlink_entry(b"l", b"../../etc")
    rows = [row(b"", a), row(b"a", empty, offset=0), row(b"a", f, offset=0),
            row(b"a", g, offset=8), row(b"a", inner), row(b"a/in", deep, offset=308),
            row(b"", big), row(b"", link)]
    return b"".join(rows), len(rows)


SAMPLE, COUNT = _sample()


def _chunks(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    at = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        yield data[at:cut]
        at = max(at, cut)
    yield data[at:]


def _outcome(data: bytes, cuts: list[int], count: int) -> object:
    trees: list[tuple[bytes, bytes]] = []
    kept: list[manifest_mod.ManifestEntry] = []
    try:
        result = check_manifest(_chunks(data, cuts), count, 4096,
                                on_tree=lambda i, e: trees.append((i, e)), keep=kept)
        again = list(iter_rows(_chunks(data, cuts), count, 4096))
    except PackError as err:
        return ("error", str(err), err.offset)
    return ("ok", result, kept, trees, again)


def _both(data: bytes, cuts: list[int], count: int, monkeypatch: pytest.MonkeyPatch
          ) -> tuple[object, object]:
    fast = _outcome(data, cuts, count)
    with monkeypatch.context() as patched:
        patched.setattr(manifest_mod._Decoder, "fast_row", lambda self: None)
        slow = _outcome(data, cuts, count)
    return fast, slow


def test_sample_decodes_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    fast, slow = _both(SAMPLE, [], COUNT, monkeypatch)
    assert fast[0] == "ok", fast
    assert fast == slow
    rows = fast[2]
    assert [r.path for r in rows] == [b"a", b"a/e", b"a/f", b"a/g", b"a/in", b"a/in/z", b"b", b"l"]
    assert rows[3].entry.meta == XATTR_META and rows[1].entry.meta == OTHER_META


@settings(max_examples=400, deadline=None)
@given(position=st.integers(0, len(SAMPLE) - 1), value=st.integers(0, 255),
       cuts=st.lists(st.integers(0, len(SAMPLE)), max_size=4),
       how=st.sampled_from(["set", "truncate", "insert", "count+1", "count-1"]))
def test_mutated_decodes_the_same(position: int, value: int, cuts: list[int], how: str,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    data, count = SAMPLE, COUNT
    if how == "set":
        data = data[:position] + bytes([value]) + data[position + 1:]
    elif how == "truncate":
        data = data[:position]
    elif how == "insert":
        data = data[:position] + bytes([value]) + data[position:]
    else:
        count += 1 if how == "count+1" else -1
    fast, slow = _both(data, cuts, count, monkeypatch)
    assert fast == slow


def test_entry_fields_match_the_store_decoder() -> None:
    """A row decoded by the fast path carries the Entry store.model.decode_entry gives."""
    rows: list[manifest_mod.ManifestEntry] = []
    check_manifest([SAMPLE], COUNT, 4096, keep=rows)
    by_path = {r.path: r.entry for r in rows}
    expected: Entry = file_entry(b"f", b"hi there")
    assert by_path[b"a/f"] == expected
