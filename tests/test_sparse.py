"""Holes stored as holes (issue 14): a file with holes, from a directory or a GNU/PAX sparse
tar member, is committed with the digest of its content (zeros included) and its object
written sparse; checkout, checkout --copy, fsck and export keep the holes; a 1 TiB file with
4 KiB of data is neither read nor written whole.

What a command reads and writes is measured with the kernel's own counters (rchar, wchar
of /proc/self/io) in a process of its own, with its peak memory (VmHWM); what an object
takes on disk with st_blocks.  The sparse archives are made by GNU tar.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import subprocess
import sys
import tarfile

import pytest

from store.checkout import checkout
from store.errors import SourceError
from store.export_tar import SPARSE_DIR
from store.fsverity import VerityHasher, digest_file
from store.repo import Repository
from store.source_tar import TarSourceOptions, read_tar
from store.sparse import EXPORT_HOLE_MIN, data_ranges, zero_runs
from tests.cli_runner import run_cli
from tests.helpers import ROOT

TIB = 1 << 40
DATA_AT = 1 << 30  # where the 4 KiB of data of the 1 TiB file are
DATA = bytes(random.Random(14).randrange(256) for _ in range(4096))
# What a command may read or write (syscall bytes) or hold in memory around a 1 TiB file.
IO_BOUND = 64 << 20
RSS_BOUND = 256 << 20
FORMATS = ("gnu", "pax-0.0", "pax-0.1", "pax-1.0")

GNU_TAR = shutil.which("tar")
needs_gnu_tar = pytest.mark.skipif(
    GNU_TAR is None or b"GNU tar" not in subprocess.run([GNU_TAR, "--version"], capture_output=True).stdout,
    reason="GNU tar is not installed")


def sparse_file(path: str, size: int = TIB, extents: tuple[tuple[int, bytes], ...] = ((DATA_AT, DATA),)
                ) -> str:
    """A file of ``size`` bytes, holes but for ``extents``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.ftruncate(fd, size)
        for offset, data in extents:
            os.pwrite(fd, data, offset)
    finally:
        os.close(fd)
    return path


def content_digest(size: int, extents: tuple[tuple[int, bytes], ...]) -> bytes:
    """The fs-verity digest of ``size`` bytes of zeros but for ``extents`` (in order)."""
    hasher = VerityHasher()
    pos = 0
    for offset, data in extents:
        hasher.update_zeros(offset - pos)
        hasher.update(data)
        pos = offset + len(data)
    hasher.update_zeros(size - pos)
    return hasher.digest()


def gnu_sparse_tar(src: str, name: str, fmt: str, out: str) -> str:
    """GNU tar's sparse archive of ``src/name`` in format ``gnu`` or ``pax-X.Y``."""
    args = ["--format=gnu"] if fmt == "gnu" else ["--format=pax", f"--sparse-version={fmt[4:]}"]
    subprocess.run([GNU_TAR, *args, "--sparse", "--numeric-owner", "-C", src, "-cf", out, name],
                   check=True)
    return out


def measured(*args: str) -> dict[str, int]:
    """Run ``sealtree ARGS`` in a process of its own; return its rchar, wchar and peak memory
    (bytes).  Fails the test when the command fails."""
    # VmHWM, not ru_maxrss: that keeps the size of the parent (pytest) across fork and exec.
    code = ("import sys\n"
            "from sealtree.cli import main\n"
            "status = main(sys.argv[1:])\n"
            "io = dict(line.split(': ') for line in open('/proc/self/io').read().splitlines())\n"
            "peak = next(int(line.split()[1]) for line in open('/proc/self/status') "
            "if line.startswith('VmHWM:'))\n"
            "print('MEASURED', io['rchar'], io['wchar'], peak * 1024, file=sys.stderr)\n"
            "sys.exit(status)\n")
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("MEASURED"))
    rchar, wchar, peak = (int(x) for x in line.split()[1:])
    return {"rchar": rchar, "wchar": wchar, "peak": peak}


def within_bounds(figures: dict[str, int], what: str) -> None:
    assert figures["rchar"] < IO_BOUND, f"{what} read {figures['rchar']} bytes"
    assert figures["wchar"] < IO_BOUND, f"{what} wrote {figures['wchar']} bytes"
    assert figures["peak"] < RSS_BOUND, f"{what} peaked at {figures['peak']} bytes"


def object_of(repo: str, digest: bytes) -> str:
    h = digest.hex()
    names = [n for n in os.listdir(os.path.join(repo, "objects", h[:2])) if n.startswith(h[2:])]
    assert len(names) == 1, names
    return os.path.join(repo, "objects", h[:2], names[0])


def allocated(path: str) -> int:
    return os.stat(path).st_blocks * 512


def holes_kept(path: str, size: int, extents: tuple[tuple[int, bytes], ...]) -> None:
    """``path`` has ``size`` bytes, the data of ``extents`` where they are, and takes little
    disk (the holes are holes)."""
    assert os.path.getsize(path) == size
    assert allocated(path) < (1 << 20) + sum(len(d) for _o, d in extents)
    with open(path, "rb") as handle:
        for offset, data in extents:
            handle.seek(offset)
            assert handle.read(len(data)) == data
            handle.seek(max(0, offset - 4096))
            assert handle.read(min(4096, offset)) == bytes(min(4096, offset))


# -- the digest of a hole -------------------------------------------------------------------

def test_update_zeros_equals_hashing_the_zeros():
    rnd = random.Random(1)
    for _ in range(200):
        plain, holes = VerityHasher(), VerityHasher()
        for _ in range(rnd.randint(0, 6)):
            if rnd.random() < 0.5:
                data = rnd.randbytes(rnd.choice([rnd.randint(0, 5000), 4096 * rnd.randint(0, 200)]))
                plain.update(data)
                holes.update(data)
            else:
                count = rnd.choice([rnd.randint(0, 5000), rnd.randint(0, 1 << 21),
                                    4096 * rnd.randint(0, 1000), 4096 * 128 * 128 * rnd.randint(0, 2)])
                plain.update(bytes(count))
                holes.update_zeros(count)
        assert holes.size == plain.size
        assert holes.digest() == plain.digest()


def test_sparse_digest_matches_the_fsverity_tool(tmp_path, fsverity_tool):
    extents = ((0, b"a" * 100), (5 << 20, DATA), ((300 << 20) + 17, b"tail"))
    path = sparse_file(str(tmp_path / "f"), (300 << 20) + 21, extents)
    tool = subprocess.run([fsverity_tool, "digest", path], check=True, capture_output=True,
                          text=True).stdout.split()[0]
    assert tool == "sha256:" + digest_file(path).hex() == "sha256:" + content_digest(
        (300 << 20) + 21, extents).hex()


# -- a 1 TiB file with 4 KiB of data, from a directory and from sparse archives -----------------

@pytest.fixture(scope="module")
def tib(tmp_path_factory):
    """A directory holding the 1 TiB file, and GNU tar's sparse archives of it."""
    base = tmp_path_factory.mktemp("tib")
    src = base / "src"
    src.mkdir()
    sparse_file(str(src / "big"))
    archives = {fmt: gnu_sparse_tar(str(src), "big", fmt, str(base / f"{fmt}.tar"))
                for fmt in FORMATS} if GNU_TAR else {}
    return src, archives


def test_tib_directory_commit_reads_and_writes_only_the_data(tmp_path, tib):
    src, _archives = tib
    repo = str(tmp_path / "repo")
    run_cli("init", repo=repo)
    within_bounds(measured("--repo", repo, "commit", "-b", "dir", str(src)), "commit")
    digest = content_digest(TIB, ((DATA_AT, DATA),))
    holes_kept(object_of(repo, digest), TIB, ((DATA_AT, DATA),))
    within_bounds(measured("--repo", repo, "fsck"), "fsck")


@needs_gnu_tar
@pytest.mark.parametrize("fmt", FORMATS)
def test_tib_sparse_member_commit_is_the_same_object_written_sparse(tmp_path, tib, fmt):
    _src, archives = tib
    assert os.path.getsize(archives[fmt]) < 1 << 20
    repo = str(tmp_path / "repo")
    run_cli("init", repo=repo)
    within_bounds(measured("--repo", repo, "commit", "-b", "t", "--tar", archives[fmt]),
                  f"commit --tar ({fmt})")
    digest = content_digest(TIB, ((DATA_AT, DATA),))
    holes_kept(object_of(repo, digest), TIB, ((DATA_AT, DATA),))


@needs_gnu_tar
def test_tib_checkout_copy_and_export_keep_holes(tmp_path, tib):
    _src, archives = tib
    repo = str(tmp_path / "repo")
    run_cli("init", repo=repo)
    run_cli("commit", "-b", "t", "--tar", archives["pax-1.0"], repo=repo)
    for how in ([], ["--copy"]):
        out = tmp_path / f"co{len(how)}"
        within_bounds(measured("--repo", repo, "checkout", *how, "t", str(out)), f"checkout {how}")
        holes_kept(str(out / "big"), TIB, ((DATA_AT, DATA),))
    archive = tmp_path / "out.tar"
    within_bounds(measured("--repo", repo, "export", "--tar", "t", "-o", str(archive)), "export")
    assert os.path.getsize(archive) < 1 << 20
    # GNU tar extracts the PAX sparse 1.0 member as the same file, holes kept.
    extracted = tmp_path / "x"
    extracted.mkdir()
    subprocess.run([GNU_TAR, "-xf", str(archive), "-C", str(extracted)], check=True)
    holes_kept(str(extracted / "big"), TIB, ((DATA_AT, DATA),))
    # And reading the export back gives the same tree.
    run_cli("commit", "-b", "again", "--tar", str(archive), "--timestamp", "1", repo=repo)
    assert (run_cli("ls", "t", repo=repo).stdout == run_cli("ls", "again", repo=repo).stdout)


# -- export: which files are sparse members, and that it depends on the content only ------------

def test_export_sparse_map_is_a_function_of_the_content(tmp_path, repo):
    """The same content stored dense (zeros written) and sparse (holes) exports the same bytes,
    as a PAX sparse member with the runs of zeros of EXPORT_HOLE_MIN or more as holes; a file
    without such a run is an ordinary member."""
    size = 8 << 20
    extents = ((100, b"x" * 5000), (3 << 20, DATA), ((5 << 20) + 4096 * 3, DATA))
    dense_dir, sparse_dir = tmp_path / "dense", tmp_path / "sparse"
    dense_dir.mkdir()
    sparse_dir.mkdir()
    content = bytearray(size)
    for offset, data in extents:
        content[offset:offset + len(data)] = data
    (dense_dir / "f").write_bytes(content)
    (dense_dir / "small-run").write_bytes(b"y" * 4096 + bytes((1 << 20) - 4096) + b"y" * 4096)
    sparse_file(str(sparse_dir / "f"), size, extents)
    shutil.copy(dense_dir / "small-run", sparse_dir / "small-run")
    fd = os.open(dense_dir / "f", os.O_RDONLY)
    try:
        assert list(data_ranges(fd, 0, size)) == [(0, size)]  # truly dense on disk
        assert zero_runs(fd, size) == [(8192, 3 << 20), ((3 << 20) + 4096, (5 << 20) + 4096 * 3),
                                       ((5 << 20) + 4096 * 4, size)]
    finally:
        os.close(fd)
    exports = []
    for name, directory in (("dense", dense_dir), ("sparse", sparse_dir)):
        run_cli("commit", "-b", name, "--timestamp", "1", str(directory), repo=repo.path)
        out = tmp_path / f"{name}.tar"
        run_cli("export", "--tar", name, "-o", str(out), repo=repo.path)
        exports.append(out.read_bytes())
    assert exports[0] == exports[1]
    with tarfile.open(fileobj=io.BytesIO(exports[0])) as archive:
        members = {m.name: m for m in archive.getmembers()}
        assert members["f"].sparse == [(0, 8192), (3 << 20, 4096), ((5 << 20) + 4096 * 3, 4096),
                                       (size, 0)]
        assert members["f"].pax_headers["GNU.sparse.realsize"] == str(size)
        assert archive.extractfile(members["f"]).read() == content  # type: ignore[union-attr]
        assert members["small-run"].sparse is None  # its zero run is under EXPORT_HOLE_MIN
        assert (1 << 20) - 4096 < EXPORT_HOLE_MIN
    # The made-up header name of the sparse member carries no PID.
    assert SPARSE_DIR + b"f\0" in exports[0]


# -- zeros in data, and dense files -------------------------------------------------------------

def test_zeros_in_an_ordinary_member_take_no_disk(tmp_path, repo):
    """A plain (not sparse) member of 64 MiB of zeros around some data: its object is sparse."""
    content = bytes(32 << 20) + DATA + bytes(32 << 20)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("zeros")
        info.size, info.mode = len(content), 0o644
        archive.addfile(info, io.BytesIO(content))
    with repo.writing() as tx:
        read_tar(tx, io.BytesIO(buf.getvalue()), TarSourceOptions())
        tx.publish()
    path = object_of(repo.path, content_digest(len(content), ((32 << 20, DATA),)))
    holes_kept(path, len(content), ((32 << 20, DATA),))


def test_dense_file_round_trips(tmp_path, repo):
    """A big file without zeros is stored, checked out by copy and exported whole."""
    src = tmp_path / "src"
    src.mkdir()
    content = random.Random(2).randbytes(6 << 20)
    (src / "f").write_bytes(content)
    run_cli("commit", "-b", "d", str(src), repo=repo.path)
    run_cli("checkout", "--copy", "d", str(tmp_path / "co"), repo=repo.path)
    assert (tmp_path / "co" / "f").read_bytes() == content
    run_cli("export", "--tar", "d", "-o", str(tmp_path / "d.tar"), repo=repo.path)
    with tarfile.open(tmp_path / "d.tar") as archive:
        member = archive.getmember("f")
        assert member.sparse is None
        assert archive.extractfile(member).read() == content  # type: ignore[union-attr]


# -- sparse maps parsed strictly ----------------------------------------------------------------

def pax10_archive(map_text: bytes, data: bytes, realsize: int) -> bytes:
    """A PAX sparse 1.0 member written here: ``map_text`` (the map's lines) then ``data``."""
    body = map_text + bytes(-len(map_text) % 512) + data
    info = tarfile.TarInfo("GNUSparseFile.0/f")
    info.size, info.mode = len(body), 0o644
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                        "GNU.sparse.name": "f", "GNU.sparse.realsize": str(realsize)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def tar_files(repo: Repository, data: bytes) -> dict[str, bytes]:
    root = str(repo.path) + "-co"
    with repo.writing() as tx:
        result = read_tar(tx, io.BytesIO(data), TarSourceOptions(label="in.tar"))
        tx.publish()
    checkout(repo.objects, result.tree, result.root_meta, root, copy=True)
    return {name: open(os.path.join(root, name), "rb").read() for name in os.listdir(root)}


def test_pax10_map_written_here_is_read(repo):
    archive = pax10_archive(b"2\n4096\n3\n10000\n2\n", b"abcde", 10002)
    assert tar_files(repo, archive) == {"f": bytes(4096) + b"abc" + bytes(10000 - 4099) + b"de"}


@pytest.mark.parametrize(("map_text", "match"), [
    (b"1\n+5\n3\n", "not a decimal number"),
    (b"1\n 5\n3\n", "not a decimal number"),
    (b"1\n1_0\n3\n", "not a decimal number"),
    (b"1\n-5\n3\n", "not a decimal number"),
    (b"x\n", "not a decimal number"),
    (b"2\n10\n3\n0\n3\n", "out of order"),
    (b"1\n99999\n3\n", "past the file's size"),
    (b"99999999999\n", "more than"),
    (b"1\n" + b"1" * 600, "not a number ending in a newline"),
    (b"1\n0\n5000\n", "holds 5000 bytes of data, more than the member's 512"),
])
def test_bad_pax10_maps_are_refused(repo, map_text, match):
    with pytest.raises(SourceError, match=match):
        tar_files(repo, pax10_archive(map_text, b"abcdef", 10000))
