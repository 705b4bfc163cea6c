"""Errors of the store carry their subject as data: the tree path as ``path``, the object file
behind it as ``file``; no message names a command-line option."""

from __future__ import annotations

import io
import os
import subprocess

import pytest

from store.checkout import checkout
from store.errors import CrossDevice, NotARepository, NotInTree, ObjectMissing, RefError
from store.export_tar import export_tar
from store.history import finish_commit
from store.ids import to_hex
from store.model import Entry, Kind, Meta
from store.repo import Repository
from store.walk import require

DIR = Meta(0o755, 0, 0)
FILE = Meta(0o644, 0, 0)


def _commit(repo: Repository) -> Entry:
    with repo.writing() as tx:
        digest = tx.add_file_bytes(b"content\n", FILE)
        file = Entry(b"f\nx", Kind.FILE, FILE, size=8, digest=digest)
        sub = tx.add_tree([file])
        tree = tx.add_tree([Entry(b"etc", Kind.DIR, DIR, tree=sub)])
        finish_commit(repo, tx, "main", tree, DIR, timestamp=0)
    return file


def test_a_missing_object_names_the_tree_path_and_keeps_the_file(repo, tmp_path):
    entry = _commit(repo)
    object_file = repo.objects.file_path(entry.digest, entry.meta)
    os.unlink(object_file)
    commit = repo.commit_of("main")[1]
    with pytest.raises(ObjectMissing) as caught:
        checkout(repo.objects, commit.root_tree, commit.root_meta, str(tmp_path / "out"))
    err = caught.value
    assert (err.path, err.file, err.object_id) == (b"/etc/f\nx", object_file, to_hex(entry.digest))
    assert str(err) == f"/etc/f\\x0ax: object {to_hex(entry.digest)} is missing"
    assert not (tmp_path / "out").exists()
    assert [n for n in os.listdir(tmp_path) if n.startswith(".sealtree-checkout-")] == []
    with pytest.raises(ObjectMissing) as caught:
        export_tar(repo.objects, commit, io.BytesIO())
    assert (caught.value.path, caught.value.file) == (b"etc/f\nx", object_file)


@pytest.mark.usefixtures("needs_root")
def test_a_checkout_across_filesystems_is_cross_device_without_a_hint(repo, tmp_path):
    _commit(repo)
    commit = repo.commit_of("main")[1]
    other = tmp_path / "other"
    other.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(other)], check=True)
    try:
        with pytest.raises(CrossDevice) as caught:
            checkout(repo.objects, commit.root_tree, commit.root_meta, str(other / "out"))
        assert caught.value.path == b"/etc/f\nx"
        assert "--" not in str(caught.value)
        assert os.listdir(other) == []
        checkout(repo.objects, commit.root_tree, commit.root_meta, str(other / "out"), copy=True)
        assert (other / "out" / "etc" / "f\nx").read_bytes() == b"content\n"
    finally:
        subprocess.run(["umount", "-l", str(other)], check=True)


def test_a_path_not_in_the_tree_is_not_in_tree(repo):
    _commit(repo)
    root = repo.commit_of("main")[1].root_tree
    with pytest.raises(NotInTree) as caught:
        require(repo.objects, root, b"etc/nope")
    assert caught.value.path == b"/etc/nope" and str(caught.value) == "/etc/nope: no such path in the tree"
    with pytest.raises(NotInTree, match="^etc/nope: no such path"):
        require(repo.objects, root, b"etc/nope", "etc/nope")


def test_revision_errors_name_the_revision(repo):
    _commit(repo)
    for rev, words in [("nope", "no such ref"), ("main^", "has no parent"), ("abcd", "no such ref or commit"),
                       ("a..b", "invalid ref name")]:
        with pytest.raises(RefError, match=words) as caught:
            repo.resolve(rev)
        assert caught.value.path == rev


def test_not_a_repository_names_no_command(tmp_path):
    with pytest.raises(NotARepository) as caught:
        Repository.open(str(tmp_path))
    assert caught.value.path == str(tmp_path) and "sealtree" not in caught.value.detail().replace(
        "sealtree repository", "")
