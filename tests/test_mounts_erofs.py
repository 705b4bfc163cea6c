"""``overlay.mounts.erofs``: an EROFS image file mounted read-only, by the file itself (this
host's 6.18 has file-backed erofs mounts) and through a loop device (forced here; the path
taken on kernels before 6.12), with real mounts."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from overlay import mounts
from store import erofs

pytestmark = pytest.mark.usefixtures("needs_root")


def _image(path: str) -> str:
    root = erofs.Node(erofs.DIR, 0o755, entries={
        b"hello": erofs.Node(erofs.FILE, 0o4755, 0, 0, data=b"hello\n"),
        b"link": erofs.Node(erofs.SYMLINK, 0o777, data=b"hello"),
        b"sub": erofs.Node(erofs.DIR, 0o700, 5, 6),
    })
    with open(path, "wb") as out:
        erofs.write_image(root, out)
    return path


def _loop_devices_over(image: str) -> list[str]:
    """The loop devices whose backing file is ``image`` (sysfs)."""
    found = []
    for name in os.listdir("/sys/block"):
        backing = os.path.join("/sys/block", name, "loop", "backing_file")
        try:
            with open(backing) as handle:
                if handle.read().strip() == os.path.realpath(image):
                    found.append(name)
        except OSError:
            continue
    return found


@pytest.mark.parametrize("loop", [False, True], ids=["file", "loop"])
def test_erofs_mounts_read_only_and_leaves_nothing(tmp_path, loop):
    image = _image(str(tmp_path / "img.erofs"))
    target = tmp_path / "mnt"
    target.mkdir()
    with mounts.erofs(image, target, loop=loop) as where:
        info = mounts.is_mount_point(where)
        assert info is not None and info.fstype == "erofs"
        assert "ro" in info.options.split(",") and "nodev" in info.options.split(",")
        assert "nosuid" not in info.options.split(",")  # set-ID binaries of the tree must work
        if loop:
            assert info.source.startswith(b"/dev/loop")
            assert _loop_devices_over(image)
        else:
            assert info.source == os.fsencode(image)
        assert (target / "hello").read_bytes() == b"hello\n"
        assert stat.S_IMODE(os.lstat(target / "hello").st_mode) == 0o4755
        assert os.readlink(target / "link") == "hello"
        st = os.lstat(target / "sub")
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (5, 6, 0o700)
        with pytest.raises(OSError) as err:
            (target / "new").write_bytes(b"x")
        assert err.value.errno == errno.EROFS
    assert mounts.is_mount_point(target) is None
    assert _loop_devices_over(image) == []  # autoclear: the device went with the mount


def test_kept_erofs_mount_stays_until_unmounted(tmp_path):
    image = _image(str(tmp_path / "img.erofs"))
    target = tmp_path / "mnt"
    target.mkdir()
    held = mounts.erofs(image, target, loop=True)
    held.__enter__()  # kept: as ExitStack.pop_all() keeps a mount
    try:
        assert (target / "hello").read_bytes() == b"hello\n"
        assert str(held.result).startswith("/dev/loop")
    finally:
        mounts.umount(target)
    assert _loop_devices_over(image) == []


def test_a_file_that_is_no_image_is_refused_and_leaves_no_loop(tmp_path):
    bad = tmp_path / "bad.erofs"
    bad.write_bytes(b"\0" * 8192)
    target = tmp_path / "mnt"
    target.mkdir()
    for loop in (False, True):
        with pytest.raises(OSError) as err, mounts.erofs(bad, target, loop=loop):
            pass
        assert err.value.filename == str(target)
        assert mounts.is_mount_point(target) is None
    assert _loop_devices_over(str(bad)) == []


def test_loop_config_is_the_kernels_struct():
    # struct loop_config is 304 bytes; lo_flags sits at 8 (fd, block_size) + 52 in loop_info64.
    raw = mounts._loop_config(7)
    assert len(raw) == 304
    assert int.from_bytes(raw[0:4], "little") == 7
    assert int.from_bytes(raw[60:64], "little") == mounts.LO_FLAGS_READ_ONLY | mounts.LO_FLAGS_AUTOCLEAR


@pytest.mark.parametrize("loop", [False, True], ids=["file", "loop"])
def test_erofs_from_an_open_descriptor_mounts_that_file(tmp_path, loop):
    # The file checked is the file mounted: replacing the path after opening changes nothing.
    image = _image(str(tmp_path / "img.erofs"))
    fd = os.open(image, os.O_RDONLY)
    try:
        os.rename(image, tmp_path / "moved")
        (tmp_path / "img.erofs").write_bytes(b"\0" * 8192)
        target = tmp_path / "mnt"
        target.mkdir()
        with mounts.erofs(fd, target, loop=loop):
            assert (target / "hello").read_bytes() == b"hello\n"
    finally:
        os.close(fd)
    assert mounts.is_mount_point(target) is None
    assert _loop_devices_over(str(tmp_path / "moved")) == []
