"""Limits that the filesystem or other code must agree with (issue 14): one-line bounded
commit fields, 255-byte ref names, a full disk named as the repository's."""

from __future__ import annotations

import contextlib
import os
import subprocess

import pytest

from store.commit_fields import MAX_SUBJECT, MAX_VERSION
from store.errors import RepositoryError, UsageError
from store.history import finish_commit
from store.ids import RawId
from store.model import Meta
from store.repo import Repository
from store.source_dir import read_directory

META = Meta(0o755, 0, 0)


def _commit(repo: Repository, **fields: str) -> RawId:
    with repo.writing() as tx:
        tree = tx.add_tree([])
        return finish_commit(repo, tx, "main", tree, META, timestamp=0, **fields)


@pytest.mark.parametrize("fields, words", [
    ({"subject": "one\ntwo"}, "subject must be one line"),
    ({"subject": "one\rtwo"}, "subject must be one line"),
    ({"subject": "one\u2028two"}, "subject must be one line"),
    ({"version": "1.0\n"}, "version must be one line"),
    ({"version": "1" * (MAX_VERSION + 1)}, f"version is {MAX_VERSION + 1} bytes long"),
    ({"version": "é" * (MAX_VERSION // 2 + 1)}, f"version is {MAX_VERSION + 2} bytes long"),
    ({"subject": "s" * (MAX_SUBJECT + 1)}, f"subject is {MAX_SUBJECT + 1} bytes long"),
])
def test_subject_and_version_are_one_bounded_line(repo, fields, words):
    with pytest.raises(UsageError, match=words):
        _commit(repo, **fields)
    assert repo.refs.read("main") is None
    assert not [name for _, _, files in os.walk(repo.layout.objects) for name in files]


def test_fields_at_their_limits_and_a_multi_line_body_are_stored(repo):
    commit_id = _commit(repo, subject="s" * MAX_SUBJECT, version="9" * MAX_VERSION,
                        body="a body\nof two lines\n")
    commit = repo.objects.read_commit(commit_id)
    assert (len(commit.subject), len(commit.version)) == (MAX_SUBJECT, MAX_VERSION)


@pytest.mark.parametrize("name", ["r" * 255, "a/" + "b" * 253])
def test_a_ref_name_of_255_bytes_can_be_written(repo, name):
    """Legal by the rules; its temporary file's name was too long for the filesystem."""
    commit_id = _commit(repo)
    repo.refs.update(name, commit_id, None)
    assert repo.refs.read(name) == commit_id
    assert repo.refs.list() == {"main": commit_id, name: commit_id}
    refs_dir = os.path.dirname(os.path.join(repo.layout.refs_heads, name))
    assert [n for n in os.listdir(refs_dir) if n.startswith(".")] == []  # no temporary file left


@contextlib.contextmanager
def small_tmpfs(path: str, size: str):
    os.makedirs(path)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=True)


@pytest.mark.usefixtures("needs_root")
def test_a_full_disk_is_reported_naming_the_repository(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"big{i}").write_bytes(os.urandom(3 << 20))
    (src / "small").write_bytes(os.urandom(100 << 10))
    with small_tmpfs(str(tmp_path / "fs"), "2m") as fs:
        repo = Repository.init(os.path.join(fs, "repo"))
        with pytest.raises(RepositoryError) as caught, repo.writing() as tx:
            tree, meta = read_directory(tx, str(src))
            finish_commit(repo, tx, "main", tree, meta, timestamp=0)
        assert type(caught.value) is RepositoryError
        assert str(caught.value) == f"{repo.path}: no space left on device"
        assert caught.value.path == repo.path
        assert repo.refs.read("main") is None
        assert os.listdir(repo.layout.tmp) == []  # the staging directory is gone


def test_a_ref_update_removes_the_temporary_files_a_crash_left(repo):
    commit_id = _commit(repo)
    heads = repo.layout.refs_heads
    left = [".main.tmp4242", ".sealtree-4242-0123456789abcdef.tmp"]
    for name in left:
        with open(os.path.join(heads, name), "wb") as handle:
            handle.write(b"half")
    with open(os.path.join(heads, ".keep"), "wb"):
        pass  # not a temporary name: not ours to remove
    repo.refs.update("other", commit_id, None)
    assert sorted(os.listdir(heads)) == [".keep", "main", "other"]


def test_a_staging_directory_being_created_is_not_cleaned_as_stale(repo):
    """Between mkdtemp and taking its lock, a staging directory has no lock file: another
    transaction starting then must not remove it; once old, it is a crash's leftover."""
    starting = os.path.join(repo.layout.tmp, "staging-starting")
    os.mkdir(starting)
    with repo.writing():
        pass
    assert os.path.isdir(starting)
    os.utime(starting, (0, 0))
    with repo.writing():
        pass
    assert not os.path.exists(starting)


def test_a_staging_directory_whose_creator_is_gone_is_removed(repo):
    """A transaction killed between mkdtemp and its lock leaves no lock file; the PID in the
    name says its creator is gone, so the next writer removes it at once."""
    import subprocess
    child = subprocess.Popen(["true"])
    child.wait()
    dead = os.path.join(repo.layout.tmp, f"staging-{child.pid}-abcd")
    alive = os.path.join(repo.layout.tmp, f"staging-{os.getppid()}-abcd")
    os.mkdir(dead)
    os.mkdir(alive)
    with repo.writing():
        pass
    assert not os.path.exists(dead)
    assert os.path.isdir(alive)  # its creator runs: a transaction starting
