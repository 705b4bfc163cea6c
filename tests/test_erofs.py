"""store/erofs.py: images built from Node trees, checked by fsck.erofs and mounted by the
real kernel, compared field by field with the tree that was asked for; the same tree gives
the same bytes; what the format cannot hold is refused; a stub in the image reads its data
from a data-only overlay layer."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import struct
import subprocess
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.erofs_write import load as load_stub_tree
from overlay import mounts
from overlay.metacopy import METACOPY_XATTR, REDIRECT_XATTR, metacopy_value
from store import erofs
from store.erofs import DIR, FILE, SYMLINK, ImageError, Node, image_bytes, write_image
from store.fsverity import digest_fd
from store.names import show
from tests.mount_guard import mount_free_dir

pytestmark = pytest.mark.usefixtures("needs_root", "erofs_kernel")

GiB = 1 << 30
ACL_UNDEFINED_ID = 0xFFFFFFFF


@pytest.fixture(scope="session")
def erofs_kernel() -> None:
    with open("/proc/filesystems") as handle:
        if "erofs" not in handle.read().split():
            pytest.skip("the running kernel has no EROFS (CONFIG_EROFS_FS)")
    if shutil.which("fsck.erofs") is None:
        pytest.skip("fsck.erofs (Debian package erofs-utils) is not installed; scripts/setup installs it")


@pytest.fixture
def where(tmp_path):  # type: ignore[no-untyped-def]
    yield from mount_free_dir(tmp_path, "mnt")


def _mount_erofs(image: str, target: str) -> None:
    """mount(2) of the image file itself (Linux 6.12+); a loop device before that."""
    try:
        mounts.mount(image, target, "erofs", mounts.MS_RDONLY)
    except OSError as err:
        if err.errno not in (errno.ENOTBLK, errno.EINVAL):
            raise
        subprocess.run(["mount", "-t", "erofs", "-o", "ro,loop", image, target], check=True)


def fsck(image: str, extract: str | None = None) -> None:
    """fsck.erofs: the structure, and (--extract) every file's data decoded; into
    ``extract`` when given."""
    option = "--extract" if extract is None else f"--extract={extract}"
    done = subprocess.run(["fsck.erofs", option, image], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@contextlib.contextmanager
def mounted(root: Node, where: str) -> Iterator[str]:
    """The image of ``root``, checked by fsck.erofs, mounted read-only on ``where``."""
    image = where + ".erofs"
    with open(image, "wb") as out:
        size = write_image(root, out)
    assert size == os.path.getsize(image) and size % 4096 == 0
    fsck(image)
    with mounts.Mounted(where, lambda: _mount_erofs(image, where)):
        yield where
    os.unlink(image)


# -- what the tree asks for, what the mount shows ------------------------------------------

_IFMT = {DIR: stat.S_IFDIR, FILE: stat.S_IFREG, SYMLINK: stat.S_IFLNK}
SAMPLE = 1 << 20  # files larger than this are compared at a few offsets, not read whole


def _content(node: Node) -> tuple[int, bytes]:
    if node.kind == FILE and node.size is not None:
        size = node.size
        return size, (bytes(size) if size <= SAMPLE else b"sampled zeros")
    return len(node.data), node.data


def expected(root: Node) -> tuple[dict[bytes, tuple[object, ...]], list[set[bytes]]]:
    """Every path of the tree: (st_mode, uid, gid, nlink, size, xattrs, content or target);
    the hardlink groups (paths sharing a Node)."""
    out: dict[bytes, tuple[object, ...]] = {}
    names: dict[int, set[bytes]] = {}
    nlinks: dict[int, int] = {}
    stack = [(b".", root)]
    while stack:
        path, node = stack.pop()
        names.setdefault(id(node), set()).add(path)
        if node.kind == DIR:
            for name, child in node.entries.items():
                stack.append((path + b"/" + name, child))
    for node_id, path_set in names.items():
        nlinks[node_id] = len(path_set)
    stack = [(b".", root)]
    seen: set[bytes] = set()
    while stack:
        path, node = stack.pop()
        if path in seen:
            continue
        seen.add(path)
        if node.kind == DIR:
            nlink = 2 + sum(1 for c in node.entries.values() if c.kind == DIR)
            size, content = 0, b""
            stack.extend((path + b"/" + n, c) for n, c in node.entries.items())
        else:
            nlink = nlinks[id(node)]
            size, content = _content(node)
        out[path] = (_IFMT[node.kind] | node.mode, node.uid, node.gid, nlink,
                     size if node.kind != DIR else None, dict(node.xattrs), content)
    groups = [g for g in names.values() if len(g) > 1]
    return out, groups


def observed(root: str) -> tuple[dict[bytes, tuple[object, ...]], list[set[bytes]]]:
    out: dict[bytes, tuple[object, ...]] = {}
    inodes: dict[int, set[bytes]] = {}
    base = os.fsencode(root)
    stack = [b"."]
    while stack:
        rel = stack.pop()
        path = os.path.join(base, rel)
        st = os.lstat(path)
        xattrs = {os.fsencode(n): os.getxattr(path, n, follow_symlinks=False)
                  for n in os.listxattr(path, follow_symlinks=False)}
        if stat.S_ISDIR(st.st_mode):
            size: int | None = None
            content = b""
            stack.extend(rel + b"/" + n for n in os.listdir(path))
        elif stat.S_ISLNK(st.st_mode):
            size, content = st.st_size, os.readlink(path)
        else:
            size = st.st_size
            with open(path, "rb") as handle:
                if size <= SAMPLE:
                    content = handle.read()
                else:
                    offsets = (0, size // 2, size - 4096)
                    assert all(os.pread(handle.fileno(), 4096, o) == bytes(4096) for o in offsets)
                    content = b"sampled zeros"
        out[rel] = (st.st_mode, st.st_uid, st.st_gid, st.st_nlink, size, xattrs, content)
        inodes.setdefault(st.st_ino, set()).add(rel)
    groups = [g for g in inodes.values() if len(g) > 1]
    return out, groups


def assert_image_shows(root: Node, where: str) -> None:
    """Mount the image of ``root`` and compare every path, field by field."""
    want, want_groups = expected(root)
    with mounted(root, where):
        got, got_groups = observed(where)
        # The mount point's "..": the directory the image is mounted on, not the image's.
        assert os.stat(os.path.join(where, ".")).st_ino == os.lstat(where).st_ino
    assert want.keys() == got.keys(), sorted(want.keys() ^ got.keys())
    for path in want:
        assert want[path] == got[path], (path, want[path], got[path])
    assert sorted(map(sorted, want_groups)) == sorted(map(sorted, got_groups))


def acl(*entries: tuple[int, int, int]) -> bytes:
    """A POSIX ACL in the kernel's xattr format (``posix_acl_xattr_header``, version 2)."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


ACCESS_ACL = acl((0x01, 7, ACL_UNDEFINED_ID), (0x02, 5, 1000), (0x02, 4, 70000),
                 (0x04, 5, ACL_UNDEFINED_ID), (0x08, 1, 100), (0x10, 5, ACL_UNDEFINED_ID),
                 (0x20, 4, ACL_UNDEFINED_ID))
DEFAULT_ACL = acl((0x01, 7, ACL_UNDEFINED_ID), (0x04, 5, ACL_UNDEFINED_ID), (0x20, 0, ACL_UNDEFINED_ID))
CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_bind_service


def _sample_tree() -> Node:
    shared = Node(FILE, 0o755, 0, 0, data=b"#!/bin/sh\necho shared\n")
    stub_shared = Node(FILE, 0o644, 1, 2, size=12345,
                       xattrs=((REDIRECT_XATTR, b"/ab/" + b"c" * 62 + b".file"),
                               (METACOPY_XATTR, metacopy_value(bytes(range(32))))))
    return Node(DIR, 0o755, entries={
        b"bin": Node(DIR, 0o755, entries={
            b"su": Node(FILE, 0o4755, data=b"\x7fELF" + bytes(200)),
            b"wall": Node(FILE, 0o2755, 0, 5, data=b"wall"),
            b"ping": Node(FILE, 0o755, data=b"ping", xattrs=((b"security.capability", CAPABILITY),)),
            b"sh": shared,
            b"dash": shared,
            b"bash": Node(SYMLINK, 0o777, data=b"dash"),
        }),
        b"tmp": Node(DIR, 0o1777),
        b"srv": Node(DIR, 0o2770, 70000, 80000, xattrs=(
            (b"system.posix_acl_default", DEFAULT_ACL), (b"system.posix_acl_access", ACCESS_ACL))),
        b"etc": Node(DIR, 0o755, entries={
            b"sh-again": shared,
            b"acl": Node(FILE, 0o640, 0, 0, data=b"acl\n",
                         xattrs=((b"system.posix_acl_access", ACCESS_ACL),)),
            b"user": Node(FILE, 0o600, 4294967294, 65536, data=b"",
                          xattrs=((b"user.mime_type", b"text/plain"), (b"user.empty", b""),
                                  (b"trusted.sealtree", b"\0\xff" * 100),
                                  (b"security.selinux", b"system_u:object_r:etc_t:s0\0"))),
            b"long-link": Node(SYMLINK, 0o777, data=b"/" + b"t" * 4094),
            b"\xff\xfe odd\nname": Node(FILE, 0o444, data=b"odd"),
            b"n" * 255: Node(FILE, 0o644, data=b"long name"),
        }),
        b"usr": Node(DIR, 0o755, entries={
            b"stub": stub_shared,
            b"stub-link": stub_shared,
            b"huge": Node(FILE, 0o644, size=5 * GiB),  # >= 4 GiB: an extended inode
            b"beyond-one-chunk": Node(FILE, 0o644, size=(1 << 44) + 1),  # 3 chunks of 8 TiB
            b"one-byte-stub": Node(FILE, 0o644, size=1),
            b"empty-stub": Node(FILE, 0o644, size=0),
        }),
    })


def test_a_tree_reads_back_field_by_field(where):
    """Types, modes with setuid/setgid/sticky, owners above 65535, every xattr prefix,
    POSIX ACLs, symlinks up to 4095 bytes, hardlinks within and across directories, odd
    names, stubs of every size (read from the image itself: zeros)."""
    assert_image_shows(_sample_tree(), where)


def test_erofs_utils_read_the_same_tree(tmp_path):
    """A second reader: fsck.erofs extracts the image (erofs-utils 1.5: no xattrs, a
    sparse file extracted empty, setuid/setgid lost) with the same types, modes, owners,
    bytes and targets."""
    tree = _sample_tree()
    image = tmp_path / "image.erofs"
    image.write_bytes(image_bytes(tree))
    fsck(str(image), extract=str(tmp_path / "x"))
    want, _ = expected(tree)
    base = os.fsencode(tmp_path / "x")
    for path, (mode, uid, gid, _nlink, size, _xattrs, content) in want.items():
        full = os.path.join(base, path)
        st = os.lstat(full)
        # setuid/setgid: erofs-utils 1.5 chowns after chmod, which clears them
        assert (st.st_mode | 0o6000, st.st_uid, st.st_gid) == (mode | 0o6000, uid, gid), path
        if stat.S_ISLNK(st.st_mode):
            assert os.readlink(full) == content
        elif stat.S_ISREG(st.st_mode) and not path.startswith(b"./usr/"):  # not the stubs
            with open(full, "rb") as handle:
                assert handle.read() == content
            assert st.st_size == size


def test_posix_acls_are_the_kernels(where):
    """The ACL xattrs are the kernel's own: getxattr gives back the stored entries in the
    xattr format, and an ACL the kernel rejects would show as an error here."""
    with mounted(_sample_tree(), where):
        assert os.getxattr(os.path.join(where, "etc/acl"), "system.posix_acl_access") == ACCESS_ACL
        assert os.getxattr(os.path.join(where, "srv"), "system.posix_acl_default") == DEFAULT_ACL


@pytest.mark.parametrize("size", [0, 1, 100, 4064, 4065, 4095, 4096, 4097, 8191, 8192, 8193,
                                  100 * 1024, 100 * 1024 + 1, 1 << 20])
def test_files_of_every_size_around_blocks(where, size):
    """Whole blocks and a tail: inline after the inode where it fits, in a block of its own
    where inode + xattrs + tail do not; next to each other so tails share blocks."""
    data = hashlib.shake_256(str(size).encode()).digest(size) if size else b""
    big_xattr = ((b"user.big", b"v" * 3000),)
    entries = {b"plain": Node(FILE, 0o644, data=data),
               b"with-xattrs": Node(FILE, 0o644, data=data, xattrs=big_xattr)}
    for i in range(5):  # many tails in a row: placement across metadata blocks
        entries[b"tail%d" % i] = Node(FILE, 0o644, data=data[: size - i] if size > i else data)
    assert_image_shows(Node(DIR, 0o755, entries=entries), where)


def _varied_names(count: int) -> list[bytes]:
    names = []
    for i in range(count):
        length = 1 + (i * 37) % 255
        stem = b"%d-" % i
        names.append((stem + hashlib.sha256(stem).hexdigest().encode() * 4)[:max(length, len(stem))])
    return names


def test_a_directory_of_2000_names_spans_blocks_and_every_name_is_found(where):
    names = _varied_names(2000)
    names += [b"!", b"+", b"-", b".-", b"..a", b"\x01", b"\xff" * 255]  # around "." and ".."
    root = Node(DIR, 0o755, entries={b"d": Node(DIR, 0o700, entries={
        n: Node(DIR if i % 7 == 0 else FILE, 0o644, data=b"" if i % 7 == 0 else n[:9])
        for i, n in enumerate(names)})})
    with mounted(root, where):
        d = os.path.join(os.fsencode(where), b"d")
        assert os.lstat(d).st_size > 20 * 4096
        assert sorted(os.listdir(d)) == sorted(names)
        with os.scandir(d) as it:
            assert sorted(e.name for e in it) == sorted(names)
        for i, name in enumerate(names):  # a lookup each: the kernel's binary search
            st = os.lstat(os.path.join(d, name))
            assert stat.S_ISDIR(st.st_mode) == (i % 7 == 0)
        for missing in (b"0", b"zzz", b"\xff" * 254, b"1-x", b"x"):
            if missing not in names:
                with pytest.raises(FileNotFoundError):
                    os.lstat(os.path.join(d, missing))
        assert os.lstat(d).st_nlink == 2 + sum(1 for i in range(len(names)) if i % 7 == 0)
    assert_image_shows(root, where)


def test_more_than_65535_links_take_an_extended_inode(where):
    target = Node(FILE, 0o644, data=b"linked")
    count = 65536 + 10
    root = Node(DIR, 0o755, entries={b"%x" % i: target for i in range(count)})
    with mounted(root, where):
        st = os.lstat(os.path.join(where, "0"))
        assert st.st_nlink == count
        assert os.lstat(os.path.join(where, "%x" % (count - 1))).st_ino == st.st_ino


def test_a_stub_read_from_the_image_is_holes(where):
    """A stub has no data in the image: its size is stat's, every byte read is zero."""
    root = Node(DIR, 0o755, entries={b"stub": Node(FILE, 0o600, size=3 * 4096 + 5)})
    image = image_bytes(root)
    assert len(image) == 4096  # superblock, the root, the stub's inode and chunk map: one block
    with mounted(root, where), open(os.path.join(where, "stub"), "rb") as handle:
        assert handle.read() == bytes(3 * 4096 + 5)


def _inode_at(image: bytes, nid: int) -> tuple[int, int, int]:
    """(i_format, i_xattr_icount, i_size) of the compact inode ``nid``."""
    fmt, icount, _mode, _nlink, size = struct.unpack_from("<HHHHI", image, nid * 32)
    assert fmt & 1 == 0
    return fmt, icount, size


@pytest.mark.parametrize("length", range(1, 70))
def test_a_directory_tail_is_followed_by_a_zero_byte(length):
    """The kernel's lookup may read a block's last name up to a NUL or the block's end
    (not the directory's size): after an inline directory tail comes a zero byte, never the
    next inode (which starts with a non-zero i_format for an inline file)."""
    name = b"y" * length
    image = image_bytes(Node(DIR, 0o755, entries={
        b"d": Node(DIR, 0o755, entries={name: Node(FILE, 0o644, data=b"inline")})}))
    root_nid = struct.unpack_from("<H", image, 1024 + 14)[0]
    fmt, icount, size = _inode_at(image, root_nid)
    assert fmt >> 1 == erofs.FLAT_INLINE and icount == 0
    root_dir = image[root_nid * 32 + 32:root_nid * 32 + 32 + size]
    d_nid = next(nid for nid, off, _t in struct.iter_unpack("<QHBx", root_dir[:36])
                 if root_dir[off:off + 1] == b"d")
    fmt, icount, size = _inode_at(image, d_nid)
    assert fmt >> 1 == erofs.FLAT_INLINE and icount == 0 and size == 36 + 3 + length
    end = d_nid * 32 + 32 + size
    assert image[end - length:end] == name
    assert end % 4096 == 0 or image[end] == 0


# -- determinism ---------------------------------------------------------------------------

def _reordered(node: Node, memo: dict[int, Node]) -> Node:
    """The same tree, built again with every directory's entries inserted in reverse."""
    if id(node) in memo:
        return memo[id(node)]
    copy = Node(node.kind, node.mode, node.uid, node.gid, tuple(reversed(node.xattrs)),
                node.data, node.size)
    memo[id(node)] = copy
    copy.entries = {n: _reordered(node.entries[n], memo) for n in reversed(list(node.entries))}
    return copy


def test_the_same_tree_gives_the_same_bytes():
    tree = _sample_tree()
    first = image_bytes(tree)
    assert image_bytes(tree) == first
    assert image_bytes(_reordered(tree, {})) == first
    # No timestamp, uuid or other varying field: the superblock of a build is fixed.
    assert first[1024 + 24:1024 + 36] == bytes(12)  # epoch, fixed_nsec
    assert first[1024 + 48:1024 + 80] == bytes(32)  # uuid, volume name


def test_the_recipe_is_pinned():
    """The image of a fixed tree, byte for byte: a pack signs its image's digest, so any
    change of the writer's output is a new recipe (docs/FORMAT.md, section 19)."""
    assert hashlib.sha256(image_bytes(_sample_tree())).hexdigest() == GOLDEN_SAMPLE_SHA256


def _packed_tree() -> Node:
    """Files whose records leave rests of blocks that later, smaller ones fill."""
    sizes = [(i * 1237) % 3900 + 1 for i in range(120)]
    return Node(DIR, 0o755, entries={
        b"%03d" % i: Node(FILE, 0o644, data=bytes([i]) * size) for i, size in enumerate(sizes)})


def test_the_placement_is_pinned(where):
    image = image_bytes(_packed_tree())
    assert hashlib.sha256(image).hexdigest() == GOLDEN_PACKED_SHA256
    assert_image_shows(_packed_tree(), where)


GOLDEN_PACKED_SHA256 = "eb72b53a2fa25f42254e776405dfa62fd662b0f23adfbe1bc0d70680347f0146"
GOLDEN_SAMPLE_SHA256 = "ed0eb4f2621fbc54b75ffd3b9a0d6616dee2a70c5d711a40ebe3a3fb5d8fd413"


# -- refusals ------------------------------------------------------------------------------

def _in_root(name: bytes, node: Node) -> Node:
    return Node(DIR, 0o755, entries={b"d": Node(DIR, 0o755, entries={name: node})})


_FILE = Node(FILE, 0o644, data=b"x")
_loop = Node(DIR, 0o755)
_loop.entries[b"again"] = _loop
_twice = Node(DIR, 0o755)


@pytest.mark.parametrize("root, path, words", [
    (Node(FILE, 0o644), b"/", "root"),
    (_in_root(b"", _FILE), b"/d", "cannot be"),
    (_in_root(b".", _FILE), b"/d", "cannot be"),
    (_in_root(b"..", _FILE), b"/d", "cannot be"),
    (_in_root(b"a/b", _FILE), b"/d/a/b", "'/'"),
    (_in_root(b"a\0b", _FILE), b"/d/a\0b", "NUL"),
    (_in_root(b"n" * 256, _FILE), b"/d/" + b"n" * 256, "too long (256, at most 255)"),
    (_in_root(b"f", Node(FILE, 0o10644)), b"/d/f", "permission bits"),
    (_in_root(b"f", Node(FILE, 0o644, uid=1 << 32)), b"/d/f", "owner"),
    (_in_root(b"f", Node(FILE, 0o644, gid=-1)), b"/d/f", "owner"),
    (_in_root(b"f", Node(FILE, 0o644, xattrs=((b"os2.x", b""),))), b"/d/f", "prefix"),
    (_in_root(b"f", Node(FILE, 0o644, xattrs=((b"system.foo", b""),))), b"/d/f", "prefix"),
    (_in_root(b"f", Node(FILE, 0o644, xattrs=((b"user.", b""),))), b"/d/f", "bare prefix"),
    (_in_root(b"f", Node(FILE, 0o644, xattrs=((b"user.a", b""), (b"user.a", b"")))), b"/d/f", "twice"),
    (_in_root(b"f", Node(FILE, 0o644, xattrs=((b"user." + b"x" * 256, b""),))), b"/d/f", "too long"),
    (_in_root(b"f", Node(FILE, 0o644, xattrs=((b"user.x", bytes(4060)),))), b"/d/f", "do not fit"),
    (_in_root(b"f", Node(FILE, 0o644, xattrs=((b"user.x", bytes(70000)),))), b"/d/f", "too large"),
    (_in_root(b"l", Node(SYMLINK, 0o777, data=b"t" * 4096)), b"/d/l", "4095"),
    (_in_root(b"l", Node(SYMLINK, 0o777, data=b"")), b"/d/l", "empty"),
    (_in_root(b"l", Node(SYMLINK, 0o777, data=b"a\0b")), b"/d/l", "NUL"),
    (_in_root(b"f", Node(FILE, 0o644, data=b"x", size=1)), b"/d/f", "sparse file has data"),
    (_in_root(b"f", Node(FILE, 0o644, size=-1)), b"/d/f", "negative"),
    (_in_root(b"f", Node(FILE, 0o644, size=1 << 63)), b"/d/f", "too large"),
    (_in_root(b"f", Node(FILE, 0o644, size=(1 << 62) + 1)), b"/d/f", "chunk map"),
    (_in_root(b"f", Node(FILE, 0o644, entries={b"x": _FILE})), b"/d/f", "only a directory"),
    (_in_root(b"s", Node(DIR, 0o755, data=b"x")), b"/d/s", "directory has data"),
    (Node(DIR, 0o755, entries={b"again": _loop}), b"/again/again", "two names"),
    (Node(DIR, 0o755, entries={b"a": _twice, b"b": _twice}), b"/b", "two names"),
])
def test_what_the_format_cannot_hold_is_refused(root, path, words):
    with pytest.raises(ImageError) as caught:
        image_bytes(root)
    assert caught.value.path == path
    assert words in str(caught.value)
    assert str(caught.value).startswith(show(path) + ": ")


def test_a_block_count_beyond_u32_is_refused(monkeypatch):
    """2^32 blocks are 16 TiB of data: the limit is checked before any allocation."""
    monkeypatch.setattr(erofs, "U32", 3)
    with pytest.raises(ImageError) as caught:
        image_bytes(Node(DIR, 0o755, entries={b"f": Node(FILE, 0o644, data=bytes(4 * 4096))}))
    assert caught.value.path == b"/" and caught.value.limit == 3


# -- random trees --------------------------------------------------------------------------

_names = st.one_of(st.sampled_from([b"a", b"b", b"-", b"+x", b".hidden", b"\xff", b"z" * 255, b"n\nl"]),
                   st.binary(min_size=1, max_size=40).filter(lambda n: b"/" not in n and b"\0" not in n
                                                             and n not in (b".", b"..")))
# Not security.capability: the kernel parses it on getxattr (a random value is EINVAL on
# any filesystem); the fixed tree above carries a real one.
_xattr_names = st.sampled_from([b"user.a", b"user.bb", b"trusted.overlay.redirect", b"trusted.x",
                                b"security.selinux", b"security.ima"])
_xattrs = st.dictionaries(_xattr_names, st.binary(max_size=300), max_size=3).map(
    lambda d: tuple(d.items()))
_owner = st.sampled_from([0, 1, 1000, 65535, 65536, 100000, 4294967294])
_mode = st.integers(0, 0o7777)
_sizes = st.sampled_from([0, 1, 31, 4000, 4064, 4095, 4096, 4097, 9000])


@st.composite
def _trees(draw: st.DrawFn) -> Node:
    files: list[Node] = []

    def leaf() -> Node:
        kind = draw(st.sampled_from([FILE, FILE, FILE, SYMLINK, "stub", "link"]))
        if kind == "link" and files:
            return draw(st.sampled_from(files))
        xattrs = draw(_xattrs)
        if kind == SYMLINK:  # no user.* on a symlink (Linux: ENODATA/EPERM, store.inode_rules)
            xattrs = tuple((n, v) for n, v in xattrs if not n.startswith(b"user."))
            return Node(SYMLINK, 0o777, draw(_owner), draw(_owner), xattrs,
                        draw(st.binary(min_size=1, max_size=200).filter(lambda t: b"\0" not in t)))
        if kind == "stub":
            node = Node(FILE, draw(_mode), draw(_owner), draw(_owner), xattrs,
                        size=draw(st.sampled_from([1, 4096, 70000, 5 * GiB])))
        else:
            size = draw(_sizes)
            node = Node(FILE, draw(_mode), draw(_owner), draw(_owner), xattrs,
                        data=bytes([size % 251]) * size)
        files.append(node)
        return node

    def directory(depth: int) -> Node:
        node = Node(DIR, draw(_mode) | 0o700, draw(_owner), draw(_owner), draw(_xattrs))
        for name in draw(st.lists(_names, max_size=6, unique=True)):
            node.entries[name] = directory(depth + 1) if depth < 3 and draw(st.booleans()) else leaf()
        return node

    return directory(0)


@settings(max_examples=30)
@given(tree=_trees())
def test_random_trees_mount_as_built(tmp_path_factory, tree):
    where = str(tmp_path_factory.mktemp("erofs") / "mnt")
    os.mkdir(where)
    assert_image_shows(tree, where)
    assert image_bytes(_reordered(tree, {})) == image_bytes(tree)


# -- a real tree -------------------------------------------------------------------------

def test_debian_minbase_as_the_metacopy_layout_holds_it(minbase, where):
    """minbase's image (small files inline, large ones stubs with two overlay xattrs):
    every path as asked for, and every inline file's bytes those of the tree."""
    tree = load_stub_tree(os.fsencode(minbase))
    assert_image_shows(tree, where)


# -- a stub through overlayfs --------------------------------------------------------------

def test_a_stub_shows_its_data_layers_bytes_through_overlayfs(tmp_path, where):
    """The image as the overlay's lower layer over a data-only layer: a stub carrying
    trusted.overlay.redirect and trusted.overlay.metacopy reads the data file's bytes
    (verity=off: this host has no fs-verity; the redirect and metacopy encoding is the
    point here)."""
    data_dir = tmp_path / "data"
    (data_dir / "ab").mkdir(parents=True)
    content = hashlib.shake_256(b"object").digest(300_000)
    obj = data_dir / "ab" / "object.file"
    obj.write_bytes(content)
    with open(obj, "rb") as handle:
        digest, _ = digest_fd(handle.fileno())
    stub_xattrs = ((REDIRECT_XATTR, b"/ab/object.file"), (METACOPY_XATTR, metacopy_value(digest)))
    root = Node(DIR, 0o755, entries={
        b"usr": Node(DIR, 0o755, entries={
            b"big": Node(FILE, 0o4750, 0, 70000, stub_xattrs, size=len(content)),
            b"small": Node(FILE, 0o644, data=b"inline"),
        })})
    image_mnt = tmp_path / "image"
    image_mnt.mkdir()
    with mounted(root, str(image_mnt)):
        spec = mounts.OverlaySpec(lowers=[str(image_mnt)], data=[str(data_dir)], verity="off")
        with mounts.overlay(where, spec):
            big = os.path.join(where, "usr", "big")
            st = os.lstat(big)
            assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size) == \
                (0o4750, 0, 70000, len(content))
            with open(big, "rb") as handle:
                assert handle.read() == content
            with open(os.path.join(where, "usr", "small"), "rb") as handle:
                assert handle.read() == b"inline"
