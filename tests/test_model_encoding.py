"""The entry encoding is canonical: what a decoder read is exactly what ``encode_entry`` gives.

Pack manifests and tree decoding rely on it: a directory's tree id is hashed
from the entry bytes as read (``join_tree``), and metadata is decoded once per
distinct encoding (the ``MetaCache``).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from store.codec import Reader
from store.errors import FormatError
from store.model import MAX_TARGET, Entry, Kind, Meta, MetaCache, decode_entry, encode_entry
from store.tree import decode_tree, encode_tree, join_tree

names = st.binary(min_size=1, max_size=40).filter(
    lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b".."))
xattr_lists = st.dictionaries(
    st.builds(lambda ns, rest: ns + b"." + rest, st.sampled_from([b"user", b"trusted", b"security"]),
              st.binary(min_size=1, max_size=12).filter(lambda n: b"\0" not in n)),
    st.binary(max_size=20), max_size=3).map(lambda d: tuple(sorted(d.items())))
metas = st.builds(Meta, st.integers(0, 0o7777), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
                  xattr_lists)
files = st.builds(lambda n, m, size, digest: Entry(n, Kind.FILE, m, size=size, digest=digest),
                  names, metas, st.integers(0, 2**64 - 1), st.binary(min_size=32, max_size=32))
dirs = st.builds(lambda n, m, tree: Entry(n, Kind.DIR, m, tree=tree),
                 names, metas, st.binary(min_size=32, max_size=32))
links = st.builds(lambda n, m, target: Entry(n, Kind.SYMLINK, m, target=target), names, metas,
                  st.binary(min_size=1, max_size=64).filter(lambda t: b"\0" not in t))
entries = st.one_of(files, dirs, links)


@given(st.lists(entries, max_size=12))
def test_decoded_entries_reencode_to_the_bytes_read(items):
    raw = [encode_entry(e) for e in items]
    reader = Reader(b"".join(raw), "entries")
    cache: MetaCache = {}
    for entry, encoded in zip(items, raw, strict=True):
        start = reader.pos
        got = decode_entry(reader, cache)
        assert got == entry
        assert reader.data[start:reader.pos] == encoded == encode_entry(got)
    reader.expect_end()


@given(st.dictionaries(names, st.one_of(files, dirs, links), max_size=10))
def test_tree_joined_from_encodings_is_the_encoded_tree(by_name):
    items = [e.replace(name=name) for name, e in sorted(by_name.items())]
    encoded = encode_tree(items)
    assert join_tree([encode_entry(e) for e in items]) == encoded
    assert decode_tree(encoded) == items


def test_meta_cache_shares_one_object_per_encoding_and_skips_xattrs():
    plain = Meta(0o644, 0, 0)
    tagged = Meta(0o644, 0, 0, ((b"user.a", b"1"),))
    items = [Entry(b"a", Kind.FILE, plain), Entry(b"b", Kind.FILE, plain),
             Entry(b"c", Kind.FILE, tagged), Entry(b"d", Kind.FILE, tagged)]
    reader = Reader(b"".join(encode_entry(e) for e in items), "entries")
    cache: MetaCache = {}
    got = [decode_entry(reader, cache) for _ in items]
    assert [e.meta for e in got] == [plain, plain, tagged, tagged]
    assert got[0].meta is got[1].meta
    assert list(cache.values()) == [plain]  # metadata with xattrs is never cached


@pytest.mark.parametrize("cut", [1, 3, 10, 17, 30])
def test_truncated_entry_is_a_format_error_even_with_a_warm_cache(cut):
    entry = Entry(b"name", Kind.SYMLINK, Meta(0o777, 0, 0), target=b"t" * 20)
    raw = encode_entry(entry)
    cache: MetaCache = {}
    decode_entry(Reader(raw, "entry"), cache)
    with pytest.raises(FormatError, match="truncated"):
        decode_entry(Reader(raw[:cut], "entry"), cache)


def test_symlink_target_bounds_hold():
    too_long = Entry(b"l", Kind.SYMLINK, Meta(0o777, 0, 0), target=b"t" * (MAX_TARGET + 1))
    with pytest.raises(FormatError, match="out of range"):
        decode_entry(Reader(encode_entry(too_long), "entry"))
