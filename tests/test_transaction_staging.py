"""Staging into prefixes absent from ``objects/`` (FORMAT section 20): a transaction that
finds ``objects/xx`` absent as it begins stages that prefix's objects in ``staging/xx/`` and
publishes the directory with one rename; a prefix another writer made and filled meanwhile
is published object by object, never renaming over an object present; an empty one made
meanwhile is replaced.  Small files whose owner is the process's own and whose mode the
umask leaves alone are created with their mode: every mode comes out as the tree says."""

from __future__ import annotations

import os
import signal
import stat

import pytest

from store.errors import RepositoryError
from store.forked import Forked
from store.fsck import fsck
from store.fsverity import digest_bytes
from store.ids import RawId
from store.model import Meta
from store.repo import Repository
from store.transaction import Transaction, make_object_dirs
from tests.test_commit_limits import small_tmpfs

META = Meta(0o644, os.getuid(), os.getgid())


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _same_prefix(count: int, prefix: str | None = None) -> list[bytes]:
    """``count`` contents whose file objects (with META) share one prefix."""
    found: dict[str, list[bytes]] = {}
    i = 0
    while True:
        data = b"content %d" % i
        i += 1
        h = digest_bytes(data).hex()[:2]
        if prefix is not None and h != prefix:
            continue
        found.setdefault(h, []).append(data)
        if len(found[h]) == count:
            return found[h]


def _rel(data: bytes, meta: Meta = META) -> str:
    h = digest_bytes(data).hex()
    return f"{h[:2]}/{h[2:]}.{meta.object_key()}.file"


def test_into_an_empty_repository_each_prefix_is_staged_in_a_directory_published_whole(repo):
    contents = [b"content %d" % i for i in range(60)]
    with repo.writing() as tx:
        for data in contents:
            tx.add_file_bytes(data, META)
        tree = tx.add_meta_object("tree", b"not parsed here", RawId(bytes(32)))
        names = sorted(os.listdir(tx.staging))
        assert "lock" in names
        dirs = [n for n in names if n != "lock"]
        assert dirs and all(os.path.isdir(os.path.join(tx.staging, n)) and len(n) == 2 for n in dirs)
        for data in contents:
            assert os.path.isfile(os.path.join(tx.staging, _rel(data)))
        inodes = {n: os.stat(os.path.join(tx.staging, n)).st_ino for n in dirs}
        tx.publish()
        assert os.listdir(tx.staging) == ["lock"]
    for prefix, inode in inodes.items():  # renamed, not remade
        st = os.stat(os.path.join(repo.layout.objects, prefix))
        assert st.st_ino == inode
        assert stat.S_IMODE(st.st_mode) == 0o777 & ~_umask()
    for data in contents:
        with open(repo.objects.file_path(RawId(digest_bytes(data)), META), "rb") as handle:
            assert handle.read() == data
    assert os.path.isfile(repo.objects.path("tree", RawId(bytes(32))))
    assert tree == RawId(bytes(32))
    assert not [n for n in os.listdir(repo.layout.tmp) if n.startswith("staging-")]


def test_a_prefix_another_writer_filled_meanwhile_is_published_object_by_object(repo):
    first, second, third = _same_prefix(3)
    prefix = _rel(first)[:2]
    with repo.writing() as tx:
        for data in (first, second):
            tx.add_file_bytes(data, META)
        assert os.path.isdir(os.path.join(tx.staging, prefix))
        # Another writer publishes `first` and `third` meanwhile (complete, same metadata).
        with Transaction(repo.layout) as other:
            other.add_file_bytes(first, META)
            other.add_file_bytes(third, META)
            other.publish()
        theirs = os.stat(os.path.join(repo.layout.objects, _rel(first))).st_ino
        tx.publish()
    assert os.stat(os.path.join(repo.layout.objects, _rel(first))).st_ino == theirs  # kept
    for data in (first, second, third):
        with open(os.path.join(repo.layout.objects, _rel(data)), "rb") as handle:
            assert handle.read() == data
    assert fsck(repo).problems == []


def test_an_empty_prefix_directory_made_meanwhile_is_replaced(repo):
    contents = [b"content %d" % i for i in range(20)]
    with repo.writing() as tx:
        for data in contents:
            tx.add_file_bytes(data, META)
        made = make_object_dirs(repo.layout.objects)  # as commit --tar's worker does
        assert len(made) == 256
        tx.made_dirs(made)
        tx.publish()
    for data in contents:
        assert os.path.isfile(os.path.join(repo.layout.objects, _rel(data)))
    assert fsck(repo).problems == []


def test_a_second_publish_stages_flat_into_the_prefixes_published(repo):
    first, second = _same_prefix(2)
    with repo.writing() as tx:
        tx.add_file_bytes(first, META)
        tx.publish()
        tx.add_file_bytes(first, META)  # present now: not staged again
        tx.add_file_bytes(second, META)
        assert os.path.isfile(os.path.join(tx.staging, _rel(second).replace("/", "", 1)))
        tx.publish()
    for data in (first, second):
        assert os.path.isfile(os.path.join(repo.layout.objects, _rel(data)))


def _stage_in_worker(tx: Transaction, contents: list[bytes]) -> list[str]:
    tx.create_exactly()
    for data in contents:
        tx.add_file_bytes(data, META)
    return tx.staged()


def test_objects_a_worker_stages_in_prefix_directories_are_adopted_and_published(repo):
    contents = [b"content %d" % i for i in range(50)]
    with repo.writing() as tx:
        tx.add_file_bytes(contents[0], META)  # the parent makes some staging/xx, the worker others
        workers = [Forked(_stage_in_worker, tx, contents[i::2], failure=RepositoryError)
                   for i in range(2)]
        for worker in workers:
            try:
                tx.adopt(worker.wait(), flat=True)
            finally:
                worker.cancel()
        tx.publish()
        assert os.listdir(tx.staging) == ["lock"]
    for data in contents:
        st = os.stat(os.path.join(repo.layout.objects, _rel(data)))
        assert stat.S_IMODE(st.st_mode) == META.mode
    for prefix in os.listdir(repo.layout.objects):  # the worker's umask 0 did not leak
        mode = stat.S_IMODE(os.stat(os.path.join(repo.layout.objects, prefix)).st_mode)
        assert mode == 0o777 & ~_umask()
    assert fsck(repo).problems == []


def _stage_and_die(tx: Transaction) -> None:
    for i in range(30):
        tx.add_file_bytes(b"content %d" % i, META)
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_transaction_killed_before_publishing_leaves_only_its_staging_directory(repo):
    with repo.writing() as tx:
        worker = Forked(_stage_and_die, tx, failure=RepositoryError)
        with pytest.raises(RepositoryError):
            worker.wait()
        worker.cancel()
        assert any(os.path.isdir(os.path.join(tx.staging, n)) for n in os.listdir(tx.staging))
    assert os.listdir(repo.layout.objects) == []
    with repo.writing():
        pass
    assert not [n for n in os.listdir(repo.layout.tmp) if "staging-" in n]


def test_every_mode_comes_out_as_the_tree_says_whatever_the_umask(tmp_path):
    modes = (0o644, 0o755, 0o4755, 0o2711, 0o1644, 0o444, 0o600, 0o000, 0o6777, 0o666, 0o777)
    owners = [(os.getuid(), os.getgid())] + ([(1000, 1000)] if os.geteuid() == 0 else [])
    for umask in (0o022, 0o077, 0o002):
        previous = os.umask(umask)
        try:
            repo = Repository.init(str(tmp_path / f"repo-{umask:o}"))
            metas = [Meta(mode, uid, gid) for mode in modes for uid, gid in owners]
            with repo.writing() as tx:
                for i, meta in enumerate(metas):
                    tx.add_file_bytes(b"file %d" % i, meta)
                tx.publish()
        finally:
            os.umask(previous)
        for i, meta in enumerate(metas):
            st = os.stat(repo.objects.file_path(RawId(digest_bytes(b"file %d" % i)), meta))
            assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (meta.mode, meta.uid, meta.gid)
        assert fsck(repo).problems == []


@pytest.mark.usefixtures("needs_root")
def test_a_failed_write_leaves_nothing_in_the_prefix_directory_published(tmp_path):
    with small_tmpfs(str(tmp_path / "fs"), "1m") as fs:
        repo = Repository.init(os.path.join(fs, "repo"))
        big = os.urandom(2 << 20)
        prefix = _rel(big)[:2]
        (small,) = _same_prefix(1, prefix)
        with pytest.raises(RepositoryError), repo.writing() as tx:
            tx.add_file_bytes(small, META)
            try:
                tx.add_file_bytes(big, META)
            finally:
                assert os.listdir(os.path.join(tx.staging, prefix)) == [_rel(small)[3:]]
        assert os.listdir(repo.layout.objects) == []


def test_a_download_adopted_where_it_is_joins_a_prefix_published_whole(repo, tmp_path):
    staged, downloaded = _same_prefix(2)
    elsewhere = os.path.join(repo.layout.tmp, "download")  # on the repository's filesystem
    with open(elsewhere, "wb") as handle:
        handle.write(downloaded)
    os.chmod(elsewhere, META.mode)
    with repo.writing() as tx:
        tx.add_file_bytes(staged, META)
        tx.adopt_file(elsewhere, RawId(digest_bytes(downloaded)), META)
        tx.publish()
    assert not os.path.exists(elsewhere)
    for data in (staged, downloaded):
        with open(os.path.join(repo.layout.objects, _rel(data)), "rb") as handle:
            assert handle.read() == data
    assert fsck(repo).problems == []
