"""Commit -> pack -> import into an empty repository -> checkout gives back the tree; packs
are deterministic; unpacking writes the exact tree with large files left to the caller."""

from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import given, settings

from pack import format as fmt
from pack.build import DEFAULT_INLINE_MAX, build_pack
from pack.importer import import_pack, kept_pack_path
from pack.keys import load_private_key
from pack.reader import PackReader
from pack.signature import sign_pack
from pack.unpack import TreeWriter, unpack_inline
from store.checkout import checkout
from store.model import Kind
from store.objects import relative_path
from store.repo import Repository
from tests.helpers import assert_same_tree, materialise, run_cli, snapshot, trees
from tests.test_pack_support import (
    build_sample,
    commit_dir,
    keyring_dir,
    load_keyring,
    make_keys,
)

pytestmark = pytest.mark.usefixtures("needs_root")


def fetch_missing(source: Repository, target: Repository, missing) -> None:
    """What a pull does: copy each missing object file, inode metadata included."""
    for item in missing:
        src = os.path.join(source.objects.root, item.object_path)
        dst = os.path.join(target.objects.root, item.object_path)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(src, dst)
        st = os.lstat(src)
        os.chown(dst, st.st_uid, st.st_gid)
        for name in os.listxattr(src):
            os.setxattr(dst, name, os.getxattr(src, name))
        os.chmod(dst, st.st_mode)


def round_trip(base: str, src: str, **build_args: int) -> None:
    repo = Repository.init(os.path.join(base, "repo"))
    commit_id = commit_dir(repo, src)
    pack = os.path.join(base, "p.pack")
    build_pack(repo, commit_id, "main", pack, **build_args)
    keys = make_keys(base, "vendor")
    sign_pack(pack, load_private_key(keys["vendor"]))
    keyring = load_keyring(keyring_dir(base, "keyring", keys["vendor"]))
    device = Repository.init(os.path.join(base, "device"))
    result = import_pack(device, pack, keyring)
    assert result.commit_id == commit_id and result.ref == "main"
    assert device.refs.read("main") == commit_id
    assert os.path.exists(kept_pack_path(device, commit_id))
    assert os.path.exists(kept_pack_path(device, commit_id) + ".sig")
    fetch_missing(repo, device, result.missing)
    commit = device.objects.read_commit(commit_id)
    out = os.path.join(base, "out")
    checkout(device.objects, commit.root_tree, commit.root_meta, out)
    assert_same_tree(src, out)


def test_round_trip_sample_tree(tmp_path):
    built = build_sample(str(tmp_path))
    base = tmp_path / "rt"
    base.mkdir()
    round_trip(str(base), built.src)


@settings(max_examples=20)
@given(tree=trees)
def test_round_trip_random_trees(tmp_path_factory, tree):
    base = tmp_path_factory.mktemp("prt")
    src = base / "src"
    src.mkdir()
    materialise(os.fsencode(src), tree)
    os.chmod(src, 0o751)
    round_trip(str(base), str(src), inline_max=300, level=1)


def test_unpack_inline_then_link_large_files_gives_the_tree(tmp_path):
    built = build_sample(str(tmp_path))
    target = tmp_path / "tmpfs"
    target.mkdir()
    with PackReader(built.pack) as reader:
        report = unpack_inline(reader, str(target))
    assert [r.path for r in report.large] == [b"usr/bin/tool"]
    assert not (target / "usr" / "bin" / "tool").exists()
    assert report.symlinks == 2 and report.files == 5
    # What a deployment does with the large files: a hardlink farm, merged by overlayfs.
    farm = tmp_path / "farm"
    farm.mkdir()
    with PackReader(built.pack) as reader, TreeWriter(str(farm), reader.commit.root_meta) as tree:
        for row in reader.manifest.entries:
            if row.entry.kind is Kind.DIR:
                tree.mkdir(row.path, row.entry.meta)
            elif row.is_large:
                tree.link(row.path, built.repo.objects.file_path(row.entry.digest, row.entry.meta))
    nodes, _ = snapshot(str(target))
    src_nodes, _ = snapshot(built.src)
    assert {p: n for p, n in src_nodes.items() if p != b"usr/bin/tool"} == nodes
    farm_nodes, _ = snapshot(str(farm))
    assert farm_nodes[b"usr/bin/tool"] == src_nodes[b"usr/bin/tool"]
    assert os.stat(farm / "usr" / "bin" / "tool").st_nlink == 2  # the object and the farm


def test_deterministic_same_repo_and_across_repositories(tmp_path):
    built = build_sample(str(tmp_path))
    again = str(tmp_path / "again.pack")
    build_pack(built.repo, built.commit_id, "os/main", again)
    assert open(built.pack, "rb").read() == open(again, "rb").read()
    # Another machine: the same tree committed into another repository elsewhere.
    other = Repository.init(str(tmp_path / "elsewhere" / "repo"))
    copy = tmp_path / "elsewhere" / "tree"
    shutil.copytree(built.src, copy, symlinks=True)
    os.chmod(copy / "etc" / "deep", 0o500)
    os.chmod(copy, os.stat(built.src).st_mode & 0o7777)
    commit_id = commit_dir(other, str(copy), "os/main", version="1")
    assert commit_id == built.commit_id
    third = str(tmp_path / "third.pack")
    build_pack(other, commit_id, "os/main", third)
    assert open(built.pack, "rb").read() == open(third, "rb").read()


def test_options_change_bytes_not_meaning(tmp_path):
    built = build_sample(str(tmp_path))
    small = str(tmp_path / "small.pack")
    build_pack(built.repo, built.commit_id, "os/main", small, inline_max=0, level=1)
    with PackReader(built.pack) as a, PackReader(small) as b:
        assert a.commit_id == b.commit_id
        assert [r.entry for r in a.manifest.entries] == [r.entry for r in b.manifest.entries]
        assert b.manifest.inline_files == 1  # only the empty file
        assert a.header.inline_max == DEFAULT_INLINE_MAX
        b.check_data()


def test_many_frames_stream(tmp_path, monkeypatch):
    # Frames of 4 KiB instead of 1 MiB: the greedy framing and straddle rules at small scale.
    monkeypatch.setattr(fmt, "FRAME_MAX", 4096)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(60):
        (src / f"file-with-a-longer-name-{i:02}").write_bytes(bytes([i]) * (35 * i))
    repo = Repository.init(str(tmp_path / "repo"))
    commit_id = commit_dir(repo, str(src))
    pack = str(tmp_path / "p.pack")
    build_pack(repo, commit_id, "main", pack, inline_max=2048, level=1)
    with PackReader(pack) as reader:
        assert reader.header.data_frames >= 10 and reader.header.manifest_frames == 2
        seen = {row.path: data for row, data in reader.entries() if data is not None}
    assert seen[b"file-with-a-longer-name-07"] == bytes([7]) * 245
    assert len(seen) == 59  # 35 * 59 > 2048


def test_import_is_idempotent_and_keeps_objects(tmp_path):
    built = build_sample(str(tmp_path))
    keys = make_keys(str(tmp_path), "vendor")
    sign_pack(built.pack, load_private_key(keys["vendor"]))
    keyring = load_keyring(keyring_dir(str(tmp_path), "keyring", keys["vendor"]))
    device = Repository.init(str(tmp_path / "device"))
    first = import_pack(device, built.pack, keyring)
    second = import_pack(device, built.pack, keyring)
    assert second.previous == first.commit_id
    assert [m.object_path for m in first.missing] == [m.object_path for m in second.missing]
    row = first.missing[0].entry
    assert first.missing[0].object_path == relative_path("file", row.entry.digest, row.entry.meta)
    leftovers = [n for n in os.listdir(os.path.join(device.path, "packs")) if n.startswith(".")]
    assert leftovers == []


def test_empty_tree_round_trip(tmp_path):
    src = tmp_path / "empty"
    src.mkdir()
    base = tmp_path / "rt"
    base.mkdir()
    round_trip(str(base), str(src))


def test_cli_build_needs_a_ref_for_a_commit_id(tmp_path):
    built = build_sample(str(tmp_path))
    out = str(tmp_path / "x.pack")
    proc = run_cli("pack", "build", built.commit_id.hex(), "-o", out, repo=built.repo.path, check=False)
    assert proc.returncode == 2 and "--ref" in proc.stderr
    run_cli("pack", "build", built.commit_id.hex(), "--ref", "os/main", "-o", out, repo=built.repo.path)
    assert open(out, "rb").read() == open(built.pack, "rb").read()
    proc = run_cli("pack", "build", "os/main", "-o", out, "--inline-max", str(2 << 20),
                   repo=built.repo.path, check=False)
    assert proc.returncode == 2
