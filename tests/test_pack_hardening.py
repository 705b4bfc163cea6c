"""What the audit of issue 14 broke on the pack side, one test per defect: xattrs the kernel
refuses, zstd frames with a checksum, copies left by a killed import, an import whose last
step fails, and versions too long for ``int()``."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import struct
import subprocess
import sys

import pytest
import zstandard

from pack import freshness
from pack.importer import INCOMING_PREFIX, clean_incoming, freshness_path, import_pack, kept_pack_path
from pack.keys import Keyring, load_private_key
from pack.reader import PackReader
from pack.signature import sign_pack
from store.errors import DowngradeError, PackError, RefError
from store.ids import RawId
from store.inode_rules import ACL_ACCESS, ACL_DEFAULT, acl_problem, xattr_problem
from store.model import Entry, Kind, Meta
from store.refs import Refs
from store.repo import Repository
from tests.test_pack_support import (
    build_sample,
    craft,
    dir_entry,
    file_entry,
    keyring_dir,
    make_keys,
    row,
)

UNDEFINED = 0xFFFFFFFF


def acl(*entries: tuple[int, int, int], version: int = 2) -> bytes:
    return struct.pack("<I", version) + b"".join(struct.pack("<HHI", *e) for e in entries)


MINIMAL_ACL = acl((0x01, 6, UNDEFINED), (0x04, 4, UNDEFINED), (0x20, 4, UNDEFINED))
NAMED_ACL = acl((0x01, 7, UNDEFINED), (0x02, 6, 1000), (0x04, 5, UNDEFINED), (0x10, 7, UNDEFINED),
                (0x20, 5, UNDEFINED))


def write(tmp_path, data: bytes, name: str = "crafted.pack") -> str:
    path = str(tmp_path / name)
    with open(path, "wb") as handle:
        handle.write(data)
    return path


# -- xattrs the kernel refuses ------------------------------------------------------------------

@pytest.mark.parametrize("value,words", [
    (b"", "no version header"),
    (acl((0x01, 6, UNDEFINED), version=1), "version 1"),
    (MINIMAL_ACL + b"\0", "whole 8-byte entries"),
    (acl(), "without entries"),
    (acl((0x01, 8, UNDEFINED), (0x04, 4, UNDEFINED), (0x20, 4, UNDEFINED)), "outside rwx"),
    (acl((0x04, 4, UNDEFINED), (0x01, 6, UNDEFINED), (0x20, 4, UNDEFINED)), "tag 0x4"),
    (acl((0x01, 6, UNDEFINED), (0x40, 4, UNDEFINED)), "tag 0x40"),
    (acl((0x01, 6, UNDEFINED), (0x04, 4, UNDEFINED)), "lacks"),
    (acl((0x01, 6, UNDEFINED), (0x02, 6, 1000), (0x04, 4, UNDEFINED), (0x20, 4, UNDEFINED)), "MASK"),
    (acl((0x01, 6, UNDEFINED), (0x02, 6, UNDEFINED), (0x04, 4, UNDEFINED), (0x10, 6, UNDEFINED),
         (0x20, 4, UNDEFINED)), "no user or group"),
    (acl((0x01, 6, UNDEFINED), (0x04, 4, UNDEFINED), (0x20, 4, UNDEFINED), (0x20, 4, UNDEFINED)),
     "tag 0x20"),
])
def test_malformed_acls_are_refused(value, words):
    problem = acl_problem(value)
    assert problem is not None and words in problem


def test_acls_the_kernel_takes_are_accepted(tmp_path, needs_root):
    assert acl_problem(MINIMAL_ACL) is None and acl_problem(NAMED_ACL) is None
    # what the rules accept, Linux sets (on a filesystem with ACLs: tmp_path's)
    target = tmp_path / "f"
    target.write_bytes(b"")
    try:
        os.setxattr(target, ACL_ACCESS, NAMED_ACL)
    except OSError as err:
        if err.errno == errno.EOPNOTSUPP:
            pytest.skip("no POSIX ACLs on this filesystem")
        raise
    with pytest.raises(OSError):  # and what they refuse, Linux refuses
        os.setxattr(target, ACL_ACCESS, acl((0x01, 6, UNDEFINED), (0x04, 4, UNDEFINED)))


def test_kind_rules():
    assert xattr_problem(Kind.SYMLINK, b"user.x", b"") is not None
    assert xattr_problem(Kind.SYMLINK, b"trusted.x", b"") is None
    assert xattr_problem(Kind.FILE, b"user.x", b"") is None
    assert "symlink" in (xattr_problem(Kind.SYMLINK, ACL_ACCESS, MINIMAL_ACL) or "")
    assert "directory" in (xattr_problem(Kind.FILE, ACL_DEFAULT, MINIMAL_ACL) or "")
    assert xattr_problem(Kind.DIR, ACL_DEFAULT, MINIMAL_ACL) is None
    assert xattr_problem(Kind.FILE, b"user.", b"") is not None


def _pack_with(entry: Entry, parent: bytes = b"") -> bytes:
    if parent:
        top = dir_entry(parent, [entry])
        return craft([row(b"", top), row(parent, entry)], root=[top])
    return craft([row(b"", entry)], root=[entry])


@pytest.mark.parametrize("entry,words", [
    (Entry(b"link", Kind.SYMLINK, Meta(0o777, 0, 0, ((b"user.note", b"v"),)), target=b"x"),
     "user.* xattrs cannot be set on a symlink"),
    (file_entry(b"f", b"", Meta(0o644, 0, 0, ((ACL_ACCESS, b"\2\0\0\0junk"),))), "POSIX ACL"),
    (file_entry(b"f", b"", Meta(0o644, 0, 0, ((ACL_DEFAULT, MINIMAL_ACL),))), "only a directory"),
])
def test_pack_with_xattrs_linux_refuses_is_refused_naming_the_row(tmp_path, entry, words):
    path = write(tmp_path, _pack_with(entry, parent=b"etc\nfake"))
    with pytest.raises(PackError, match=words) as info:
        PackReader(path)
    message = str(info.value)
    assert message.startswith(f"{path}: manifest row etc\\x0afake/{entry.name.decode()}: xattr ")
    assert "\n" not in message and info.value.path == path and info.value.offset is not None


def test_pack_with_a_good_acl_reads(tmp_path):
    entry = file_entry(b"f", b"", Meta(0o644, 0, 0, ((ACL_ACCESS, NAMED_ACL),)))
    with PackReader(write(tmp_path, _pack_with(entry))) as reader:
        reader.check_data()


# -- zstd frames carry no checksum --------------------------------------------------------------

def test_a_frame_with_a_checksum_is_refused(tmp_path):
    f = file_entry(b"f", b"hi")
    rows = [row(b"", f)]
    manifest = b"".join(rows)
    frame = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(manifest)
    path = write(tmp_path, craft(rows, root=[f], data=b"hi",
                                 manifest_frames=[(frame, len(manifest))]))
    with pytest.raises(PackError, match="checksum"):
        PackReader(path)


# -- a killed import's copy ---------------------------------------------------------------------

@pytest.fixture
def signed(tmp_path):
    built = build_sample(str(tmp_path))
    keys = make_keys(str(tmp_path), "vendor")
    sign_pack(built.pack, load_private_key(keys["vendor"]))
    ring = keyring_dir(str(tmp_path), "ring", keys["vendor"])
    return built, ring


def _incoming(repo: Repository) -> list[str]:
    return sorted(n for n in os.listdir(repo.layout.packs) if n.startswith(INCOMING_PREFIX))


_KILLED_IMPORT = r"""
import os, sys, time
sys.path.insert(0, sys.argv[1])
import pack.importer as importer
from pack.keys import Keyring
from store.repo import Repository

def stuck(source, fd, path):
    os.write(fd, b"half a pack")
    print("copying", flush=True)
    time.sleep(600)

importer._copy_in = stuck
importer.import_pack(Repository.open(sys.argv[2]), sys.argv[3], Keyring.load(sys.argv[4]))
"""


def test_a_killed_import_leaves_a_copy_that_the_next_import_removes(tmp_path, signed, needs_root):
    built, ring = signed
    device = Repository.init(str(tmp_path / "device"))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child = subprocess.Popen([sys.executable, "-c", _KILLED_IMPORT, root, device.path, built.pack,
                              ring], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "copying\n"
        assert len(_incoming(device)) == 1
        assert clean_incoming(device) == 0  # the import still runs: its copy is not stale
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert len(_incoming(device)) == 1  # what the kill left
    import_pack(device, built.pack, Keyring.load(ring))
    assert _incoming(device) == []


def test_clean_incoming_removes_only_unlocked_copies(tmp_path, signed):
    built, ring = signed
    device = Repository.init(str(tmp_path / "device"))
    import_pack(device, built.pack, Keyring.load(ring))
    packs = device.layout.packs
    stale = os.path.join(packs, INCOMING_PREFIX + "stale.pack")
    busy = os.path.join(packs, INCOMING_PREFIX + "busy.pack")
    for path in (stale, busy):
        with open(path, "wb") as handle:
            handle.write(b"x")
    fd = os.open(busy, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert clean_incoming(device) == 1
        assert _incoming(device) == [os.path.basename(busy)]
    finally:
        os.close(fd)
    assert clean_incoming(device) == 1 and _incoming(device) == []
    assert clean_incoming(Repository.init(str(tmp_path / "fresh"))) == 0  # no packs/ yet


# -- a late failure changes nothing -------------------------------------------------------------

def _packs_state(repo: Repository) -> dict[str, bytes]:
    packs = repo.layout.packs
    if not os.path.isdir(packs):
        return {}
    out = {}
    for name in sorted(os.listdir(packs)):
        if name.endswith(".lock"):
            continue
        with open(os.path.join(packs, name), "rb") as handle:
            out[name] = handle.read()
    return out


def test_a_ref_that_cannot_take_the_commit_leaves_nothing(tmp_path, signed):
    built, ring = signed
    device = Repository.init(str(tmp_path / "device"))
    device.refs.update("os", RawId(bytes(32)), None)  # "os/main" cannot be written beside it
    with pytest.raises(RefError, match="conflicts"):
        import_pack(device, built.pack, Keyring.load(ring))
    assert _packs_state(device) == {}
    assert not os.path.exists(freshness_path(device))
    assert not os.path.exists(kept_pack_path(device, built.commit_id))


def test_a_failing_ref_write_undoes_the_kept_pack_and_the_freshness_record(tmp_path, signed,
                                                                              monkeypatch):
    built, ring = signed
    keyring = Keyring.load(ring)
    device = Repository.init(str(tmp_path / "device"))
    import_pack(device, built.pack, keyring)
    newer = build_sample(str(tmp_path), version="2")
    sign_pack(newer.pack, load_private_key(str(tmp_path / "vendor")))
    before = _packs_state(device)

    def fails(self, name, new, expected):
        raise OSError(errno.ENAMETOOLONG, "File name too long")

    monkeypatch.setattr(Refs, "update", fails)
    with pytest.raises(OSError):
        import_pack(device, newer.pack, keyring)
    assert _packs_state(device) == before  # no kept pack, signatures or freshness record
    assert freshness.load(freshness_path(device))["os/main"].version == "1"
    assert device.refs.read("os/main") == built.commit_id
    # A re-import of the pack kept already, failing late, keeps that pack and its signatures.
    with pytest.raises(OSError):
        import_pack(device, built.pack, keyring)
    assert _packs_state(device) == before


# -- versions of any length ---------------------------------------------------------------------

def test_versions_longer_than_int_allows_compare(tmp_path):
    huge = "1" + "0" * 5000
    older = freshness.Accepted("aa" * 32, huge, 5)
    newer = freshness.Accepted("bb" * 32, huge + "1", 1)
    assert freshness.is_acceptable(newer, older) and not freshness.is_acceptable(older, newer)
    assert freshness.version_key("9" * 4301) < freshness.version_key("1" + "0" * 4301)
    state = str(tmp_path / "freshness.json")
    freshness.record(state, "os/main", older)
    freshness.record(state, "os/main", newer)
    assert freshness.load(state)["os/main"] == newer
    with pytest.raises(DowngradeError, match="not newer"):
        freshness.check(state, "os/main", older)



def test_build_refuses_a_tree_a_reader_would_refuse(tmp_path):
    from pack.build import build_pack  # noqa: PLC0415
    from store.history import finish_commit  # noqa: PLC0415

    repo = Repository.init(str(tmp_path / "repo"))
    link = Entry(b"link", Kind.SYMLINK, Meta(0o777, 0, 0, ((b"user.note", b"v"),)), target=b"x")
    with repo.writing() as tx:
        tree = tx.add_tree([link])
        commit = finish_commit(repo, tx, "main", tree, Meta(0o755, 0, 0), timestamp=1)
    out = tmp_path / "x.pack"
    with pytest.raises(PackError, match="manifest row link: xattr user.note: .*symlink"):
        build_pack(repo, commit, "main", str(out))
    assert not out.exists()


def test_unpack_errors_name_the_file_not_a_descriptor(tmp_path, needs_root):
    from pack.unpack import TreeWriter  # noqa: PLC0415

    target = tmp_path / "t"
    target.mkdir()
    with pytest.raises(OSError) as info, TreeWriter(str(target)) as tree:
        tree.symlink(b"l", b"x", Meta(0o777, 0, 0, ((b"user.x", b"v"),)))
    assert info.value.filename == str(target / "l") and info.value.errno == errno.EPERM
    (tmp_path / "u").mkdir()
    bad_acl = ((ACL_ACCESS, acl((0x01, 6, UNDEFINED), (0x04, 4, UNDEFINED))),)
    with pytest.raises(OSError) as info, TreeWriter(str(tmp_path / "u")) as tree:
        tree.write_file(b"f", b"", Meta(0o644, 0, 0, bad_acl))
    assert info.value.filename == str(tmp_path / "u" / "f")
