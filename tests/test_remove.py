"""store.remove.remove_tree: any depth, never through a symlink."""

from __future__ import annotations

import os
import shutil

import pytest

from store.remove import remove_tree

DEPTH = 2000


def make_deep(top: str, depth: int) -> None:
    """``top/d/d/.../d/file`` ``depth`` directories deep, made relative to one open directory
    (the full path is longer than PATH_MAX)."""
    os.mkdir(top)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        with open(os.open("file", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as handle:
            handle.write(b"deep")
    finally:
        os.close(fd)


def test_shutil_rmtree_cannot_remove_what_remove_tree_removes(tmp_path):
    """The defect remove_tree exists for (issue 14: undeploy of a deep tree)."""
    top = str(tmp_path / "deep")
    make_deep(top, DEPTH)
    with pytest.raises((RecursionError, OSError)):
        shutil.rmtree(top)
    remove_tree(top)
    assert not os.path.lexists(top)


def test_remove_tree_deep(tmp_path):
    top = str(tmp_path / "deep")
    make_deep(top, DEPTH)
    remove_tree(top)
    assert not os.path.lexists(top)
    assert os.listdir(tmp_path) == []


def test_remove_tree_never_follows_symlinks(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("kept")
    top = tmp_path / "top"
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / "b" / "f").write_text("x")
    os.symlink(outside, top / "a" / "link")
    os.symlink(outside / "keep", top / "file-link")
    os.chmod(top / "a" / "b", 0o500)
    remove_tree(str(top))
    assert not top.exists()
    assert (outside / "keep").read_text() == "kept"
    os.symlink(outside, tmp_path / "toplink")
    remove_tree(str(tmp_path / "toplink"))
    assert not os.path.lexists(tmp_path / "toplink")
    assert (outside / "keep").exists()


def test_remove_tree_missing_and_file(tmp_path):
    remove_tree(str(tmp_path / "absent"))
    (tmp_path / "f").write_text("x")
    remove_tree(str(tmp_path / "f"))
    assert os.listdir(tmp_path) == []
