"""Object bundles (store.bundles): a pack's import writes its trees and inline files into one
bundle; every reader gives from it what it gives from loose objects; hostile bundles are
refused with ObjectCorrupt; fsck, prune and a killed publish treat bundles right."""

from __future__ import annotations

import os
import signal
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pack.build import build_pack
from pack.importer import import_pack
from pack.keys import load_private_key
from pack.signature import sign_pack
from store import bundles, transaction
from store.bundles import FOOTER, RECORD, BundleIndex, BundleWriter, check_bundle, read_records
from store.checkout import checkout
from store.errors import FormatError, ObjectCorrupt
from store.fsck import fsck
from store.fsverity import digest_bytes
from store.ids import RawId
from store.model import Meta
from store.prune import prune
from store.repo import Repository
from store.tree import tree_id
from tests.helpers import run_cli, run_cli_bytes, snapshot
from tests.test_pack_roundtrip import fetch_missing
from tests.test_pack_support import build_sample, keyring_dir, load_keyring, make_keys

# -- the format, by itself ---------------------------------------------------------------

METAS = [Meta(0o644, 0, 0), Meta(0o755, 1, 2, ((b"user.a", b"v"),))]


def _write_bundle(path: str, files: list[bytes], trees: list[bytes]) -> None:
    writer = BundleWriter(path)
    seen = set()
    for i, data in enumerate(files):
        meta = METAS[i % len(METAS)]
        key = (bundles.FILE, digest_bytes(data), bundles.meta_key_of(meta))
        if key not in seen:
            seen.add(key)
            writer.add(*key, meta.encode(), data)
    for data in trees:
        key = (bundles.TREE, tree_id(data), bundles.NO_META_KEY)
        if key not in seen:
            seen.add(key)
            writer.add(*key, b"", data)
    writer.finish()


def _read_everything(path: str) -> list[bytes]:
    """Every record's checked content, as a reader gets it (ObjectCorrupt for a bad one)."""
    index = BundleIndex(os.path.dirname(path))
    try:
        records = read_records(path)
        out = []
        for record in records:
            code = bundles.KIND_CODES[record.kind]
            data = index.read((code, bytes(record.id), record.meta_key))
            assert data is not None
            out.append(data)
        assert not index.bad
        return out
    finally:
        index.close()


SAMPLE_FILES = [b"", b"a", b"hello\n" * 100, bytes(range(256)) * 20]
SAMPLE_TREES = [b"tree one", b"tree two" * 50]


def test_a_bundle_reads_back_every_record(tmp_path):
    path = str(tmp_path / "x.bundle")
    _write_bundle(path, SAMPLE_FILES, SAMPLE_TREES)
    got = sorted(_read_everything(path))
    assert got == sorted(SAMPLE_FILES + SAMPLE_TREES)
    records = read_records(path)
    keys = [(bundles.KIND_CODES[r.kind], bytes(r.id), r.meta_key) for r in records]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert os.stat(path).st_mode & 0o777 == 0o444
    # Named x.bundle, not by its SHA-256: fsck's name check does not apply, every record is sound.
    assert [problem for _record, problem in check_bundle(path)] == [None] * len(records)
    named = str(tmp_path / f"{_sha(path)}.bundle")
    os.rename(path, named)
    assert [problem for _record, problem in check_bundle(named)] == [None] * len(records)


def _sha(path: str) -> str:
    import hashlib
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


@pytest.fixture(scope="module")
def good_bundle(tmp_path_factory) -> bytes:
    path = str(tmp_path_factory.mktemp("good") / "x.bundle")
    _write_bundle(path, SAMPLE_FILES, SAMPLE_TREES)
    with open(path, "rb") as handle:
        return handle.read()


def _hostile(tmp_path, data: bytes) -> str:
    directory = tmp_path / "hostile"
    directory.mkdir(exist_ok=True)
    path = directory / "x.bundle"
    if path.exists():
        path.chmod(0o644)
    path.write_bytes(data)
    return str(path)


@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_every_flipped_bit_is_refused_as_corrupt(tmp_path, good_bundle, position, bit):
    data = bytearray(good_bundle)
    data[position % len(data)] ^= 1 << bit
    path = _hostile(tmp_path, bytes(data))
    with pytest.raises((ObjectCorrupt, FormatError)):
        _read_everything(path)
    index = BundleIndex(os.path.dirname(path))  # the index keeps it out, naming it, or reads it
    try:
        index.records()
        assert all(err.path == path for err in index.bad.values())
    finally:
        index.close()
    problems = [problem for _record, problem in check_bundle(path) if problem]
    assert problems  # fsck finds it too


@given(length=st.integers(min_value=0))
def test_every_truncation_is_refused_as_corrupt(tmp_path, good_bundle, length):
    path = _hostile(tmp_path, good_bundle[:length % len(good_bundle)])
    with pytest.raises(ObjectCorrupt) as caught:
        read_records(path)
    assert caught.value.path == path


@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_raise_another_exception(tmp_path, junk):
    for data in (junk, junk + FOOTER.pack(bundles.MAGIC, len(junk) // RECORD.size, 0)):
        path = _hostile(tmp_path, data)
        try:
            _read_everything(path)
        except (ObjectCorrupt, FormatError):
            pass
        list(check_bundle(path))


def _crafted(records: list[tuple[int, bytes, bytes, int, int, int]], data: bytes) -> bytes:
    table = b"".join(RECORD.pack(*r) for r in records)
    return data + table + FOOTER.pack(bundles.MAGIC, len(records), len(data))


@pytest.mark.parametrize("case", ["unsorted", "duplicate", "kind", "tree-meta", "outside", "count"])
def test_hostile_tables_are_refused_naming_the_bundle(tmp_path, case):
    a, b = tree_id(b"a"), tree_id(b"b")
    first, second = sorted([a, b])
    zero = bytes(32)
    rows = {
        "unsorted": [(1, second, zero, 1, 0, 1), (1, first, zero, 0, 0, 1)],
        "duplicate": [(1, first, zero, 0, 0, 1), (1, first, zero, 0, 0, 1)],
        "kind": [(3, first, zero, 0, 0, 1)],
        "tree-meta": [(1, first, b"\1" * 32, 0, 0, 1)],
        "outside": [(1, first, zero, 1, 0, 5)],
    }
    data = b"ab"
    if case == "count":
        blob = data + FOOTER.pack(bundles.MAGIC, 1 << 60, 0)
    else:
        blob = _crafted(rows[case], data)
    path = _hostile(tmp_path, blob)
    with pytest.raises(ObjectCorrupt) as caught:
        read_records(path)
    assert caught.value.path == path and "bundle" in str(caught.value)


def test_a_record_whose_bytes_lie_is_corrupt_when_read(tmp_path):
    """A table that passes every check, pointing at the wrong bytes (another record's)."""
    ta, tb = tree_id(b"a"), tree_id(b"b")
    rows = sorted([(1, ta, bytes(32), 1, 0, 1), (1, tb, bytes(32), 0, 0, 1)])  # swapped offsets
    path = _hostile(tmp_path, _crafted(rows, b"ab"))
    assert len(read_records(path)) == 2
    with pytest.raises(ObjectCorrupt, match="hash to"):
        _read_everything(path)
    meta = Meta(0o644, 0, 0).encode()
    bad_meta = [(2, digest_bytes(b"x"), b"\7" * 32, 0, len(meta), 1)]
    path = _hostile(tmp_path, _crafted(bad_meta, meta + b"x"))
    with pytest.raises(ObjectCorrupt, match="metadata hashes"):
        _read_everything(path)


# -- a pack's import -----------------------------------------------------------------------


class Imported:
    """The sample tree committed loose in ``source`` and packed; imported into ``device``
    (a bundle), whose large objects are then fetched from ``source`` as a pull would."""

    def __init__(self, base: str) -> None:
        built = build_sample(base)
        self.source, self.commit_id, self.pack = built.repo, built.commit_id, built.pack
        keys = make_keys(base, "vendor")
        sign_pack(self.pack, load_private_key(keys["vendor"]))
        self.keyring = load_keyring(keyring_dir(base, "keyring", keys["vendor"]))
        self.device = Repository.init(os.path.join(base, "device"))
        result = import_pack(self.device, self.pack, self.keyring)
        fetch_missing(self.source, self.device, result.missing)
        self.result = result
        self.base = base


@pytest.fixture
def imported(tmp_path, needs_root) -> Imported:
    return Imported(str(tmp_path))


def test_an_import_writes_one_bundle_and_no_loose_tree_or_inline_file(imported):
    device = imported.device
    paths = device.objects.bundle_paths()
    assert len(paths) == 1
    assert os.path.basename(paths[0]) == _sha(paths[0]) + ".bundle"
    records = read_records(paths[0])
    kinds = [r.kind for r in records]
    assert kinds.count("tree") == imported.result.trees
    assert 0 < kinds.count("file") <= imported.result.inline_files
    loose = [obj for obj in device.objects.iter_objects()]
    assert {obj.kind for obj in loose} == {"commit", "image", "file"}
    large = {item.object_path for item in imported.result.missing}
    assert {os.path.relpath(obj.path, device.objects.root) for obj in loose if obj.kind == "file"} == large
    assert not [obj for obj in loose if obj.kind == "tree"]
    assert os.listdir(device.layout.tmp) == [] or all(
        not name.startswith("staging-") for name in os.listdir(device.layout.tmp))


def test_checkout_of_bundled_objects_equals_checkout_of_loose_ones(imported):
    for copy in (False, True):
        loose = os.path.join(imported.base, f"loose-{copy}")
        bundled = os.path.join(imported.base, f"bundled-{copy}")
        for repo, dest in ((imported.source, loose), (imported.device, bundled)):
            commit = repo.objects.read_commit(imported.commit_id)
            checkout(repo.objects, commit.root_tree, commit.root_meta, dest, copy=copy)
        assert snapshot(bundled) == snapshot(loose)


def test_export_build_cat_and_fsck_give_the_same_from_a_bundle(imported):
    rev = imported.commit_id.hex()
    outputs = []
    for repo in (imported.source, imported.device):
        tar = os.path.join(repo.path, "out.tar")
        run_cli("export", "--tar", "-o", tar, rev, repo=repo.path)
        pack = os.path.join(repo.path, "again.pack")
        build_pack(repo, imported.commit_id, "os/main", pack)
        cat = run_cli_bytes("cat", rev, "/etc/hostname", repo=repo.path)
        with open(tar, "rb") as t, open(pack, "rb") as p:
            outputs.append((t.read(), p.read(), cat.stdout))
        os.unlink(tar)
        os.unlink(pack)
    assert outputs[0] == outputs[1]
    assert outputs[1][2] == b"device\n"
    with open(imported.pack, "rb") as handle:
        assert outputs[1][1] == handle.read()
    report = fsck(imported.device)
    assert report.problems == []
    assert report.objects == len(read_records(imported.device.objects.bundle_paths()[0])) + \
        len(list(imported.device.objects.iter_objects()))
    assert run_cli("fsck", repo=imported.device.path).stdout.endswith(": ok\n")


def _flip_record(repo: Repository, kind: str) -> tuple[str, bundles.BundledObject]:
    path = repo.objects.bundle_paths()[0]
    record = next(r for r in read_records(path) if r.kind == kind and r.size)
    os.chmod(path, 0o644)
    with open(path, "r+b") as handle:
        at = record.offset + record.meta_len
        handle.seek(at)
        byte = handle.read(1)
        handle.seek(at)
        handle.write(bytes([byte[0] ^ 1]))
    return path, record


@pytest.mark.parametrize("kind", ["file", "tree"])
def test_fsck_names_a_corrupted_bundle_record(imported, kind):
    path, record = _flip_record(imported.device, kind)
    report = fsck(imported.device)
    ids = {p.object_id for p in report.problems}
    assert record.id.hex() in ids
    assert any(p.path == path and "SHA-256" in p.message for p in report.problems)
    about = [p for p in report.problems if p.object_id == record.id.hex()]
    assert about and all(p.kind == "corrupt" for p in about)
    assert any(os.path.basename(path) in p.message or p.path == path for p in about)
    result = run_cli("fsck", repo=imported.device.path, check=False)
    assert result.returncode == ObjectCorrupt.exit_code
    assert record.id.hex() in result.stdout and os.path.basename(path) in result.stdout


def test_a_corrupted_bundled_file_fails_checkout_and_export(imported):
    _path, record = _flip_record(imported.device, "file")
    commit = imported.device.objects.read_commit(imported.commit_id)
    with pytest.raises(ObjectCorrupt):
        checkout(imported.device.objects, commit.root_tree, commit.root_meta,
                 os.path.join(imported.base, "co"), copy=True)
    result = run_cli("export", "--tar", "-o", os.path.join(imported.base, "x.tar"),
                     imported.commit_id.hex(), repo=imported.device.path, check=False)
    assert result.returncode == ObjectCorrupt.exit_code and record.id.hex() in result.stderr


def test_prune_keeps_a_bundle_with_a_reachable_record_and_deletes_an_unreachable_one(imported):
    device = imported.device
    bundle = device.objects.bundle_paths()[0]
    report = prune(device)
    assert (report.bundles_kept, report.bundles_removed) == (1, 0)
    assert os.path.exists(bundle) and fsck(device).problems == []
    # Another bundle none of whose records anything reaches.
    stray = os.path.join(imported.base, "other.bundle")
    _write_bundle(stray, [b"unreachable"], [b"unreachable tree"])
    other = os.path.join(device.layout.bundles, _sha(stray) + ".bundle")
    os.rename(stray, other)
    report = prune(device, dry_run=True)
    assert (report.bundles_kept, report.bundles_removed) == (1, 1) and os.path.exists(other)
    report = prune(device)
    assert (report.bundles_kept, report.bundles_removed) == (1, 0 + 1)
    assert not os.path.exists(other) and os.path.exists(bundle)
    out = run_cli("prune", repo=device.path).stdout
    assert "bundles: deleted 0, kept 1" in out
    device.refs.update("os/main", None, imported.commit_id)
    report = prune(device)
    assert report.bundles_removed == 1 and device.objects.bundle_paths() == []
    assert list(device.objects.iter_objects()) == []


def test_a_second_import_of_the_same_pack_writes_no_bundle(imported):
    before = imported.device.objects.bundle_paths()
    import_pack(imported.device, imported.pack, imported.keyring)
    assert imported.device.objects.bundle_paths() == before
    again = Repository.init(os.path.join(imported.base, "again"))
    import_pack(again, imported.pack, imported.keyring)
    assert [os.path.basename(p) for p in again.objects.bundle_paths()] == \
        [os.path.basename(p) for p in before]  # the same pack makes the same bundle


def test_a_loose_writer_does_not_rewrite_bundled_objects(imported):
    """A commit of the same tree (loose writer) finds the bundled trees and files present."""
    from tests.test_pack_support import commit_dir

    src = os.path.join(imported.base, "sample-src")
    commit_dir(imported.device, src, "again", version="1")
    loose = {obj.kind for obj in imported.device.objects.iter_objects()}
    assert "tree" not in loose


@pytest.mark.parametrize("point", [1, 2])
def test_a_killed_publish_leaves_no_partial_bundle(tmp_path, needs_root, point):
    """SIGKILLed at the first syncfs (the bundle complete in staging, not renamed in) or at
    the second (renamed in, not yet synced): no bundle, or a whole one, is visible."""
    built = build_sample(str(tmp_path))
    keys = make_keys(str(tmp_path), "vendor")
    sign_pack(built.pack, load_private_key(keys["vendor"]))
    keyring = load_keyring(keyring_dir(str(tmp_path), "keyring", keys["vendor"]))
    device = Repository.init(str(tmp_path / "device"))
    pid = os.fork()
    if pid == 0:  # the child imports and is killed within publish
        try:
            calls = 0
            real = transaction.syncfs

            def killing_syncfs(path: str) -> None:
                nonlocal calls
                calls += 1
                if calls == point:
                    os.kill(os.getpid(), signal.SIGKILL)
                real(path)

            transaction.syncfs = killing_syncfs
            import_pack(device, built.pack, keyring)
        finally:
            os._exit(3)
    _pid, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert device.refs.read("os/main") is None
    visible = device.objects.bundle_paths()
    if point == 1:
        assert visible == []
    else:
        assert len(visible) == 1
        assert [p for _r, p in check_bundle(visible[0]) if p] == []
    # The next import cleans the staging directory and completes.
    import_pack(device, built.pack, keyring)
    assert len(device.objects.bundle_paths()) == 1
    assert not [n for n in os.listdir(device.layout.tmp) if n.startswith("staging-")]


def test_an_index_sees_a_bundle_published_after_it_loaded(imported):
    """A reader's index loaded before a bundle appears finds its objects (reloaded on a miss)."""
    device = imported.device
    objects = device.objects
    objects.bundle_index.reload()
    data = b"published later"
    stray = os.path.join(imported.base, "later.bundle")
    _write_bundle(stray, [data], [])
    os.rename(stray, os.path.join(device.layout.bundles, _sha(stray) + ".bundle"))
    assert objects.bundled_file(RawId(digest_bytes(data)), METAS[0]) == data
    assert objects.has_file(RawId(digest_bytes(data)), METAS[0])


def test_footer_layout_is_the_documented_one():
    assert RECORD.size == 85 and FOOTER.size == 24
    assert struct.calcsize("<B32s32sQIQ") == 85


def test_a_flip_of_any_byte_is_refused(tmp_path, good_bundle):
    """Every byte position of a bundle, exhaustively: flipped, it is ObjectCorrupt or
    FormatError (never another exception, never accepted)."""
    for position in range(len(good_bundle)):
        data = bytearray(good_bundle)
        data[position] ^= 1 << (position % 8)
        path = _hostile(tmp_path, bytes(data))
        with pytest.raises((ObjectCorrupt, FormatError)):
            _read_everything(path)


def test_a_bundle_whose_table_is_bad_is_named_by_readers_fsck_and_kept_by_prune(imported):
    device = imported.device
    path = device.objects.bundle_paths()[0]
    os.chmod(path, 0o644)
    with open(path, "r+b") as handle:  # the footer's magic
        handle.seek(-FOOTER.size, os.SEEK_END)
        handle.write(b"NOTABUND")
    fresh = Repository.open(device.path)
    commit = fresh.objects.read_commit(imported.commit_id)
    with pytest.raises(ObjectCorrupt) as caught:
        fresh.objects.read_tree(commit.root_tree)
    assert caught.value.path == path and "magic" in str(caught.value)
    report = fsck(fresh)
    assert any(p.path == path and "magic" in p.message for p in report.problems)
    with pytest.raises(ObjectCorrupt):  # what the bundle holds is unknown: nothing is deleted
        prune(fresh)
    assert os.path.exists(path)
    device.refs.update("os/main", None, imported.commit_id)
    report = prune(Repository.open(device.path))
    assert report.bundles_kept == 1 and report.bundles_removed == 0 and os.path.exists(path)


def test_a_bundle_transaction_writes_trees_and_small_files_once_and_its_workers_loose(repo):
    """Within one bundle transaction an object is bundled once; a forked worker (which has
    no share in the parent's bundle) stages loose objects that the parent adopts."""
    from store.model import Entry, Kind

    meta = METAS[0]
    with repo.writing(bundle=True) as tx:
        digest = tx.add_file_bytes(b"small", meta)
        assert tx.add_file_bytes(b"small", meta) == digest
        tree = tx.add_tree([Entry(b"f", Kind.FILE, meta, size=5, digest=digest)])
        tx.add_tree([Entry(b"f", Kind.FILE, meta, size=5, digest=digest)])
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                tx.add_file_bytes(b"from a worker", meta)
                os.write(write, "\n".join(tx.staged()).encode())
            finally:
                os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        with os.fdopen(read, "rb") as handle:
            rels = handle.read().decode().split("\n")
        tx.adopt(rels, flat=True)
        tx.publish()
    [path] = repo.objects.bundle_paths()
    records = read_records(path)
    assert sorted(r.kind for r in records) == ["file", "tree"]
    assert repo.objects.has("tree", tree) and not repo.objects.has_loose("tree", tree)
    assert repo.objects.bundled_file(digest, meta) == b"small"
    worker = RawId(digest_bytes(b"from a worker"))
    assert os.path.exists(repo.objects.file_path(worker, meta))
    assert repo.objects.bundled_file(worker, meta) is None
    with repo.writing() as tx:  # a loose writer finds the bundled objects present
        tx.add_file_bytes(b"small", meta)
        tx.add_tree([Entry(b"f", Kind.FILE, meta, size=5, digest=digest)])
        assert tx.staged() == []
