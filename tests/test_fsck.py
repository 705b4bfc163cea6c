"""fsck finds every kind of damage, names the object and the path, and exits non-zero."""

from __future__ import annotations

import json
import os

import pytest

from store.fsck import fsck
from tests.helpers import run_cli


@pytest.fixture
def committed(tmp_path, repo):
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "big").write_bytes(os.urandom(3 * 4096 + 7))
    (src / "etc" / "small").write_bytes(b"hello")
    run_cli("commit", "-b", "main", str(src), repo=repo.path)
    return repo


def object_for(repo, name: bytes):
    from store.walk import require
    commit = repo.objects.read_commit(repo.refs.read("main"))
    entry = require(repo.objects, commit.root_tree, b"etc/" + name)
    return entry, repo.objects.file_path(entry.digest, entry.meta)


def test_clean_repository_passes(committed):
    report = fsck(committed)
    assert report.problems == [] and report.objects == 5  # 2 files, 2 trees, 1 commit
    assert "ok" in run_cli("fsck", repo=committed.path).stdout


def _problems(repo):
    proc = run_cli("fsck", "--json", repo=repo.path, check=False)
    return proc.returncode, json.loads(proc.stdout)["problems"]


def test_flipped_byte(committed):
    entry, path = object_for(committed, b"big")
    with open(path, "r+b") as handle:
        handle.seek(5000)
        byte = handle.read(1)
        handle.seek(5000)
        handle.write(bytes([byte[0] ^ 1]))
    code, problems = _problems(committed)
    assert code == 6
    assert [(p["kind"], p["object_id"], p["path"]) for p in problems] == \
        [("corrupt", entry.digest.hex(), "ref main:/etc/big")]
    assert "content changed" in problems[0]["message"]


def test_truncated_object(committed):
    entry, path = object_for(committed, b"big")
    os.truncate(path, 4096)
    code, problems = _problems(committed)
    assert code == 6 and problems[0]["path"] == "ref main:/etc/big"


def test_deleted_object(committed):
    entry, path = object_for(committed, b"small")
    os.unlink(path)
    code, problems = _problems(committed)
    assert code == 5
    assert [(p["kind"], p["object_id"], p["path"]) for p in problems] == \
        [("missing", entry.digest.hex(), "ref main:/etc/small")]
    assert entry.digest.hex() in run_cli("fsck", repo=committed.path, check=False).stdout


def test_chmod_object_is_metadata_corruption(committed):
    _entry, path = object_for(committed, b"small")
    os.chmod(path, 0o4777)
    code, problems = _problems(committed)
    assert code == 6 and "metadata" in problems[0]["message"]


def test_corrupt_tree_object(committed):
    commit = committed.objects.read_commit(committed.refs.read("main"))
    path = committed.objects.path("tree", commit.root_tree)
    os.chmod(path, 0o644)
    with open(path, "ab") as handle:
        handle.write(b"junk")
    code, problems = _problems(committed)
    assert code == 6 and problems[0]["path"] == "ref main:/"


def test_worker_processes_find_the_damaged_object(tmp_path, repo):
    """Enough objects for fsck's worker processes: the one flipped byte is still found."""
    from store import fsck as fsck_module

    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    for i in range(fsck_module.PARALLEL_MIN_OBJECTS + 50):
        (src / "etc" / f"f{i}").write_bytes(os.urandom(100 + i))
    (src / "etc" / "big").write_bytes(os.urandom(3 * 4096 + 7))
    run_cli("commit", "-b", "main", str(src), repo=repo.path)
    progress: list[tuple[int, int]] = []
    assert fsck(repo, progress=lambda done, total: progress.append((done, total))).problems == []
    assert progress[-1][0] == progress[-1][1] > fsck_module.PARALLEL_MIN_OBJECTS
    entry, path = object_for(repo, b"big")
    with open(path, "r+b") as handle:
        handle.seek(100)
        handle.write(b"\xff")
    code, problems = _problems(repo)
    assert code == 6
    assert [(p["kind"], p["object_id"], p["path"]) for p in problems] == \
        [("corrupt", entry.digest.hex(), "ref main:/etc/big")]


def test_stray_entries_anywhere_in_objects_are_reported_and_pruned(committed):
    objects = committed.objects.root
    with open(os.path.join(objects, "zz"), "w") as handle:  # a file where xx/ dirs belong
        handle.write("x")
    prefix = sorted(n for n in os.listdir(objects) if len(n) == 2 and n != "zz")[0]
    os.mkdir(os.path.join(objects, prefix, "junk dir"))  # a directory where objects belong
    code, problems = _problems(committed)
    assert code != 0
    assert {(p["kind"], os.path.relpath(p["path"], objects)) for p in problems} == \
        {("stray", "zz"), ("stray", os.path.join(prefix, "junk dir"))}
    out = run_cli("prune", repo=committed.path).stdout
    assert out.startswith("deleted 2 objects")
    assert run_cli("fsck", repo=committed.path).returncode == 0
