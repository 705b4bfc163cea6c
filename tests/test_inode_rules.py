"""Metadata Linux cannot give an inode as recorded is refused at commit and at pack read."""

from __future__ import annotations

import io
import tarfile

import pytest

from store.errors import SourceError
from store.inode_rules import NO_ID, meta_problem
from store.model import Kind, Meta
from tests.helpers import run_cli


@pytest.mark.parametrize("uid, gid", [(NO_ID, 0), (0, NO_ID)])
def test_the_unchanged_id_is_no_id(uid, gid):
    problem = meta_problem(Kind.FILE, Meta(0o644, uid, gid, ()))
    assert problem is not None and "chown" in problem
    assert meta_problem(Kind.FILE, Meta(0o644, NO_ID - 1, 0, ())) is None


def _tar_with_owner(uid: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("f")
        info.size, info.uid = 1, uid
        tar.addfile(info, io.BytesIO(b"x"))
    return buf.getvalue()


def test_commit_refuses_owner_minus_one(tmp_path, repo):
    archive = tmp_path / "owner.tar"
    archive.write_bytes(_tar_with_owner(NO_ID))
    proc = run_cli("commit", "-b", "main", "--tar", str(archive), repo=repo.path, check=False)
    assert proc.returncode == SourceError.exit_code, proc.stderr
    assert "f: uid 4294967295" in proc.stderr
    assert repo.refs.read("main") is None


def test_commit_accepts_the_largest_real_owner(tmp_path, repo):
    archive = tmp_path / "owner.tar"
    archive.write_bytes(_tar_with_owner(NO_ID - 1))
    run_cli("commit", "-b", "main", "--tar", str(archive), repo=repo.path)


@pytest.mark.parametrize("value, ok", [
    (b"\x00\x00\x00\x02" + bytes(16), True),  # revision 2, 20 bytes
    ((0x02000001).to_bytes(4, "little") + bytes(16), True),  # effective flag set
    ((0x03000000).to_bytes(4, "little") + bytes(16) + (1000).to_bytes(4, "little"), True),
    ((0x03000000).to_bytes(4, "little") + bytes(20), False),  # root id 0: stored as revision 2
    ((0x02000000).to_bytes(4, "little") + bytes(8), False),  # wrong size
    ((0x01000000).to_bytes(4, "little") + bytes(8), False),  # revision 1 is not set any more
    (b"\xa7\xa2G\xe9", False),  # what the fuzzer found: a deploy that failed with EINVAL
])
def test_file_capabilities_as_the_kernel_takes_them(value, ok, tmp_path):
    problem = meta_problem(Kind.FILE, Meta(0o755, 0, 0, ((b"security.capability", value),)))
    assert (problem is None) == ok, problem
    # The kernel agrees (root only: setting security.capability needs CAP_SETFCAP).
    import os

    from store import xattrs
    if os.geteuid() != 0:
        return
    target = tmp_path / "f"
    target.write_bytes(b"")
    try:
        xattrs.write(os.fsencode(target), ((b"security.capability", value),))
        stored = dict(xattrs.read(os.fsencode(target))).get(b"security.capability")
    except OSError:
        stored = None
    assert (stored == value) == ok
