"""Reproducible inputs and outputs: commit from git and tar, deterministic export (issue 6).

Round trips through the real CLI, checked against real tools: `git archive`
for git revisions, GNU tar for reading and writing PAX archives with xattrs.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import stat
import subprocess
import tarfile

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from store.errors import SourceError
from store.export_tar import export_tar
from store.history import finish_commit
from store.ids import to_hex
from store.model import Kind
from store.repo import Repository
from store.source_dir import read_directory
from store.source_tar import TarSourceOptions, read_tar
from store.walk import lookup, walk
from tests.helpers import materialise, names, run_cli_bytes, trees

pytestmark = pytest.mark.usefixtures("needs_root")

GNU_TAR = shutil.which("tar")
needs_gnu_tar = pytest.mark.skipif(
    GNU_TAR is None or b"GNU tar" not in subprocess.run([GNU_TAR, "--version"], capture_output=True).stdout,
    reason="GNU tar is not installed")
GNU_TAR_XATTRS = ["--xattrs", "--xattrs-include=*", "--numeric-owner", "--format=pax"]


# -- helpers ------------------------------------------------------------------------------

def cli(*args: str, repo: str | None = None, stdin: bytes | None = None, status: int = 0,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run ``sealtree`` with binary I/O; check the exit status and that no
    traceback was printed."""
    proc = run_cli_bytes(*args, repo=repo, input=stdin, env=env)
    assert proc.returncode == status, (proc.args, proc.returncode, proc.stderr.decode(errors="replace"))
    return proc


def commit_json(repo: Repository, *args: str, stdin: bytes | None = None) -> dict[str, str]:
    proc = cli("commit", "--json", "--timestamp", "1000", *args, repo=repo.path, stdin=stdin)
    return json.loads(proc.stdout)


def tree_of(repo: Repository, rev: str) -> str:
    return to_hex(Repository.open(repo.path).commit_of(rev)[1].root_tree)


def commit_dir_lib(repo: Repository, path: str, branch: str) -> str:
    with repo.writing() as tx:
        tree, meta = read_directory(tx, path)
        finish_commit(repo, tx, branch, tree, meta, timestamp=0)
    return to_hex(tree)


def commit_tar_lib(repo: Repository, data: bytes, branch: str, timestamp: int = 0) -> str:
    with repo.writing() as tx:
        result = read_tar(tx, io.BytesIO(data))
        finish_commit(repo, tx, branch, result.tree, result.root_meta, timestamp=timestamp)
    return to_hex(result.tree)


def export_lib(repo: Repository, branch: str, zstd_level: int | None = None) -> bytes:
    out = io.BytesIO()
    export_tar(repo.objects, repo.commit_of(branch)[1], out, zstd_level=zstd_level)
    return out.getvalue()


def tar_index(data: bytes) -> dict[bytes, tuple[object, ...]]:
    """Every member but the root: type, sha256 of content and exec bit, or symlink target."""
    out: dict[bytes, tuple[object, ...]] = {}
    with tarfile.open(fileobj=io.BytesIO(data), encoding="utf-8", errors="surrogateescape") as archive:
        for member in archive:
            name = member.name.encode("utf-8", "surrogateescape")
            if name in (b".", b""):
                continue
            if member.isdir():
                out[name] = ("dir",)
            elif member.issym():
                out[name] = ("symlink", member.linkname.encode("utf-8", "surrogateescape"))
            else:
                assert member.isreg(), member
                content = archive.extractfile(member).read()  # type: ignore[union-attr]
                out[name] = ("file", hashlib.sha256(content).hexdigest(), bool(member.mode & 0o100))
    return out


def build_tar(members: list[tuple[tarfile.TarInfo, bytes | None]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8",
                      errors="surrogateescape") as archive:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def member(name: str | bytes, kind: bytes = tarfile.REGTYPE, *, mode: int = 0o644, link: str | bytes = "",
           uid: int = 0, gid: int = 0) -> tarfile.TarInfo:
    text = name if isinstance(name, str) else name.decode("utf-8", "surrogateescape")
    info = tarfile.TarInfo(text)
    info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, gid, 1
    info.linkname = link if isinstance(link, str) else link.decode("utf-8", "surrogateescape")
    return info


def raw_pax_tar(records: list[tuple[bytes, bytes]], name: bytes, data: bytes) -> bytes:
    """A PAX archive written by hand: one ``x`` header with ``records`` (raw bytes, which
    tarfile's writer cannot produce for non-UTF-8 keywords), then one regular file."""
    def record(key: bytes, value: bytes) -> bytes:
        body = b" " + key + b"=" + value + b"\n"
        n = len(body) + 1
        while len(body) + len(str(n)) != n:
            n = len(body) + len(str(n))
        return str(n).encode() + body

    def pad(b: bytes) -> bytes:
        return b + bytes(-len(b) % 512)

    payload = b"".join(record(k, v) for k, v in records)
    head = tarfile.TarInfo("PaxHeader")
    head.type, head.size = tarfile.XHDTYPE, len(payload)
    file = tarfile.TarInfo(name.decode("utf-8", "surrogateescape"))
    file.size, file.mode = len(data), 0o640
    return (head.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape") + pad(payload)
            + file.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape") + pad(data) + bytes(1024))


def make_source(root: str) -> None:
    """A small tree with every kind of entry the tar path must carry."""
    from store import xattrs
    os.makedirs(os.path.join(root, "usr", "bin"))
    os.makedirs(os.path.join(root, "etc", "empty"))
    with open(os.path.join(root, "usr", "bin", "tool"), "wb") as f:
        f.write(b"#!/bin/sh\necho hi\n")
    os.chmod(os.path.join(root, "usr", "bin", "tool"), 0o4755)
    with open(os.path.join(root, "etc", "conf"), "wb") as f:
        f.write(b"x" * 70000)
    os.chown(os.path.join(root, "etc", "conf"), 1000, 100)
    xattrs.write(os.path.join(root, "etc", "conf").encode(),
                 ((b"user.k", b"v\xff\x00"), (b"trusted.t", b"1")))
    os.link(os.path.join(root, "usr", "bin", "tool"), os.path.join(root, "usr", "bin", "tool-link"))
    os.symlink("../usr/bin/tool", os.path.join(root, "etc", "tool"))
    deep = os.path.join(root, "d" * 120, "e" * 120)
    os.makedirs(deep)
    with open(os.path.join(deep, "f" * 200), "wb") as f:
        f.write(b"long")
    with open(os.path.join(os.fsencode(root), b"odd-\xff\xfe name"), "wb") as f:
        f.write(b"")
    os.symlink("t" * 300, os.path.join(root, "long-target"))
    os.chmod(root, 0o750)


# -- tar ------------------------------------------------------------------------------------

@needs_gnu_tar
@pytest.mark.parametrize("compression", ["none", "gzip", "xz", "zstd", "stdin-zstd"])
def test_tar_commit_export_commit_same_tree(tmp_path, repo, compression):
    src = str(tmp_path / "src")
    os.mkdir(src)
    make_source(src)
    plain = subprocess.run([GNU_TAR, *GNU_TAR_XATTRS, "-C", src, "-cf", "-", "."], check=True,
                           capture_output=True).stdout
    packed = {"none": plain, "gzip": gzip.compress(plain), "xz": lzma.compress(plain)}.get(
        compression, zstandard.ZstdCompressor().compress(plain))
    if compression.startswith("stdin"):
        first = commit_json(repo, "-b", "tar", "--tar", "-", stdin=packed)
    else:
        (tmp_path / "in.tar").write_bytes(packed)
        first = commit_json(repo, "-b", "tar", "--tar", str(tmp_path / "in.tar"))
    # The same tree as committing the directory itself: every mode, owner, xattr and link.
    assert first["tree"] == commit_dir_lib(repo, src, "dir")
    assert Repository.open(repo.path).commit_of("tar")[1].root_meta.mode == 0o750
    shown = dict(Repository.open(repo.path).commit_of("tar")[1].metadata)
    assert shown["tar.sha256"] == hashlib.sha256(packed).hexdigest()

    cli("export", "--tar", "tar", "-o", str(tmp_path / "out.tar"), repo=repo.path)
    exported = (tmp_path / "out.tar").read_bytes()
    again = commit_json(repo, "-b", "again", "--tar", str(tmp_path / "out.tar"))
    assert again["tree"] == first["tree"]
    assert tree_of(repo, "again") == first["tree"]
    assert Repository.open(repo.path).commit_of("again")[1].root_meta == \
        Repository.open(repo.path).commit_of("tar")[1].root_meta
    assert export_lib(repo, "again") == exported  # same tree, same timestamp: same bytes


@needs_gnu_tar
def test_export_is_deterministic_and_gnu_tar_restores_it(tmp_path, repo):
    src = str(tmp_path / "src")
    os.mkdir(src)
    make_source(src)
    os.chown(os.path.join(src, "usr"), 3_000_000, 7)  # beyond ustar's 7 octal digits: a PAX uid
    commit_dir_lib(repo, src, "main")
    with repo.writing() as tx:  # a timestamp beyond ustar's mtime field: a PAX mtime
        tree, meta = read_directory(tx, src)
        finish_commit(repo, tx, "late", tree, meta, timestamp=(1 << 33) + 5)

    outputs = []
    for env in ({"TZ": "UTC", "LC_ALL": "C"}, {"TZ": "Asia/Kolkata", "LC_ALL": "C.UTF-8"}):
        target = tmp_path / f"out-{len(outputs)}.tar"
        printed = cli("export", "main", "-o", str(target), repo=repo.path, env=env).stdout.decode()
        assert printed.split()[0] == hashlib.sha256(target.read_bytes()).hexdigest()
        outputs.append(target.read_bytes())
    outputs.append(cli("export", "--tar", "main", "-o", "-", repo=repo.path).stdout)
    assert outputs[0] == outputs[1] == outputs[2]
    zst = [cli("export", "--zstd", "main", "-o", "-", repo=repo.path).stdout for _ in range(2)]
    assert zst[0] == zst[1]
    assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(zst[0])).read() == outputs[0]

    # The layout: root first, depth first in name order, numeric owners, fixed mtime.
    data = outputs[0]
    assert len(data) % 10240 == 0
    with tarfile.open(fileobj=io.BytesIO(data), encoding="utf-8", errors="surrogateescape") as archive:
        members = archive.getmembers()
    assert members[0].name == "." and members[0].mode == 0o750
    assert all(m.mtime == 0 and m.uname == "" and m.gname == "" for m in members)
    paths = [m.name.encode("utf-8", "surrogateescape") for m in members[1:]]
    assert paths == [p for p, _ in walk(repo.objects, repo.commit_of("main")[1].root_tree)]
    assert next(m for m in members if m.name == "usr").uid == 3_000_000
    late = export_lib(repo, "late")
    with tarfile.open(fileobj=io.BytesIO(late)) as archive:
        assert {m.mtime for m in archive} == {(1 << 33) + 5}

    # GNU tar extracts it with every mode, owner and xattr: committing that gives the same tree.
    out = tmp_path / "restored"
    out.mkdir()
    subprocess.run([GNU_TAR, "-x", "-p", "--xattrs", "--xattrs-include=*", "--numeric-owner",
                    "-f", str(tmp_path / "out-0.tar"), "-C", str(out)], check=True)
    assert commit_dir_lib(repo, str(out), "restored") == tree_of(repo, "main")
    assert os.stat(out).st_mode & 0o7777 == 0o750


def test_gnu_long_names_and_links(tmp_path, repo):
    long_dir = "dir-" + "a" * 150
    long_file = f"{long_dir}/file-" + "b" * 200
    data = build_tar([
        (member(long_dir, tarfile.DIRTYPE, mode=0o700), None),
        (member(long_file, mode=0o600, uid=7, gid=8), b"content"),
        (member(f"{long_dir}/hard-" + "c" * 120, tarfile.LNKTYPE, link=long_file), None),
        (member("sym", tarfile.SYMTYPE, link="/target/" + "t" * 200), None),
    ], fmt=tarfile.GNU_FORMAT)
    assert b"././@LongLink" in data
    tree = commit_tar_lib(repo, data, "gnu")
    root = repo.commit_of("gnu")[1].root_tree
    file = lookup(repo.objects, root, long_file.encode())
    hard = lookup(repo.objects, root, f"{long_dir}/hard-{'c' * 120}".encode())
    assert file is not None and file.meta.mode == 0o600 and (file.meta.uid, file.meta.gid) == (7, 8)
    assert hard is not None and (hard.kind, hard.digest, hard.size, hard.meta) == \
        (Kind.FILE, file.digest, file.size, file.meta)
    assert lookup(repo.objects, root, b"sym").target == b"/target/" + b"t" * 200  # type: ignore[union-attr]
    # Exported, the long names travel in PAX records; committed again, the tree is the same.
    assert commit_tar_lib(repo, export_lib(repo, "gnu"), "again") == tree


LATIN1_PATH = b"dir/" + b"\xe9t\xe9" * 40 + b".txt"  # not UTF-8, longer than ustar's name field


def test_pax_xattrs_with_binary_name_and_value(tmp_path, repo):
    name, value = b"user.\xff\xfe-name", b"\x00\xff\xfe binary\nvalue="
    data = raw_pax_tar([(b"SCHILY.xattr." + name, value),
                        (b"LIBARCHIVE.xattr.user.%FFlib", b"AAEC"),  # base64 of 00 01 02
                        (b"LIBARCHIVE.xattr." + name.replace(b"\xff", b"%FF").replace(b"\xfe", b"%FE"),
                         b"b3RoZXI"),  # a SCHILY record for the same name wins
                        (b"path", LATIN1_PATH)], b"ignored", b"data")
    (tmp_path / "x.tar").write_bytes(data)
    cli("commit", "-b", "x", "--tar", str(tmp_path / "x.tar"), repo=repo.path)
    repo = Repository.open(repo.path)
    root = repo.commit_of("x")[1].root_tree
    entry = lookup(repo.objects, root, LATIN1_PATH)
    assert entry is not None and entry.meta.mode == 0o640
    assert entry.meta.xattrs == ((b"user.\xfflib", b"\x00\x01\x02"), (name, value))
    assert lookup(repo.objects, root, b"dir").meta.mode == 0o755  # type: ignore[union-attr]  # implied
    exported = export_lib(repo, "x")
    assert b" SCHILY.xattr." + name + b"=" + value + b"\n" in exported
    assert b"hdrcharset=BINARY" in exported  # the long non-UTF-8 path is a PAX record
    assert commit_tar_lib(repo, exported, "again") == to_hex(root)


def with_pax(info: tarfile.TarInfo, headers: dict[str, str]) -> tarfile.TarInfo:
    info.pax_headers = headers
    return info


UNSAFE = {
    "dotdot": ([(member("../evil"), b"x")], "../evil"),
    "absolute": ([(member("/etc/passwd"), b"x")], "/etc/passwd"),
    "dotdot-inside": ([(member("a/b/../../../c"), b"x")], "a/b/../../../c"),
    "under-symlink": ([(member("l", tarfile.SYMTYPE, link="/etc"), None), (member("l/passwd"), b"x")],
                      "l/passwd"),
    "under-file": ([(member("f"), b"x"), (member("f/g"), b"x")], "f/g"),
    "duplicate": ([(member("f"), b"1"), (member("f"), b"2")], "f"),
    "dir-then-file": ([(member("d/x"), b"1"), (member("d"), b"2")], "d"),
    "hardlink-unseen": ([(member("h", tarfile.LNKTYPE, link="nothere"), None)], "nothere"),
    "hardlink-dotdot": ([(member("h", tarfile.LNKTYPE, link="../x"), None)], "../x"),
    "device": ([(member("dev/null", tarfile.CHRTYPE), None)], "dev/null"),
    "fifo": ([(member("run/fifo", tarfile.FIFOTYPE), None)], "run/fifo"),
    "root-file": ([(member("."), b"x")], "."),
    "bad-xattr-namespace": ([(with_pax(member("f"), {"SCHILY.xattr.nonamespace": "v"}), b"x")], "f"),
    "acl": ([(with_pax(member("f"), {"SCHILY.acl.access": "user::rw-"}), b"x")], "f"),
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_or_unsupported_members_are_refused_by_name(tmp_path, repo, case):
    members, named = UNSAFE[case]
    (tmp_path / "bad.tar").write_bytes(build_tar(members))
    proc = cli("commit", "-b", "b", "--tar", str(tmp_path / "bad.tar"), repo=repo.path, status=8)
    assert named.encode() in proc.stderr
    assert Repository.open(repo.path).refs.read("b") is None


def test_special_members_skipped_when_asked(tmp_path, repo):
    (tmp_path / "dev.tar").write_bytes(build_tar([(member("dev/null", tarfile.CHRTYPE), None),
                                                  (member("etc/motd"), b"hi")]))
    proc = cli("commit", "-b", "s", "--skip-special", "--tar", str(tmp_path / "dev.tar"), repo=repo.path)
    assert b"skipped dev/null: character device" in proc.stderr
    root = Repository.open(repo.path).commit_of("s")[1].root_tree
    assert [p for p, _ in walk(repo.objects, root)] == [b"dev", b"etc", b"etc/motd"]


def test_owner_option_and_implied_directories(tmp_path, repo):
    data = build_tar([(member("a/b/file", uid=1000, gid=1000), b"x")])
    (tmp_path / "o.tar").write_bytes(data)
    cli("commit", "-b", "o", "--owner", "5:6", "--tar", str(tmp_path / "o.tar"), repo=repo.path)
    cli("commit", "-b", "n", "--tar", str(tmp_path / "o.tar"), repo=repo.path)
    repo = Repository.open(repo.path)
    owned = {p: (e.meta.uid, e.meta.gid) for p, e in walk(repo.objects, repo.commit_of("o")[1].root_tree)}
    assert set(owned.values()) == {(5, 6)} and repo.commit_of("o")[1].root_meta.uid == 5
    native = {p: (e.meta.mode, e.meta.uid) for p, e in walk(repo.objects, repo.commit_of("n")[1].root_tree)}
    assert native == {b"a": (0o755, 0), b"a/b": (0o755, 0), b"a/b/file": (0o644, 1000)}


@pytest.mark.parametrize("damage", ["cut-at-member", "cut-in-data", "garbage", "bad-gzip", "bzip2", "empty"])
def test_truncated_or_corrupt_streams_are_refused(tmp_path, repo, damage):
    data = build_tar([(member("a"), b"A" * 600), (member("b"), b"B" * 10)], fmt=tarfile.USTAR_FORMAT)
    bad = {"cut-at-member": data[:512 + 1024],  # header and data of "a", then nothing
           "cut-in-data": data[:700],
           "garbage": b"this is not a tar archive" * 40,
           "bad-gzip": gzip.compress(data)[:40] + b"\xff" * 40,
           "bzip2": b"BZh91AY&SY" + bytes(100),
           "empty": b""}[damage]
    proc = cli("commit", "-b", "t", "--tar", "-", repo=repo.path, stdin=bad, status=8)
    assert b"standard input" in proc.stderr
    assert Repository.open(repo.path).refs.read("t") is None


def test_usage_errors(tmp_path, repo):
    assert b"not both" in cli("commit", "-b", "x", "--tar", "-", str(tmp_path), repo=repo.path,
                              status=2).stderr
    assert b"--rev goes with --git" in cli("commit", "-b", "x", "--rev", "HEAD", repo=repo.path,
                                           status=2).stderr
    assert b"UID:GID" in cli("commit", "-b", "x", "--owner", "root", "--git", ".", repo=repo.path,
                             status=2).stderr
    assert b"no such file" in cli("commit", "-b", "x", "--tar", str(tmp_path / "missing.tar"),
                                  repo=repo.path, status=1).stderr.lower()


def test_export_refuses_a_corrupt_object_and_leaves_no_file(tmp_path, repo):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"good content")
    commit_dir_lib(repo, str(src), "main")
    entry = lookup(repo.objects, repo.commit_of("main")[1].root_tree, b"f")
    path = repo.objects.file_path(entry.digest, entry.meta)  # type: ignore[union-attr]
    os.chmod(path, 0o644)
    with open(path, "r+b") as handle:
        handle.write(b"evil")
    proc = cli("export", "main", "-o", str(tmp_path / "out.tar"), repo=repo.path, status=6)
    assert b"f: object" in proc.stderr and b"corrupt" in proc.stderr
    assert not (tmp_path / "out.tar").exists()
    assert [n for n in os.listdir(tmp_path) if n.startswith(".out.tar")] == []


@pytest.mark.usefixtures("needs_root")
def test_export_to_a_full_filesystem_names_the_output_and_leaves_no_file(tmp_path, repo):
    """The archive is hashed and written on a thread of its own: its write error still reaches
    the user, naming the output file, and the temporary file is removed."""
    from tests.test_commit_limits import small_tmpfs

    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):
        (src / f"f{i}").write_bytes(os.urandom(100 << 10))  # 4 MiB, incompressible
    commit_dir_lib(repo, str(src), "main")
    with small_tmpfs(str(tmp_path / "fs"), "1m") as fs:
        out = os.path.join(fs, "out.tar")
        proc = cli("export", "main", "-o", out, repo=repo.path, status=1)
        assert out.encode() in proc.stderr and b"No space left on device" in proc.stderr
        assert b"Traceback" not in proc.stderr
        assert os.listdir(fs) == []


# -- git ------------------------------------------------------------------------------------

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org", "GIT_AUTHOR_DATE": "2020-01-01T00:00:00Z",
           "GIT_COMMITTER_DATE": "2020-01-01T00:00:00Z", "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_CONFIG_GLOBAL": os.devnull}


def git(repo_dir, *args: str) -> bytes:
    proc = subprocess.run(["git", "-C", str(repo_dir), "-c", "core.symlinks=true", *args], check=True,
                          capture_output=True, env=dict(os.environ, **GIT_ENV))
    return proc.stdout


@pytest.fixture
def git_repo(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    work = tmp_path / "git"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    (work / "src" / "lib").mkdir(parents=True)
    (work / "src" / "lib" / "mod.py").write_text("print('hi')\n")
    (work / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(work / "run.sh", 0o755)
    (work / "README").write_text("readme\n")
    os.symlink("src/lib/mod.py", work / "link")
    os.symlink("../README", work / "src" / "up")
    (work / os.fsdecode(b"caf\xc3\xa9 \xff")).write_bytes(b"odd name")
    (work / "big.bin").write_bytes(bytes(range(256)) * 40)
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "first")
    return work


def _checkout_like_git(work, rev: str, dest, owner: tuple[int, int]) -> None:
    """What a checkout gives: `git archive` extracted, then umask 022 modes and ``owner``."""
    dest.mkdir()
    archive = git(work, "archive", "--format=tar", rev)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    for directory, dirs, files in os.walk(os.fsencode(dest)):
        for name in dirs + files + [b""]:
            path = os.path.join(directory, name) if name else directory
            st_ = os.lstat(path)
            os.lchown(path, *owner)
            if stat.S_ISDIR(st_.st_mode):
                os.chmod(path, 0o755)
            elif stat.S_ISREG(st_.st_mode):
                os.chmod(path, 0o755 if st_.st_mode & 0o100 else 0o644)


@pytest.mark.parametrize("owner", [None, (1000, 1001)])
def test_git_revision_matches_checkout_and_git_archive(tmp_path, repo, git_repo, owner):
    args = ["-b", "g", "--git", str(git_repo), "--rev", "main"]
    if owner:
        args += ["--owner", f"{owner[0]}:{owner[1]}"]
    made = commit_json(repo, *args)
    expected_commit = git(git_repo, "rev-parse", "main").decode().strip()
    assert dict(Repository.open(repo.path).commit_of("g")[1].metadata)["git.commit"] == expected_commit

    checkout = tmp_path / "checkout"
    _checkout_like_git(git_repo, "main", checkout, owner or (0, 0))
    assert commit_dir_lib(repo, str(checkout), "checkout") == made["tree"]

    ours = cli("export", "--tar", "g", "-o", "-", repo=repo.path).stdout
    theirs = git(git_repo, "archive", "--format=tar", "main")
    assert tar_index(ours) == tar_index(theirs)
    index = tar_index(ours)
    assert index[b"run.sh"][2] is True and index[b"link"] == ("symlink", b"src/lib/mod.py")


def test_git_gitlink_refused_then_skipped(tmp_path, repo, git_repo):
    sha = git(git_repo, "rev-parse", "HEAD").decode().strip()
    git(git_repo, "update-index", "--add", "--cacheinfo", f"160000,{sha},vendor/sub")
    git(git_repo, "commit", "-q", "-m", "submodule")
    refused = cli("commit", "-b", "g", "--git", str(git_repo), repo=repo.path, status=8).stderr
    assert b"vendor/sub: is a gitlink" in refused and b"--skip-special" in refused
    skipped = cli("commit", "-b", "g", "--git", str(git_repo), "--skip-special", repo=repo.path).stderr
    assert b"skipped vendor/sub: a gitlink" in skipped
    root = Repository.open(repo.path).commit_of("g")[1].root_tree
    assert lookup(repo.objects, root, b"vendor/sub") is None
    assert lookup(repo.objects, root, b"vendor").kind is Kind.DIR  # type: ignore[union-attr]


def test_git_errors_are_messages(tmp_path, repo, git_repo):
    assert b"nope: git revision not found" in cli("commit", "-b", "g", "--git", str(git_repo), "--rev",
                                                  "nope", repo=repo.path, status=8).stderr
    (tmp_path / "plain").mkdir()
    assert b"not a git repository" in cli("commit", "-b", "g", "--git", str(tmp_path / "plain"),
                                          repo=repo.path, status=8).stderr
    blob = git(git_repo, "rev-parse", "HEAD:README").decode().strip()
    assert b"not a commit or tree" in cli("commit", "-b", "g", "--git", str(git_repo), "--rev", blob,
                                          repo=repo.path, status=8).stderr
    # A bare tree is fine; it records no git.commit.
    cli("commit", "-b", "t", "--git", str(git_repo), "--rev", "HEAD^{tree}", repo=repo.path)
    assert "git.commit" not in dict(Repository.open(repo.path).commit_of("t")[1].metadata)


# -- property: any tree survives dir -> GNU tar -> commit -> export -> commit ---------------

@needs_gnu_tar
@settings(max_examples=20)
@given(tree=trees, links=st.lists(st.tuples(st.integers(0, 50), names), max_size=2),
       timestamp=st.sampled_from([0, 1_700_000_000, -1, 1 << 34]))
def test_random_trees_round_trip_through_tar(tmp_path_factory, tree, links, timestamp):
    base = tmp_path_factory.mktemp("tar-rt")
    src = base / "src"
    src.mkdir()
    materialise(os.fsencode(src), tree, links)
    repo = Repository.init(str(base / "repo"))
    dir_tree = commit_dir_lib(repo, str(src), "dir")
    plain = subprocess.run([GNU_TAR, *GNU_TAR_XATTRS, "-C", str(src), "-cf", "-", "."], check=True,
                           capture_output=True).stdout
    assert commit_tar_lib(repo, plain, "tar", timestamp) == dir_tree
    exported = export_lib(repo, "tar")
    assert commit_tar_lib(repo, exported, "again", timestamp) == dir_tree
    assert export_lib(repo, "again") == exported
    assert repo.commit_of("again")[1].root_meta == repo.commit_of("dir")[1].root_meta


def test_tar_source_options_label_names_the_input(repo):
    with repo.writing() as tx, pytest.raises(SourceError, match="vendor.tar: not a valid tar stream"):
        read_tar(tx, io.BytesIO(b"junk" * 200), TarSourceOptions(label="vendor.tar"))


def test_large_members_stream_and_deep_paths(repo):
    big = bytes(range(256)) * (5 * 4096 + 7)  # above the in-memory limit: spooled, then streamed
    deep = "/".join(["d"] * 1100) + "/leaf"  # deeper than Python's recursion limit
    data = build_tar([(member("big.bin"), big), (member(deep), b"x")])
    tree = commit_tar_lib(repo, data, "big")
    entry = lookup(repo.objects, repo.commit_of("big")[1].root_tree, b"big.bin")
    assert entry is not None and entry.size == len(big)
    exported = export_lib(repo, "big", zstd_level=3)
    plain = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(exported)).read()
    assert commit_tar_lib(repo, exported, "again") == tree
    cut = plain[:len(plain) // 2]  # inside big.bin's data
    with repo.writing() as tx, pytest.raises(SourceError, match="tar stream"):
        read_tar(tx, io.BytesIO(zstandard.ZstdCompressor().compress(cut)))


def test_git_attributes_mode_matches_git_archive(tmp_path, repo, git_repo):
    """By default the blobs as committed; with attributes=True what `git archive` writes:
    export-ignore paths left out, eol conversion applied (the oracle is git archive)."""
    from store.source_git import GitSourceOptions, read_git  # noqa: PLC0415
    with repo.writing() as tx, pytest.raises(SourceError, match="is not UTF-8"):
        read_git(tx, str(git_repo), "main", GitSourceOptions(attributes=True))
    os.unlink(os.path.join(os.fsencode(git_repo), b"caf\xc3\xa9 \xff"))  # committed below
    (git_repo / ".gitattributes").write_text("*.bat eol=crlf\nnotes.txt export-ignore\n"
                                             "private export-ignore\n")
    (git_repo / "run.bat").write_bytes(b"@echo off\necho hi\n")
    (git_repo / "notes.txt").write_bytes(b"not shipped\n")
    (git_repo / "private").mkdir()
    (git_repo / "private" / "key").write_bytes(b"secret\n")
    git(git_repo, "add", "-A")
    git(git_repo, "commit", "-q", "-m", "attributes")
    (git_repo / ".gitattributes").write_text("*.bat -text\nnotes.txt -export-ignore\n")  # not committed

    trees = {}
    for attributes in (False, True):
        with repo.writing() as tx:
            result = read_git(tx, str(git_repo), "main", GitSourceOptions(attributes=attributes))
            finish_commit(repo, tx, f"a{int(attributes)}", result.tree, result.root_meta, timestamp=0)
        trees[attributes] = tar_index(export_lib(repo, f"a{int(attributes)}"))
    archive = tar_index(git(git_repo, "archive", "--format=tar", "main"))
    assert trees[True] == archive
    assert archive[b"run.bat"][1] == hashlib.sha256(b"@echo off\r\necho hi\r\n").hexdigest()
    assert b"notes.txt" not in archive and b"private" not in archive
    # The default: every blob as committed.
    assert trees[False][b"run.bat"][1] == hashlib.sha256(b"@echo off\necho hi\n").hexdigest()
    assert b"notes.txt" in trees[False] and b"private/key" in trees[False]
    with repo.writing() as tx, pytest.raises(SourceError, match="names a tree, not a commit"):
        read_git(tx, str(git_repo), "main^{tree}", GitSourceOptions(attributes=True))
