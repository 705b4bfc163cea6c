"""The three-way /etc merge (overlay/etc_merge.py) on real directories."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from overlay.etc_merge import Side, merge_etc, plan_merge, read_tree


def _tree(root: Path, files: dict[str, str | None], links: dict[str, str] | None = None) -> Path:
    """``root`` with ``files`` (path -> text; None: an empty directory) and symlinks."""
    root.mkdir(parents=True)
    for rel, text in sorted(files.items()):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if text is None:
            path.mkdir(exist_ok=True)
        else:
            path.write_text(text)
    for rel, target in (links or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / rel)
    return root


VENDOR_1 = {"hostname": "debian\n", "fstab": "# none\n", "motd": "release 1\n", "machine-id": "",
            "ssh/sshd_config": "Port 22\n", "apt/sources.list": "deb one\n", "old.conf": "gone soon\n",
            "cron.d/job": "* * * * * x\n"}


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def test_user_changes_kept_vendor_changes_applied_conflicts_named(tmp_path: Path) -> None:
    base = _tree(tmp_path / "base", VENDOR_1, {"localtime": "/usr/share/zoneinfo/UTC"})
    user = _tree(tmp_path / "user", {**VENDOR_1, "hostname": "kitchen\n", "machine-id": "0123abcd\n",
                                     "ssh/sshd_config": "Port 2222\n", "mine.conf": "added by me\n"},
                 {"localtime": "/usr/share/zoneinfo/Europe/Paris"})
    os.remove(user / "cron.d" / "job")  # removed by the user, unchanged by the vendor
    new = _tree(tmp_path / "new", {**VENDOR_1, "motd": "release 2\n", "ssh/sshd_config": "Port 22\nX11 no\n",
                                   "apt/sources.list": "deb two\n", "added.conf": "new in 2\n"},
                {"localtime": "/usr/share/zoneinfo/UTC"})
    os.remove(new / "old.conf")  # removed by the vendor
    out = tmp_path / "merged"
    plan = merge_etc(base, user, new, out)
    assert _files(out) == {
        "hostname": "kitchen\n",  # the user's change
        "machine-id": "0123abcd\n",  # generated on the device: kept
        "mine.conf": "added by me\n",  # the user's new file
        "fstab": "# none\n",  # nobody changed it
        "motd": "release 2\n",  # the vendor's change
        "apt/sources.list": "deb two\n",
        "added.conf": "new in 2\n",  # the vendor's new file
        "ssh/sshd_config": "Port 2222\n",  # both changed it: the user's kept, and named
    }
    assert not (out / "old.conf").exists() and not (out / "cron.d" / "job").exists()
    assert (out / "cron.d").is_dir()
    assert os.readlink(out / "localtime") == "/usr/share/zoneinfo/Europe/Paris"
    assert [c.describe() for c in plan.conflicts] == [
        "ssh/sshd_config: modified by the user, modified by the new release"]
    assert set(plan.kept) == {b"hostname", b"machine-id", b"mine.conf", b"cron.d/job", b"localtime",
                              b"ssh/sshd_config"}
    assert set(plan.updated) == {b"motd", b"apt/sources.list", b"added.conf", b"old.conf"}
    assert plan.result[b"hostname"][0] is Side.USER and plan.result[b"motd"][0] is Side.VENDOR


def test_metadata_changes_count_as_changes(tmp_path: Path) -> None:
    base = _tree(tmp_path / "base", {"shadow": "root:*:\n", "sudoers": "x\n"})
    user = _tree(tmp_path / "user", {"shadow": "root:*:\n", "sudoers": "x\n"})
    new = _tree(tmp_path / "new", {"shadow": "root:*:\n", "sudoers": "x\n"})
    for root in (base, new):
        (root / "shadow").chmod(0o640)
    (user / "shadow").chmod(0o600)  # the user tightened it
    (new / "sudoers").chmod(0o440)  # the vendor tightened this one
    (user / "sudoers").chmod(stat.S_IMODE((base / "sudoers").stat().st_mode))
    out = tmp_path / "merged"
    plan = merge_etc(base, user, new, out)
    assert stat.S_IMODE((out / "shadow").stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "sudoers").stat().st_mode) == 0o440
    assert plan.conflicts == ()


def test_removed_by_the_user_changed_by_the_vendor_is_a_conflict(tmp_path: Path) -> None:
    base = _tree(tmp_path / "base", {"a.conf": "1\n", "b.conf": "1\n"})
    user = _tree(tmp_path / "user", {"b.conf": "mine\n"})
    new = _tree(tmp_path / "new", {"a.conf": "2\n"})
    plan = merge_etc(base, user, new, tmp_path / "merged")
    assert [c.describe() for c in plan.conflicts] == [
        "a.conf: removed by the user, modified by the new release",
        "b.conf: modified by the user, removed by the new release"]
    assert _files(tmp_path / "merged") == {"b.conf": "mine\n"}  # the user's side of both


def test_same_change_on_both_sides_is_no_conflict(tmp_path: Path) -> None:
    base = _tree(tmp_path / "base", {"x.conf": "1\n"})
    user = _tree(tmp_path / "user", {"x.conf": "2\n"})
    new = _tree(tmp_path / "new", {"x.conf": "2\n"})
    plan = merge_etc(base, user, new, tmp_path / "merged")
    assert plan.conflicts == () and _files(tmp_path / "merged") == {"x.conf": "2\n"}


def test_vendor_files_under_a_directory_the_user_removed_are_dropped_and_named(tmp_path: Path) -> None:
    base = _tree(tmp_path / "base", {"foo.d/a": "1\n", "bar.d/a": "1\n"})
    user = _tree(tmp_path / "user", {"bar": "a file now\n"})
    (user / "bar.d").symlink_to("/elsewhere")  # replaced by a symlink
    new = _tree(tmp_path / "new", {"foo.d/a": "1\n", "foo.d/b": "2\n", "foo.d/sub/c": "3\n", "bar.d/a": "1\n",
                                   "bar.d/new": "4\n"})
    plan = merge_etc(base, user, new, tmp_path / "merged")
    assert [c.describe() for c in plan.conflicts] == [
        "bar.d/new: removed or replaced its directory by the user, added by the new release",
        "foo.d/b: removed or replaced its directory by the user, added by the new release",
        "foo.d/sub: removed or replaced its directory by the user, added by the new release"]
    assert not (tmp_path / "merged" / "foo.d").exists()
    assert os.readlink(tmp_path / "merged" / "bar.d") == "/elsewhere"


def test_owner_xattrs_and_read_only_directories_are_written(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: chown and trusted xattrs")
    base = _tree(tmp_path / "base", {"ssl/private/key": "k\n"})
    user = _tree(tmp_path / "user", {"ssl/private/key": "k\n"})
    new = _tree(tmp_path / "new", {"ssl/private/key": "k2\n"})
    for root in (base, user, new):
        os.chown(root / "ssl/private", 0, 102)
        os.chown(root / "ssl/private/key", 0, 102)
        os.setxattr(root / "ssl/private/key", "trusted.test", b"v")
        (root / "ssl/private/key").chmod(0o400)
        (root / "ssl/private").chmod(0o510)
    out = tmp_path / "merged"
    merge_etc(base, user, new, out)
    key = out / "ssl/private/key"
    assert key.read_text() == "k2\n" and stat.S_IMODE(key.stat().st_mode) == 0o400
    assert key.stat().st_gid == 102 and os.getxattr(key, "trusted.test") == b"v"
    assert stat.S_IMODE((out / "ssl/private").stat().st_mode) == 0o510
    assert read_tree(out) == read_tree(new)


def test_plan_reads_nothing_and_an_unreadable_tree_names_the_path(tmp_path: Path) -> None:
    from overlay.etc_merge import EtcMergeError

    assert plan_merge({}, {}, {}).result == {}
    with pytest.raises(EtcMergeError) as caught:
        read_tree(tmp_path / "missing")
    assert caught.value.path == os.fsencode(tmp_path / "missing")
