"""``commit --tar`` stores small files in a forked worker while it reads on
(store.write_behind): the same objects and tree as storing them itself, a full disk
in the worker reported as the repository's, and nothing left in staging after a failure."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from store.errors import RepositoryError, SourceError
from store.repo import Repository
from store.source_dir import read_directory
from store.source_tar import TarSourceOptions, read_tar
from store.write_behind import START_FILES
from tests.test_commit_limits import small_tmpfs

pytestmark = pytest.mark.usefixtures("needs_root")


# The worker creates a file with its mode (umask 0) when the owner is its own: set-ID, sticky
# and odd modes included, each must come out as the tree says.
OWNER = 1000  # every tenth file's owner and group: not the worker's, so given after creating
MODES = (0o644, 0o755, 0o4755, 0o2711, 0o1644, 0o444, 0o600, 0o000, 0o6777)


def _files(count: int, size: int) -> list[tuple[str, bytes, int]]:
    """(name, content, mode): a few duplicates, so that one object is queued twice."""
    files = [(f"d{i % 7}/f{i}", (b"%d\n" % i) * (size // 4 + i % 5), MODES[i % len(MODES)])
             for i in range(count)]
    files += [(f"dup/{i}", files[i][1], files[i][2]) for i in range(5)]
    return files


def _tar(files: list[tuple[str, bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for i, (name, data, mode) in enumerate(files):
            info = tarfile.TarInfo(name)
            owner = OWNER if i % 10 == 3 else 0
            info.size, info.mode, info.mtime, info.uid, info.gid = len(data), mode, 1, owner, owner
            if i % 13 == 5:
                info.pax_headers = {"SCHILY.xattr.user.test": f"value {i}"}
            archive.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _object_files(repo: Repository) -> list[tuple[str, int, int]]:
    found = []
    for directory, _dirs, names in os.walk(repo.layout.objects):
        for name in names:
            path = os.path.join(directory, name)
            st = os.stat(path)
            found.append((name, st.st_mode, st.st_uid, st.st_gid, st.st_size,
                          sorted((x, os.getxattr(path, x)) for x in os.listxattr(path))))
    return sorted(found)


@pytest.mark.parametrize("count", [START_FILES // 2, START_FILES * 4])
def test_the_worker_stores_what_a_directory_commit_stores(tmp_path, count):
    """Below START_FILES the files are stored in-process at the end, above it by the worker:
    either way the tree and the objects are those of committing the same files as a
    directory."""
    files = _files(count, 3000)
    src = tmp_path / "src"
    for i, (name, data, mode) in enumerate(files):
        path = src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        owner = OWNER if i % 10 == 3 else 0
        os.chown(path, owner, owner)
        path.chmod(mode)  # after chown, which clears set-ID bits
        if i % 13 == 5:
            os.setxattr(path, "user.test", f"value {i}".encode())
    for directory in [src, *[p for p in src.rglob("*") if p.is_dir()]]:
        directory.chmod(0o755)
    os.chown(src, 0, 0)

    from_tar = Repository.init(str(tmp_path / "tar"))
    with from_tar.writing() as tx:
        result = read_tar(tx, io.BytesIO(_tar(files)), TarSourceOptions())
        tx.publish()
    from_dir = Repository.init(str(tmp_path / "dir"))
    with from_dir.writing() as tx:
        tree, _meta = read_directory(tx, str(src))
        tx.publish()
    assert result.tree == tree
    assert result.files == len(files)
    assert _object_files(from_tar) == _object_files(from_dir)
    assert os.listdir(from_tar.layout.tmp) == []


def test_a_full_disk_in_the_worker_names_the_repository(tmp_path):
    files = _files(START_FILES * 8, 8000)  # about 4 MiB of objects on a 2 MiB filesystem
    with small_tmpfs(str(tmp_path / "fs"), "2m") as fs:
        repo = Repository.init(os.path.join(fs, "repo"))
        with pytest.raises(RepositoryError) as caught, repo.writing() as tx:
            read_tar(tx, io.BytesIO(_tar(files)), TarSourceOptions())
        assert str(caught.value) == f"{repo.path}: no space left on device"
        assert os.listdir(repo.layout.tmp) == []  # the staging directory is gone
        assert _object_files(repo) == []


def test_a_bad_member_after_queued_writes_leaves_nothing(tmp_path):
    """The reader fails while the worker still has files to write: the worker is stopped,
    and the staging directory, whatever it wrote, removed."""
    data = _tar(_files(START_FILES * 4, 3000))
    end = data.rindex(b"ustar")  # cut the archive inside its last member's data
    repo = Repository.init(str(tmp_path / "repo"))
    with pytest.raises(SourceError, match="truncated"), repo.writing() as tx:
        read_tar(tx, io.BytesIO(data[:end + 600]), TarSourceOptions())
    assert os.listdir(repo.layout.tmp) == []
    assert _object_files(repo) == []
