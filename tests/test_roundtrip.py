"""Commit then checkout gives back the same tree, field by field; ids are deterministic."""

from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from store.checkout import checkout
from store.history import finish_commit
from store.repo import Repository
from store.source_dir import read_directory
from tests.helpers import assert_same_tree, materialise, names, run_cli, trees

pytestmark = pytest.mark.usefixtures("needs_root")


def commit_dir(repo: Repository, path: str, branch: str = "main", timestamp: int = 0):
    with repo.writing() as tx:
        tree, meta = read_directory(tx, path)
        return finish_commit(repo, tx, branch, tree, meta, subject="t", timestamp=timestamp), tree


@settings(max_examples=30)
@given(tree=trees, links=st.lists(st.tuples(st.integers(0, 50), names), max_size=3),
       copy=st.booleans())
def test_commit_checkout_round_trip(tmp_path_factory, tree, links, copy):
    base = tmp_path_factory.mktemp("rt")
    src = base / "src"
    src.mkdir()
    materialise(os.fsencode(src), tree, links)
    os.chmod(src, 0o751)
    repo = Repository.init(str(base / "repo"))
    commit_id, tree_id = commit_dir(repo, str(src))
    commit = repo.objects.read_commit(commit_id)
    checkout(repo.objects, commit.root_tree, commit.root_meta, str(base / "out"), copy=copy)
    assert_same_tree(str(src), str(base / "out"))


def test_special_file_refused_or_skipped(tmp_path, repo):
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok").write_text("x")
    os.mkfifo(src / "fifo")
    proc = run_cli("commit", "-b", "main", str(src), repo=repo.path, check=False)
    assert proc.returncode == 8
    assert "fifo" in proc.stderr and str(src / "fifo") in proc.stderr
    assert repo.refs.read("main") is None
    run_cli("commit", "-b", "main", "--skip-special", str(src), repo=repo.path)
    assert run_cli("ls", "main", repo=repo.path).stdout.strip().endswith("/ok")


def test_same_tree_same_ids_from_different_places(tmp_path):
    spec = {b"b": ("file", b"two", 0o644, (0, 0), []), b"a": ("dir", {
        b"z": ("file", b"1" * 5000, 0o755, (1, 2), [(b"user.k", b"v")]),
        b"y": ("symlink", b"../b", (0, 0), [])}, 0o755, (0, 0), [])}
    first, second = tmp_path / "one", tmp_path / "two" / "deeper"
    first.mkdir()
    second.mkdir(parents=True)
    materialise(os.fsencode(first), spec)
    # Same tree, written in the opposite order (another readdir order), other mtimes.
    materialise(os.fsencode(second), dict(reversed(list(spec.items()))))
    os.utime(second / "b", (1, 1))
    for path in (first, second):
        os.chmod(path, 0o755)
    repo_a = Repository.init(str(tmp_path / "ra"))
    repo_b = Repository.init(str(tmp_path / "rb"))
    ca, ta = commit_dir(repo_a, str(first), timestamp=1700000000)
    cb, tb = commit_dir(repo_b, str(second), timestamp=1700000000)
    assert ta == tb
    assert ca == cb
    c2, t2 = commit_dir(repo_b, str(second), branch="other", timestamp=1700000001)
    assert t2 == tb and c2 != cb


def test_source_date_epoch_sets_timestamp(tmp_path, repo):
    src = tmp_path / "s"
    src.mkdir()
    (src / "f").write_text("x")
    out = run_cli("commit", "-b", "m", str(src), repo=repo.path, env={"SOURCE_DATE_EPOCH": "12345"})
    shown = run_cli("show", "--json", out.stdout.strip(), repo=repo.path).stdout
    assert '"timestamp": 12345' in shown


def test_hardlinks_in_source_share_one_object(tmp_path, repo):
    src = tmp_path / "s"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(10000))
    os.link(src / "a", src / "b")
    commit_dir(repo, str(src))
    files = [o for o in repo.objects.iter_objects() if o.kind == "file"]
    assert len(files) == 1
    shutil.rmtree(src)


def test_file_capabilities_and_setuid_survive(tmp_path, repo):
    """chown drops security.capability and setuid bits: metadata must be applied in order."""
    src = tmp_path / "src"
    src.mkdir()
    cap = b"\x01\x00\x00\x02" + bytes(16)  # VFS_CAP_REVISION_2, effective, no caps set
    for name, mode in (("ping", 0o755), ("su", 0o4755)):
        path = src / name
        path.write_bytes(os.urandom(5000))
        os.chown(path, 0, 7)
        os.chmod(path, mode)
        os.setxattr(path, "security.capability", cap)
    commit_id, _tree = commit_dir(repo, str(src))
    commit = repo.objects.read_commit(commit_id)
    for copy in (False, True):
        out = tmp_path / f"out-{copy}"
        checkout(repo.objects, commit.root_tree, commit.root_meta, str(out), copy=copy)
        assert os.getxattr(out / "ping", "security.capability") == cap
        assert os.stat(out / "su").st_mode & 0o7777 == 0o4755
    assert_same_tree(str(src), str(tmp_path / "out-True"))


def _many_files(src, count: int = 600) -> None:
    """A tree big enough for commit's worker processes: unique files, files with equal content
    and metadata in many directories (the same object, staged by different workers), files
    with equal content but other modes, and a hardlink group."""
    shared = os.urandom(40000)
    for i in range(count):
        directory = src / f"d{i % 23}" / f"e{i % 7}"
        directory.mkdir(parents=True, exist_ok=True)
        if i % 3 == 0:
            (directory / f"same{i}").write_bytes(shared)
            os.chmod(directory / f"same{i}", 0o755 if i % 2 else 0o644)
        else:
            (directory / f"unique{i}").write_bytes(os.urandom(20000 + i))
    os.link(src / "d1" / "e1" / "unique1", src / "d0" / "hardlink")


def test_commit_in_worker_processes_round_trips(tmp_path, repo, monkeypatch):
    import store.source_dir as source_dir

    forked: list[object] = []

    class Counting(source_dir.Forked):  # type: ignore[misc, name-defined]
        def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            forked.append(args[0])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(source_dir, "Forked", Counting)
    src = tmp_path / "src"
    src.mkdir()
    _many_files(src)
    progress: list[tuple[int, int]] = []
    with repo.writing() as tx:
        tree, meta = read_directory(tx, str(src), source_dir.DirSourceOptions(
            progress=lambda files, size: progress.append((files, size))))
        commit_id = finish_commit(repo, tx, "main", tree, meta, subject="t", timestamp=0)
    assert len(forked) == min(os.cpu_count() or 1, source_dir.MAX_WORKERS) >= 2
    assert progress[-1] == (600, sum(p.stat().st_size for p in src.rglob("*") if p.is_file()
                                     and p.name != "hardlink"))
    commit = repo.objects.read_commit(commit_id)
    checkout(repo.objects, commit.root_tree, commit.root_meta, str(tmp_path / "out"))
    assert_same_tree(str(src), str(tmp_path / "out"))
    files = [f for _d, _s, fs in os.walk(repo.objects.root) for f in fs if f.endswith(".file")]
    assert len(files) == 400 + 2  # unique files, and the shared content under two modes
    assert os.listdir(os.path.join(repo.path, "tmp")) == []
    # The same tree committed in one process has the same id.
    monkeypatch.setattr(source_dir, "PARALLEL_MIN_FILES", 10**9)
    assert commit_dir(repo, str(src), "again")[1] == tree


def test_a_failing_commit_worker_names_the_file(tmp_path, repo, monkeypatch):
    import store.source_dir as source_dir
    from store.errors import SourceError

    src = tmp_path / "src"
    src.mkdir()
    _many_files(src)
    real = source_dir.store_file

    def failing(tx, path):  # type: ignore[no-untyped-def]
        if path.endswith(b"/unique301"):
            raise SourceError(f"{os.fsdecode(path)}: cannot read: Input/output error",
                              path=os.fsdecode(path))
        return real(tx, path)

    monkeypatch.setattr(source_dir, "store_file", failing)  # inherited by the forked workers
    with pytest.raises(SourceError, match="unique301: cannot read: Input/output error"):
        commit_dir(repo, str(src))
    assert repo.refs.list() == {}
    assert os.listdir(os.path.join(repo.path, "tmp")) == []
