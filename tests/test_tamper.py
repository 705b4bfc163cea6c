"""Tampering with a deployed repository (tests/reliability/tamper.py): every item of threat
model 1 and 2 in DESIGN.md, each refused by the next mount / deploy / fsck (or pack verify
/ import) with a clean error naming the path or object, nothing left mounted; and the
runtime window of the hardlink layout (issue 17)."""

from __future__ import annotations

import os

import pytest

from tests.reliability.env import Env, mounts_below
from tests.reliability.tamper import TAMPERS, Tampering, _replace_with_copy

pytestmark = pytest.mark.usefixtures("needs_root")


@pytest.fixture(scope="module")
def tampering(tmp_path_factory) -> Tampering:
    if os.geteuid() != 0:  # module fixtures run before the needs_root fixture
        pytest.skip("needs root: owners, trusted.* xattrs and mounts")
    base = tmp_path_factory.mktemp("tamper")
    env = Env.make(str(base / "env"))
    return Tampering(env, str(base / "t"))


def _param(tamper):  # type: ignore[no-untyped-def]
    marks = [pytest.mark.xfail(strict=False, reason=tamper.xfail)] if tamper.xfail else []
    return pytest.param(tamper, id=tamper.name, marks=marks)


@pytest.mark.parametrize("tamper", [_param(t) for t in TAMPERS])
def test_tampering_is_refused(tampering, tamper):
    result = tampering.run(tamper)
    assert result.failures == []


def test_every_threat_item_is_covered():
    names = " ".join(t.name for t in TAMPERS)
    for item in ("object content", "object removed", "farm file added", "mode", "owner", "xattr",
                 "farm link replaced", "farm link removed", "trusted.overlay.opaque",
                 "trusted.overlay.redirect", "trusted.overlay.metacopy", "kept pack modified",
                 "unknown key", "revoked key", "replayed older pack", "keyring path moved"):
        assert item in names, item


def _mounted_world(tampering: Tampering, name: str):  # type: ignore[no-untyped-def]
    w = tampering.world(name)
    result = w.cli("mount", w.dep, w.target, "--keys", tampering.env.keys, "--verify", "userspace")
    assert result.code == 0, result.describe()
    return w


def test_runtime_window_next_mount_refuses(tampering):
    """After a farm link is replaced under a mounted tree, the next mount refuses it."""
    w = _mounted_world(tampering, "runtime next mount")
    try:
        _replace_with_copy(os.path.join(w.farm, "usr/bin/su"), b"evil")
    finally:
        assert w.cli("umount", w.target).code == 0
    result = w.cli("mount", w.dep, w.target, "--keys", tampering.env.keys, "--verify", "userspace")
    assert result.clean_error() and result.code == 15, result.describe()
    assert "usr/bin/su" in result.stderr
    assert mounts_below(w.dir) == []


@pytest.mark.xfail(strict=False, reason="issue 17: the known gap of the hardlink layout -- the "
                   "farm link is the object's inode, so a write to it while the tree is mounted "
                   "shows through the overlay (checks run only before mount; the kernel-enforced "
                   "metacopy + verity=require mode is what closes it)")
def test_runtime_window_a_farm_link_written_in_place_does_not_show(tampering):
    w = _mounted_world(tampering, "runtime window in place")
    seen = os.path.join(w.target, "usr/bin/su")
    try:
        with open(seen, "rb") as handle:
            before = handle.read()
        farm_link = os.path.join(w.farm, "usr/bin/su")
        st = os.lstat(farm_link)
        with open(farm_link, "r+b") as handle:
            handle.write(b"evil")
        os.chmod(farm_link, st.st_mode & 0o7777)
        with open(seen, "rb") as handle:
            after = handle.read()
    finally:
        assert w.cli("umount", w.target).code == 0
    # Seen today: "evil" + the rest of the old content, through the read-only mount.
    assert after == before


def test_runtime_window_a_farm_link_replaced_by_rename(tampering):
    """Documents what is seen when the farm entry is replaced (a new inode renamed over it)
    while mounted: the overlay keeps the inode it looked up, so the old content is still
    shown while that lookup is cached (not a guarantee: the in-place write above shows)."""
    w = _mounted_world(tampering, "runtime window rename")
    seen = os.path.join(w.target, "usr/bin/su")
    try:
        with open(seen, "rb") as handle:
            before = handle.read()
        _replace_with_copy(os.path.join(w.farm, "usr/bin/su"), b"evil")
        with open(seen, "rb") as handle:
            after = handle.read()
    finally:
        assert w.cli("umount", w.target).code == 0
    assert after in (before, b"evil")
    print(f"runtime window, farm link renamed over: the mount shows the "
          f"{'old' if after == before else 'new'} content")
