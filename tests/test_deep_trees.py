"""Trees of any depth: checkout (links and copies), diff and export walk them iteratively
(issue 14: 1,000 directories deep ended in RecursionError)."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from store.builder import TreeBuilder
from store.checkout import checkout
from store.diff import diff_trees
from store.export_tar import export_tar
from store.history import finish_commit
from store.model import Entry, Kind, Meta
from store.remove import remove_tree
from store.repo import Repository

pytestmark = pytest.mark.usefixtures("needs_root")

DEPTH = 2000
DIR_META = Meta(0o755, 0, 0)
FILE_META = Meta(0o644, 0, 0)


def commit_deep(repo: Repository, branch: str, content: bytes) -> bytes:
    """A tree ``d/d/.../d/file`` (and a symlink beside the file), DEPTH directories deep."""
    parts = [b"d"] * DEPTH
    builder = TreeBuilder(DIR_META, DIR_META)
    with repo.writing() as tx:
        digest = tx.add_file_bytes(content, FILE_META)
        builder.add_leaf([*parts, b"file"], Entry(b"file", Kind.FILE, FILE_META, size=len(content),
                                                  digest=digest), "file")
        builder.add_leaf([*parts, b"link"], Entry(b"link", Kind.SYMLINK, Meta(0o777, 0, 0),
                                                  target=b"file"), "link")
        tree = builder.write(tx)
        return finish_commit(repo, tx, branch, tree, DIR_META, subject="deep", timestamp=0)


def read_deep(top: str) -> bytes:
    """The content of ``top/d/.../d/file``, opened relative to one directory at a time."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(DEPTH):
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            assert os.stat(child).st_mode & 0o7777 == 0o755
            os.close(fd)
            fd = child
        assert os.readlink("link", dir_fd=fd) == "file"
        with open(os.open("file", os.O_RDONLY, dir_fd=fd), "rb") as handle:
            return handle.read()
    finally:
        os.close(fd)


@pytest.fixture
def deep_repo(tmp_path):
    repo = Repository.init(str(tmp_path / "repo"))
    commit_deep(repo, "a", b"one\n")
    commit_deep(repo, "b", b"two\n")
    return repo


@pytest.mark.parametrize("copy", [False, True])
def test_checkout_of_a_deep_tree(deep_repo, tmp_path, copy):
    commit = deep_repo.commit_of("a")[1]
    dest = str(tmp_path / "out")
    stats = checkout(deep_repo.objects, commit.root_tree, commit.root_meta, dest, copy=copy)
    assert (stats.dirs, stats.files, stats.symlinks) == (DEPTH + 1, 1, 1)
    assert read_deep(dest) == b"one\n"
    remove_tree(dest)


def test_diff_of_deep_trees(deep_repo):
    a = deep_repo.commit_of("a")[1].root_tree
    b = deep_repo.commit_of("b")[1].root_tree
    changes = list(diff_trees(deep_repo.objects, a, b))
    assert [(c.status, c.path, c.what()) for c in changes] == [
        ("M", b"d/" * DEPTH + b"file", ["content"])]


def test_export_of_a_deep_tree(deep_repo):
    out = io.BytesIO()
    stats = export_tar(deep_repo.objects, deep_repo.commit_of("a")[1], out)
    assert (stats.dirs, stats.files, stats.symlinks) == (DEPTH + 1, 1, 1)
    out.seek(0)
    with tarfile.open(fileobj=out) as archive:
        member = archive.getmember("d/" * DEPTH + "file")
        handle = archive.extractfile(member)
        assert handle is not None and handle.read() == b"one\n"
