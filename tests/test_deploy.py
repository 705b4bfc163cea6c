"""Deployments, module by module: mounts, state and boot counting, the farm, object checks.

Real tmpfs and overlay mounts (as root), under directories whose names hold
spaces, commas, colons and backslashes; after every test nothing is left
mounted below the test's directory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil

import pytest

from overlay import farm, mounts, objcheck
from overlay.objcheck import LargeFile, Policy, Verity, check_objects
from overlay.state import (
    BootChoice,
    Deployment,
    State,
    StateFile,
    boot_select,
    choose_deployment_for_boot,
    count_try,
    decode,
    mark_good,
)
from store.errors import DeployError, FormatError, VerificationError, VerityUnsupported
from store.fsverity import digest_bytes
from store.ids import RawId
from store.model import Meta

pytestmark = pytest.mark.usefixtures("needs_root")

ODD = "odd dir, with: colons\\and,commas"


@pytest.fixture
def base_name():  # conftest's ``base``, under a name with a backslash as well
    return ODD


# -- mounts --------------------------------------------------------------------------------

@pytest.mark.parametrize("api", ["new", "legacy"])
def test_overlay_of_tmpfs_and_dir_is_read_only_and_merged(base, api):
    lower, farm_dir, target = (os.path.join(base, n) for n in ("lower:1", "farm,2", "tar get"))
    for path in (lower, farm_dir, target):
        os.mkdir(path)
    os.makedirs(os.path.join(farm_dir, "usr", "bin"))
    with open(os.path.join(farm_dir, "usr", "bin", "big"), "w") as handle:
        handle.write("from the farm")
    with contextlib.ExitStack() as stack:
        stack.enter_context(mounts.tmpfs(lower, size=1 << 20, inodes=64))
        os.makedirs(os.path.join(lower, "usr", "bin"))
        os.chmod(os.path.join(lower, "usr"), 0o711)
        with open(os.path.join(lower, "usr", "bin", "small"), "w") as handle:
            handle.write("from the tmpfs")
        merged = mounts.overlay(target, mounts.OverlaySpec([lower, farm_dir]), api)
        stack.enter_context(merged)
        assert merged.result == api
        assert sorted(os.listdir(os.path.join(target, "usr", "bin"))) == ["big", "small"]
        # Directory metadata comes from the top layer (the tmpfs), not the farm's 0755.
        assert os.stat(os.path.join(target, "usr")).st_mode & 0o7777 == 0o711
        with pytest.raises(OSError) as err:
            open(os.path.join(target, "new"), "w")
        assert err.value.errno == errno.EROFS
        found = {m.mount_point: m for m in mounts.mounts_under(base)}
        assert found[os.fsencode(target)].fstype == "overlay"
        assert "ro" in found[os.fsencode(target)].options.split(",")
    assert mounts.mounts_under(base) == []


def test_escape_layer():
    assert mounts.escape_layer("/a b/c,d:e\\f") == "/a b/c\\,d\\:e\\\\f"
    data = mounts.OverlaySpec(["/x:y", "/z"]).legacy_data()
    assert data.startswith("lowerdir=/x\\:y:/z,") and "redirect_dir=nofollow" in data


def test_failure_part_way_leaves_no_mount(base):
    lower, target = os.path.join(base, "lower"), os.path.join(base, "target")
    os.mkdir(lower)
    os.mkdir(target)
    with pytest.raises(OSError) as err:
        with contextlib.ExitStack() as stack:
            stack.enter_context(mounts.tmpfs(lower))
            assert mounts.mounts_under(base)
            stack.enter_context(mounts.overlay(target, mounts.OverlaySpec(
                [lower, os.path.join(base, "no such dir")])))
    assert err.value.filename == target
    assert mounts.mounts_under(base) == []


def test_umount_of_nothing_names_the_path(base):
    with pytest.raises(OSError) as err:
        mounts.umount(base)
    assert err.value.filename == base and err.value.errno == errno.EINVAL


def test_mountinfo_decodes_octal_escapes(base):
    target = os.path.join(base, "sp ace\ttab")
    os.mkdir(target)
    with mounts.tmpfs(target):
        info = mounts.is_mount_point(target)
        assert info is not None and info.mount_point == os.fsencode(target) and info.fstype == "tmpfs"


# -- state and boot counting ------------------------------------------------------------------

def _dep(n: int, commit: str = "ab" * 32) -> Deployment:
    return Deployment(id=f"{commit}.{n}", commit=commit, ref="os/main", version=str(n), created=n,
                      pack=f"packs/{commit}.pack", pack_sha256="00" * 32, keys="/keys")


def _state(count: int) -> State:
    state = State()
    for _ in range(count):
        dep = _dep(state.next_serial)
        state.allocate_id(dep.commit)
        state.add(dep, make_default=True, tries=3)
    return state


def test_new_default_makes_the_old_one_previous():
    state = _state(2)
    first, second = (d.id for d in state.deployments)
    assert (state.default, state.previous) == (second, first)
    state.rollback()
    assert (state.default, state.previous) == (first, second)
    state.set_default(second, None)
    assert (state.default, state.previous) == (second, first)
    assert state.get(second).tries_left is None


def test_boot_counting_falls_back_when_tries_run_out():
    state = _state(2)
    first, second = (d.id for d in state.deployments)
    mark_good(state, first)
    for left in (2, 1, 0):
        choice = choose_deployment_for_boot(state)
        assert choice == BootChoice(state.get(second), "default")
        count_try(state, choice.deployment.id)
        assert state.get(second).tries_left == left and state.booted == second
    choice = choose_deployment_for_boot(state)
    assert choice.deployment.id == first and choice.reason == "fallback"
    count_try(state, first)
    assert state.get(first).tries_left is None  # not counted: known good
    assert mark_good(state).id == first


def test_mark_good_ends_counting():
    state = _state(1)
    dep = state.deployments[0]
    count_try(state, dep.id)
    assert mark_good(state).id == dep.id and dep.tries_left is None
    for _ in range(5):
        count_try(state, dep.id)
    assert choose_deployment_for_boot(state).reason == "default"


def test_exhausted_without_previous_still_boots_something():
    state = _state(1)
    state.deployments[0].tries_left = 0
    assert choose_deployment_for_boot(state).reason == "exhausted"


def test_remove_rules():
    state = _state(2)
    first, second = (d.id for d in state.deployments)
    with pytest.raises(DeployError, match="is the default"):
        state.remove(second)
    state.get(first).mounted_at = ["/mnt"]
    with pytest.raises(DeployError, match="mounted at /mnt"):
        state.remove(first)
    state.get(first).mounted_at = []
    state.remove(first)
    assert state.previous is None and [d.id for d in state.deployments] == [second]


def test_find_by_prefix_and_names():
    state = _state(2)
    assert state.find("default").id == state.default
    assert state.find("previous").id == state.previous
    assert state.find(state.default[:8] + state.default[64:]).id == state.default
    with pytest.raises(DeployError, match="ambiguous"):
        state.find("abab")
    assert state.find(state.deployments[0].id).id == state.deployments[0].id
    with pytest.raises(DeployError, match="no such deployment"):
        state.find("ffff")


def test_state_file_round_trip_and_lock(tmp_path):
    states = StateFile(str(tmp_path / "deploy"))
    assert states.read().deployments == []
    with states.update() as state:
        dep = _dep(state.next_serial)
        state.allocate_id(dep.commit)
        state.add(dep, make_default=True, tries=2)
    choice = boot_select(states)
    again = states.read()
    assert choice.deployment.id == again.default and again.get(again.default).tries_left == 1
    assert again.booted == again.default
    assert decode(again.encode()) == again


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(version=3), "unsupported version"),
    (lambda d: d["deployments"][0].update(layout="farm"), "layout must be one of"),
    (lambda d: d["deployments"][0].pop("layout"), "must be an object with keys"),
    (lambda d: d.update(format="x"), "format must be"),
    (lambda d: d.update(default="cd" * 32 + ".1"), "not a listed deployment"),
    (lambda d: d["deployments"][0].update(id="ab" * 32 + ".99"), "not below next_serial"),
    (lambda d: d["deployments"][0].update(tries_left="3"), "tries_left"),
    (lambda d: d.update(extra=1), "keys must be"),
    (lambda d: d["deployments"].append(dict(d["deployments"][0])), "duplicate id"),
])
def test_bad_state_is_an_error_not_an_empty_state(mutate, message):
    import json
    doc = json.loads(_state(1).encode())
    mutate(doc)
    with pytest.raises(FormatError, match=message):
        decode(json.dumps(doc).encode())
    with pytest.raises(FormatError, match="not JSON"):
        decode(b"{")


# -- the farm and object checks ------------------------------------------------------------

def _objects(base: str, specs: list[tuple[bytes, bytes, Meta]]) -> list[LargeFile]:
    """Object files (content, metadata) under base/objects and their LargeFile entries."""
    store = os.path.join(base, "objects")
    os.makedirs(store, exist_ok=True)
    items = []
    for i, (path, data, meta) in enumerate(specs):
        obj = os.path.join(store, f"{i}.file")
        with open(obj, "wb") as handle:
            handle.write(data)
        for name, value in meta.xattrs:
            os.setxattr(obj, name, value)
        os.chown(obj, meta.uid, meta.gid)
        os.chmod(obj, meta.mode)
        items.append(LargeFile(path, meta, len(data), RawId(digest_bytes(data)), obj))
    return items


META = Meta(0o755, 0, 0)
SPECS = [
    (b"usr/bin/a", b"A" * 70000, META),
    (b"usr/bin/b b", b"B" * 9000, Meta(0o4711, 1000, 2, ((b"user.x", b"1"),))),
    (b"usr/lib/deep/c", b"C" * 5000, Meta(0o644, 0, 0)),
    (b"top", b"D" * 100000, META),
]


def _with_links(items: list[LargeFile], farm_dir: str) -> list[LargeFile]:
    root = os.fsencode(farm_dir) + b"/"
    return [LargeFile(i.path, i.meta, i.size, i.digest, i.obj, os.fsdecode(root + i.path)) for i in items]


@pytest.fixture
def deployed(base):
    items = _objects(base, SPECS)
    root = os.path.join(base, "deploy")
    os.mkdir(root)
    path = farm.build_farm(root, "x.1", items, sync=False)
    return _with_links(items, path), path


def test_farm_holds_links_to_the_objects(deployed):
    items, path = deployed
    farm.check_farm(path, items)
    for item in items:
        assert os.path.samestat(os.lstat(item.link), os.lstat(item.obj))
    assert sorted(os.listdir(path)) == ["top", "usr"]
    report = check_objects(items, Policy.USERSPACE, workers=1)
    assert (report.files, report.userspace, report.kernel) == (4, 4, 0)


@pytest.mark.parametrize("damage, message", [
    (lambda p, i: open(os.path.join(p, "extra"), "w").close(), "extra: unexpected file"),
    (lambda p, i: os.mkdir(os.path.join(p, "usr", "new")), "usr/new: unexpected directory"),
    (lambda p, i: os.unlink(i[0].link), "usr/bin/a: missing from the farm"),
    (lambda p, i: (os.unlink(i[3].link), os.symlink(i[3].obj, i[3].link)), "top: is a symlink"),
    (lambda p, i: (shutil.rmtree(os.path.join(p, "usr", "lib")),
                   os.symlink("/", os.path.join(p, "usr", "lib"))), "usr/lib: is a symlink"),
])
def test_farm_changes_are_refused(deployed, damage, message):
    items, path = deployed
    damage(path, items)
    with pytest.raises(VerificationError, match=message):
        farm.check_farm(path, items)


def _rewrite(path: str, data: bytes) -> None:
    st = os.lstat(path)
    with open(path, "r+b") as handle:
        handle.write(data)
    os.chmod(path, st.st_mode & 0o7777)  # a write drops setuid; keep the metadata as it was


@pytest.mark.parametrize("damage, message", [
    (lambda i: _rewrite(i[0].obj, b"X"), "usr/bin/a: content changed: the userspace"),
    (lambda i: os.chmod(i[1].obj, 0o755), "usr/bin/b b: mode is 0o755, the manifest says 0o4711"),
    (lambda i: os.chown(i[2].obj, 1, 0), "usr/lib/deep/c: owner is 1:0, the manifest says 0:0"),
    (lambda i: os.removexattr(i[1].obj, "user.x"), "usr/bin/b b: xattrs differ"),
    (lambda i: os.setxattr(i[1].obj, "user.x", b"2"), "usr/bin/b b: xattrs differ.*values differ"),
    (lambda i: (os.unlink(i[3].obj), shutil.copy(i[0].obj, i[3].obj)), "top: .*not a hardlink"),
    (lambda i: (os.unlink(i[3].link), os.link(i[0].obj, i[3].link)), "top: .*not a hardlink"),
    (lambda i: os.truncate(i[3].obj, 5), "top: size is 5"),
])
def test_object_changes_are_refused_naming_the_path(deployed, damage, message):
    items, _path = deployed
    damage(items)
    with pytest.raises(VerificationError, match=message):
        check_objects(items, Policy.AUTO, workers=1)


def test_replaced_object_is_refused_without_a_farm(base):
    items = _objects(base, SPECS)
    os.unlink(items[0].obj)
    shutil.copy(items[3].obj, items[0].obj)
    with pytest.raises(VerificationError, match="usr/bin/a: size is 100000"):
        check_objects(items, Policy.AUTO)
    os.unlink(items[0].obj)
    with pytest.raises(VerificationError, match="usr/bin/a: object is missing"):
        check_objects(items, Policy.AUTO)


def test_parallel_digests_match_and_catch_damage(base, monkeypatch):
    monkeypatch.setattr(objcheck, "PARALLEL_MIN_BYTES", 0)
    items = _objects(base, SPECS * 1 + [(b"more%d" % i, bytes([i]) * (5000 + i), META) for i in range(20)])
    assert check_objects(items, Policy.USERSPACE, workers=3).userspace == len(items)
    _rewrite(items[-1].obj, b"Z")
    with pytest.raises(VerificationError, match="more19: content changed"):
        check_objects(items, Policy.USERSPACE, workers=3)


def test_kernel_policy_fails_closed_without_fs_verity(base):
    items = _objects(base, SPECS)

    def unsupported(fd: int, path: str) -> bytes | None:
        raise VerityUnsupported(f"{path}: no fs-verity")

    with pytest.raises(VerificationError, match="usr/bin/a: the kernel cannot measure"):
        check_objects(items, Policy.KERNEL, verity=Verity(unsupported, lambda p: True))


class FakeVerity:
    """A filesystem with fs-verity: enable records the digest, measure returns it."""

    def __init__(self) -> None:
        self.enabled: dict[str, bytes] = {}

    def measure(self, fd: int, path: str) -> bytes | None:
        return self.enabled.get(path)

    def enable(self, path: str) -> bool:
        if path in self.enabled:
            return False
        with open(path, "rb") as handle:
            self.enabled[path] = digest_bytes(handle.read())
        return True


def test_kernel_measurement_where_the_filesystem_has_it(base):
    items = _objects(base, SPECS)
    fake = FakeVerity()
    verity = Verity(fake.measure, fake.enable)
    with pytest.raises(VerificationError, match="kernel cannot measure"):
        check_objects(items, Policy.KERNEL, verity=verity)  # not enabled, and not asked to
    report = check_objects(items, Policy.KERNEL, enable=True, verity=verity)
    assert (report.kernel, report.enabled, report.userspace) == (4, 4, 0)
    report = check_objects(items, Policy.AUTO, verity=verity)
    assert (report.kernel, report.userspace) == (4, 0)
    fake.enabled[items[2].obj] = b"\0" * 32  # the kernel measures something else
    with pytest.raises(VerificationError, match="usr/lib/deep/c: content changed: the kernel-measured"):
        check_objects(items, Policy.AUTO, verity=verity)


def test_metacopy_kernel_checks_measure_only_and_say_the_same_on_failure(base):
    """Policy kernel without inode metadata (the metacopy layout on a system with fs-verity):
    one open, fstat and measure per object; an object that is not right is checked again the
    general way, which enables fs-verity where asked and names what is wrong."""
    items = _objects(base, SPECS)
    fake = FakeVerity()
    verity = Verity(fake.measure, fake.enable)
    report = check_objects(items, Policy.KERNEL, enable=True, verity=verity, inode_meta=False)
    assert (report.kernel, report.enabled, report.userspace) == (4, 4, 0)
    os.chmod(items[1].obj, 0o755)  # not checked here: the stub carries the mode
    report = check_objects(items, Policy.KERNEL, verity=verity, inode_meta=False)
    assert (report.kernel, report.enabled) == (4, 0)
    fake.enabled[items[2].obj] = b"\0" * 32
    os.truncate(items[3].obj, 5)
    with pytest.raises(VerificationError,
                       match=r"usr/lib/deep/c: content changed: the kernel-measured .*\(and 1 more"):
        check_objects(items, Policy.KERNEL, verity=verity, inode_meta=False)
    os.unlink(items[0].obj)
    with pytest.raises(VerificationError, match=r"usr/bin/a: object is missing .*\(and 2 more"):
        check_objects(items, Policy.KERNEL, verity=verity, inode_meta=False)
