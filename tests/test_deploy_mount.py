"""``sealtree deploy --mount``: deploy and mount in one pass, each check made once.

The merged view must equal the source tree; every refusal (a tampered object, a
tampered pack, a failure part way: unpacking, building the farm, mounting the
overlay) must leave nothing mounted, no farm, no staging directory and no
deployment in the state.  Real tmpfs and overlay mounts, as root.
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings

from overlay import farm, mounts, unpack_tmpfs
from overlay import mount_deployment as md
from overlay.deploy import deploy, undeploy
from overlay.objcheck import LargeFile
from store.errors import MountError, ObjectMissing, PackError, VerificationError
from store.model import Meta
from store.repo import Repository
from tests.helpers import assert_same_tree, materialise, run_cli, trees
from tests.test_deploy_cli import Site, _enlarge, _keep_meta_write, _leftovers

pytestmark = pytest.mark.usefixtures("needs_root")


def _deploy_mount(site: Site, *extra: str, check: bool = True):  # type: ignore[no-untyped-def]
    return site.cli("deploy", "os/main", "--keys", site.keys, "--mount", site.target, *extra,
                    check=check)


def _nothing_left(site: Site) -> None:
    """No mount, an empty target, no farm (final or temporary), no staging dir, no deployment."""
    assert _leftovers(site.base) == []
    assert os.listdir(site.target) == []
    deploy_dir = os.path.join(site.repo, "deploy")
    # The shared /var stays once seeded (it is the system's); no /etc or boot files of a
    # deployment may stay.
    farms = [n for n in os.listdir(deploy_dir) if n not in ("state.json", "state.lock", "var")] \
        if os.path.isdir(deploy_dir) else []
    assert [n for n in farms if n not in ("etc", "boot")] == []
    for name in ("etc", "boot"):
        assert not os.listdir(os.path.join(deploy_dir, name)) if name in farms else True
    assert not [n for n in os.listdir(os.path.join(site.repo, "tmp")) if n.startswith("mount-")]
    assert json.loads(site.cli("status", "--json").stdout)["deployments"] == []


def test_deploy_mount_equals_the_tree_and_is_read_only(site):
    out = _deploy_mount(site, "--read-only").stdout
    dep = out.strip().splitlines()[-1].split()[-1]
    assert dep.startswith(site.commit + ".") and f"mounted at {os.path.abspath(site.target)}" in out
    try:
        assert_same_tree(site.src, site.target)
        with pytest.raises(OSError):
            open(os.path.join(site.target, "etc", "new"), "w")
        info = mounts.is_mount_point(site.target)
        assert info is not None and info.fstype == "overlay" and "ro" in info.options.split(",")
        assert _leftovers(site.base) == [os.fsencode(site.target)]  # the staging tmpfs: detached
        doc = json.loads(site.cli("status", "--json").stdout)
        assert doc["default"] == dep
        assert doc["deployments"][0]["mounted_at"] == [os.path.realpath(site.target)]
    finally:
        site.cli("umount", site.target)
    assert _leftovers(site.base) == []
    assert not [n for n in os.listdir(os.path.join(site.repo, "tmp")) if n.startswith("mount-")]
    # The deployment is an ordinary one: `mount` re-verifies it and shows the same tree.
    site.cli("mount", dep, site.target, "--keys", site.keys, "--read-only")
    try:
        assert_same_tree(site.src, site.target)
    finally:
        site.cli("umount", site.target)


def test_deploy_mount_json_and_live(site):
    doc = json.loads(_deploy_mount(site, "--live", "--json").stdout)
    try:
        assert doc["target"] == os.path.abspath(site.target) and doc["live"] is True
        assert doc["objects"] == doc["userspace_verified"] + doc["kernel_verified"] == 8
        assert doc["files"] + doc["links"] >= 4 and doc["symlinks"] == 2
        assert {"pack", "objects", "unpack", "farm", "digests", "mount", "total"} <= set(doc["seconds"])
        with open(os.path.join(site.target, "etc", "hostname"), "w") as handle:
            handle.write("changed\n")
    finally:
        site.cli("umount", site.target)
    site.cli("mount", doc["id"], site.target, "--keys", site.keys, "--read-only")
    try:
        assert_same_tree(site.src, site.target)  # the write lived in memory only
    finally:
        site.cli("umount", site.target)


def test_tampered_object_is_refused_with_nothing_mounted(site):
    repo = Repository.open(site.repo)
    objects = sorted(p for d, _s, fs in os.walk(repo.objects.root) for p in
                     (os.path.join(d, f) for f in fs) if p.endswith(".file")
                     and os.path.getsize(p) > 10000)
    victim = objects[0]
    with open(victim, "rb") as handle:
        original = handle.read()
    _keep_meta_write(victim, b"evil")
    proc = _deploy_mount(site, check=False)
    assert proc.returncode == 15 and "content changed: the userspace fs-verity digest" in proc.stderr
    _nothing_left(site)
    # Metadata is checked too (the object's content is right again).
    _keep_meta_write(victim, original)
    os.chmod(objects[1], 0o4777)
    proc = _deploy_mount(site, check=False)
    assert proc.returncode == 15 and "mode is 0o4777" in proc.stderr, proc.stderr
    _nothing_left(site)


def test_tampered_pack_is_refused_with_nothing_mounted(site):
    pack = site.kept_pack()
    os.chmod(pack, 0o644)
    with open(pack, "r+b") as handle:
        handle.seek(os.path.getsize(pack) - 3)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x40]))
    proc = _deploy_mount(site, check=False)
    assert proc.returncode == 12 and "does not verify over this pack" in proc.stderr
    _nothing_left(site)


def test_target_must_be_an_empty_unmounted_directory(site):
    proc = site.cli("deploy", "os/main", "--keys", site.keys, "--mount",
                    os.path.join(site.base, "nowhere"), check=False)
    assert proc.returncode == 16 and "not a directory" in proc.stderr
    with mounts.tmpfs(site.target):
        proc = _deploy_mount(site, check=False)
        assert proc.returncode == 16 and "already a mount point" in proc.stderr
    _nothing_left(site)
    proc = site.cli("deploy", "os/main", "--keys", site.keys, "--live", check=False)
    assert proc.returncode == 2 and "--live needs --mount" in proc.stderr


@pytest.mark.parametrize("where", ["unpack", "farm", "overlay"])
def test_failure_part_way_leaves_nothing(site, monkeypatch, where):
    """A failure while unpacking, while building the farm or when mounting the overlay (after
    every check passed and the farm was published): no mount, no farm, no deployment."""
    def broken_unpack(reader, root):  # type: ignore[no-untyped-def]
        os.mkdir(os.path.join(root, "partial"))
        raise PackError("pack: broken on purpose", offset=0)

    def broken_farm(deploy_root, dep_id, items):  # type: ignore[no-untyped-def]
        os.makedirs(os.path.join(deploy_root, farm.TMP_PREFIX + dep_id, "partial"))
        raise ObjectMissing("usr/bin/tool: object gone", path="usr/bin/tool")

    def broken_overlay(target, spec, api="auto"):  # type: ignore[no-untyped-def]
        raise OSError(22, "Invalid argument", target)

    if where == "unpack":
        monkeypatch.setattr(unpack_tmpfs, "unpack_into_tmpfs", broken_unpack)
        expected: type[Exception] = PackError
    elif where == "farm":
        monkeypatch.setattr(farm, "start_farm", broken_farm)
        expected = ObjectMissing
    else:
        monkeypatch.setattr(mounts, "mount_overlay", broken_overlay)
        expected = MountError
    repo = Repository.open(site.repo)
    with pytest.raises(expected):
        deploy(repo, "os/main", site.keys, target=site.target)
    _nothing_left(site)


def test_farm_builder_reports_the_childs_error(tmp_path):
    meta = Meta(0o644, 0, 0, ())
    items = [LargeFile(b"a/b", meta, 1, b"\0" * 32, str(tmp_path / "no such object"))]
    builder = farm.FarmBuilder(str(tmp_path / "deploy"), "x.1", items)
    with pytest.raises(ObjectMissing, match="a/b: object .* is missing") as caught:
        builder.wait([None])
    assert caught.value.path == b"a/b"
    builder.cancel()
    assert not os.path.exists(tmp_path / "deploy" / (farm.TMP_PREFIX + "x.1"))


def test_farm_refuses_an_object_replaced_after_its_check(tmp_path):
    """A link must be the very inode that was checked (an object renamed over in between)."""
    obj = tmp_path / "object"
    obj.write_bytes(b"x")
    st = os.lstat(obj)
    items = [LargeFile(b"a/b", Meta(0o644, 0, 0, ()), 1, b"\0" * 32, str(obj))]
    root = str(tmp_path / "deploy")
    assert os.path.isdir(farm.FarmBuilder(root, "x.1", items).wait([(st.st_dev, st.st_ino)]))
    builder = farm.FarmBuilder(root, "x.2", items)
    with pytest.raises(VerificationError, match="a/b: object .* was replaced"):
        builder.wait([(st.st_dev, st.st_ino + 1)])
    builder.cancel()
    assert not os.path.exists(os.path.join(root, farm.TMP_PREFIX + "x.2"))


def test_deploy_mount_library_call_on_the_sample_tree(site):
    repo = Repository.open(site.repo)
    result = deploy(repo, "os/main", site.keys, target=site.target, make_default=False)
    try:
        assert result.mount is not None and result.mount.check.files == result.check.files
        assert_same_tree(site.src, site.target)
    finally:
        md.unmount(repo, site.target)
    undeploy(repo, result.deployment.id)
    _nothing_left(site)
    run_cli("pack", "verify", site.kept_pack(), "--keys", site.keys)  # the pack was not touched


@settings(max_examples=8, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                 HealthCheck.too_slow], deadline=None)
@given(tree=trees)
def test_generated_trees_deploy_mount_exactly(tmp_path_factory, tree):
    where = str(tmp_path_factory.mktemp("gen") / "g e,n:x")
    os.mkdir(where)
    src = os.path.join(where, "src")
    os.mkdir(src)
    materialise(os.fsencode(src), _enlarge(tree))
    made = Site(where, src)
    made.publish("1", 1_700_000_000)
    repo = Repository.open(made.repo)
    try:
        deploy(repo, "os/main", made.keys, target=made.target)
        try:
            assert_same_tree(src, made.target)
        finally:
            md.unmount(repo, made.target)
        assert _leftovers(where) == []
    finally:
        for info in reversed(mounts.mounts_under(where)):
            mounts.umount(info.mount_point, mounts.MNT_DETACH)
