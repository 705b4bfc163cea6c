"""The metacopy layout on this host: real tmpfs and overlay mounts with a data-only layer.

This kernel (6.18) has overlay metacopy and data-only layers but no fs-verity, so the
layout is mounted here with ``verity=off`` after userspace digests (and ``--verify
kernel`` is refused); the kernel's enforcement is proven under qemu (tests/test_boot_vm.py).
The view must equal the committed tree field by field, hardlink groups and files of equal
content with other metadata included; it is read-only; ``--live`` writes to memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct

import pytest
from hypothesis import HealthCheck, given, settings

from overlay import boot_config, metacopy, mounted_farms, mounts, state
from overlay import mount_deployment as md
from overlay.deploy import deploy, deployment_present, undeploy
from overlay.deployment_pack import large_files, open_deployment_pack, trusted_keyring
from overlay.image_layer import ImageMismatch, open_image
from overlay.metacopy import Layout
from overlay.objcheck import Policy
from overlay.staging import Staging
from overlay.unpack_tmpfs import unpack_into_tmpfs
from pack.image import image_digest
from pack.importer import kept_pack_path
from store import xattrs
from store.errors import DeployError, ObjectMismatch
from store.fsverity import digest_fd
from store.ids import RawId
from store.names import show
from store.repo import Repository
from tests.helpers import add_content_twins, assert_same_tree, extra_links, materialise, snapshot, trees
from tests.test_deploy_cli import Site, _enlarge, _leftovers
from tests.test_pack_image import _resign, _version_1

pytestmark = pytest.mark.usefixtures("needs_root")

USERSPACE = Policy.USERSPACE


def _deploy(site: Site, **kwargs):  # type: ignore[no-untyped-def]
    repo = Repository.open(site.repo)
    kwargs.setdefault("policy", USERSPACE)
    return repo, deploy(repo, "os/main", site.keys, layout=Layout.METACOPY, **kwargs)


def _overlay_info(target: str) -> mounts.MountInfo:
    info = mounts.is_mount_point(target)
    assert info is not None and info.fstype == "overlay"
    return info


# -- the formats ------------------------------------------------------------------------------

def test_metacopy_xattr_is_the_kernels_struct_ovl_metacopy():
    digest = bytes(range(32))
    value = metacopy.metacopy_value(digest)
    assert value == b"\x00\x24\x00\x01" + digest and len(value) == 36
    with pytest.raises(ValueError):
        metacopy.metacopy_value(b"x" * 31)


def test_redirect_is_absolute_inside_the_objects_directory():
    assert metacopy.redirect_value("/r/objects", "/r/objects/ab/cd.k.file") == b"/ab/cd.k.file"
    assert metacopy.redirect_value("/r/objects/", "/r/objects/ab/cd.k.file") == b"/ab/cd.k.file"
    for outside in ("/r/objectsX/ab/c", "/r/other/ab/c", "/r/objects/../x/c", "/r/objects/ab//c"):
        with pytest.raises(DeployError):
            metacopy.redirect_value("/r/objects", outside)


def test_state_records_the_layout_and_reads_version_1_as_hardlinks():
    doc = {"format": "sealtree-deployments", "version": 1, "next_serial": 2, "default": None,
           "previous": None, "booted": None,
           "deployments": [{"id": "ab" * 32 + ".1", "commit": "ab" * 32, "ref": "r", "version": "",
                            "created": 1, "pack": "p", "pack_sha256": "00", "keys": "/k",
                            "tries_left": None, "mounted_at": []}]}
    old = state.decode(json.dumps(doc).encode())
    assert old.deployments[0].layout == "hardlinks"
    old.deployments[0].layout = "metacopy"
    again = json.loads(old.encode())
    assert again["version"] == 2 and again["deployments"][0]["layout"] == "metacopy"
    assert state.decode(old.encode()).deployments[0].layout == "metacopy"


def test_boot_config_layout_key():
    assert boot_config.BootConfig().layout is Layout.AUTO
    for value in ("hardlinks", "metacopy", "auto", "MetaCopy"):
        parsed = boot_config.parse_config_text(f"layout = {value}\n", "boot.conf")
        assert parsed.layout is Layout(value.lower())
    with pytest.raises(boot_config.BootConfigError, match="expected one of hardlinks"):
        boot_config.parse_config_text("layout = farm\n", "boot.conf")
    said: list[str] = []
    config = boot_config.apply_cmdline(boot_config.BootConfig(), "sealtree.layout=hardlinks",
                                       said.append)
    assert config.layout is Layout.AUTO and "only the initramfs" in said[0]


def test_auto_is_hardlinks_here_and_metacopy_needs_overlay_verity(site, monkeypatch):
    repo = Repository.open(site.repo)
    keyring = trusted_keyring(site.keys)
    with open_deployment_pack(kept_pack_path(repo, repo.resolve("os/main")), keyring,
                              repo.resolve("os/main")) as (reader, _v):
        items = large_files(repo.objects, reader.manifest)
    # This host has overlay verity (6.18) but its filesystems no fs-verity.
    assert not metacopy.filesystem_has_verity(items[0].obj)
    assert metacopy.choose_layout(Layout.AUTO, items) is Layout.HARDLINKS
    assert metacopy.choose_layout(Layout.METACOPY, items) is Layout.METACOPY
    monkeypatch.setattr(metacopy, "kernel_release", lambda: (6, 1))
    assert metacopy.choose_layout(Layout.AUTO, items) is Layout.HARDLINKS
    with pytest.raises(metacopy.MetacopyUnsupported, match="Linux 6.6"):
        metacopy.choose_layout(Layout.METACOPY, items)
    # A deploy with layout auto here records hardlinks.
    result = deploy(repo, "os/main", site.keys)
    assert result.deployment.layout == "hardlinks" and os.path.isdir(result.path)


# -- the mounted view ---------------------------------------------------------------------------

def _as_version_1(site: Site) -> None:
    """The kept pack replaced by the same pack in format version 1 (no image), imported."""
    with open(site.kept_pack(), "rb") as handle:
        pack = _resign(site.base, _version_1(handle.read()), "v1.pack")
    for obj in Repository.open(site.repo).objects.iter_objects():
        if obj.kind == "image":
            os.unlink(obj.path)
    site.cli("pack", "import", pack, "--keys", site.keys)


def _image_object(repo: Repository) -> str:
    [path] = [o.path for o in repo.objects.iter_objects() if o.kind == "image"]
    return path


@pytest.mark.parametrize("api,pack", [("new", "image"), ("legacy", "image"), ("new", "v1")])
def test_metacopy_view_equals_the_tree_and_is_read_only(site, api, pack):
    if pack == "v1":
        _as_version_1(site)
    repo, result = _deploy(site, target=site.target, api=api)
    dep = result.deployment
    assert dep.layout == "metacopy" and result.path == repo.objects.root
    assert not os.path.lexists(os.path.join(site.repo, "deploy", dep.id))  # no farm
    assert deployment_present(repo, dep)
    mounted = result.mount
    assert mounted is not None and mounted.api == api and mounted.layout == "metacopy"
    # No fs-verity here: the objects were digested in userspace, the kernel does not enforce.
    assert mounted.verity == "off" and not mounted.enforced
    assert result.check.userspace == result.check.files and result.check.kernel == 0
    with open_deployment_pack(site.kept_pack(), trusted_keyring(site.keys),
                              RawId(bytes.fromhex(site.commit))) as (reader, _v):
        signed = reader.image
    if pack == "v1":  # the tmpfs path: the pack unpacked with stubs, no image
        assert signed is None and mounted.lower == "tmpfs" and mounted.image is None
        assert mounted.populate.files > 0
    else:  # the lower layer is the pack's image, checked against the signed digest
        assert signed is not None and mounted.lower == "image" and mounted.image is not None
        assert mounted.image.digest == signed.digest and mounted.image.path == _image_object(repo)
        assert mounted.image.measured == "userspace" and not mounted.image.built
        assert mounted.populate.files == 0  # nothing unpacked
    try:
        assert_same_tree(site.src, site.target)
        info = _overlay_info(site.target)
        assert "ro" in info.options.split(",")
        lowers, data = mounts.overlay_layers(info)
        assert [os.fsdecode(d) for d in data] == [repo.objects.root]
        assert os.path.basename(os.fsdecode(lowers[0])) == dep.id and len(lowers) == 1
        assert b"metacopy=on" in info.raw_super_options
        assert mounted_farms.deployment_mounts(os.path.join(site.repo, "deploy")) == \
            {dep.id: [os.path.abspath(site.target)]}
        for path in ("etc/new", "usr/bin/tool"):
            with pytest.raises(OSError):
                open(os.path.join(site.target, path), "w")
        with pytest.raises(OSError):
            os.chmod(os.path.join(site.target, "usr/bin/tool"), 0o777)
        # overlayfs hides its own xattrs: the stubs' never show in the view.
        assert not [n for n, _v in xattrs.read(os.path.join(site.target, "usr/bin/tool"))
                    if n.startswith(b"trusted.overlay.")]
        assert _leftovers(site.base) == [os.fsencode(site.target)]
        with pytest.raises(DeployError, match="mounted"):
            undeploy(repo, dep.id)
    finally:
        md.unmount(repo, site.target)
    assert _leftovers(site.base) == []
    # mount re-verifies it in its recorded layout, without a farm.
    dep2, again = md.mount_deployment(repo, dep.id, site.target, keys_dir=site.keys,
                                      policy=USERSPACE, api=api)
    try:
        assert again.layout == "metacopy" and again.check.userspace == again.check.files
        assert again.lower == ("tmpfs" if pack == "v1" else "image")
        assert_same_tree(site.src, site.target)
    finally:
        md.unmount(repo, site.target)
    assert dep2.id == dep.id
    repo_state = state.state_file(repo).read()
    assert repo_state.get(dep.id).mounted_at == []


def test_live_metacopy_writes_in_memory(site):
    repo, result = _deploy(site, target=site.target, live=True)
    try:
        info = _overlay_info(site.target)
        assert b"redirect_dir=on" in info.raw_super_options  # "follow" conflicts with an upper
        with open(os.path.join(site.target, "etc", "hostname"), "w") as handle:
            handle.write("changed\n")
        tool = os.path.join(site.target, "usr/bin/tool")
        os.chmod(tool, 0o700)  # a metadata-only copy-up of a stub
        with open(tool, "rb") as handle:
            assert handle.read(4) == b"\x7fELF"
        with open(tool, "ab") as handle:  # a data copy-up, from the object
            handle.write(b"more")
    finally:
        md.unmount(repo, site.target)
    md.mount_deployment(repo, result.deployment.id, site.target, keys_dir=site.keys,
                        policy=USERSPACE)
    try:
        assert_same_tree(site.src, site.target)  # the writes lived in memory only
    finally:
        md.unmount(repo, site.target)


def test_kernel_policy_is_refused_without_fs_verity(site):
    repo = Repository.open(site.repo)
    with pytest.raises(ObjectMismatch, match="the kernel cannot measure"):
        deploy(repo, "os/main", site.keys, layout=Layout.METACOPY, policy=Policy.KERNEL,
               target=site.target)
    assert state.state_file(repo).read().deployments == []
    assert _leftovers(site.base) == [] and os.listdir(site.target) == []


def test_a_changed_object_is_refused_before_mounting(site):
    repo, result = _deploy(site)
    victim = _stubs_and_objects(repo, result.deployment.id, site)["usr/bin/su"]
    os.chmod(victim, 0o644)
    with open(victim, "r+b") as handle:
        handle.write(b"evil")
    with pytest.raises(ObjectMismatch, match="content changed: the userspace fs-verity digest"):
        md.mount_deployment(repo, result.deployment.id, site.target, keys_dir=site.keys,
                            policy=USERSPACE)
    assert _leftovers(site.base) == []


# -- the image object -----------------------------------------------------------------------------

def test_a_missing_image_is_built_once(site):
    repo = Repository.open(site.repo)
    image = _image_object(repo)
    with open(image, "rb") as handle:
        original = handle.read()
    os.unlink(image)
    out = json.loads(site.cli("deploy", "os/main", "--keys", site.keys, "--layout", "metacopy",
                              "--verify", "userspace", "--mount", site.target, "--read-only",
                              "--json").stdout)
    try:
        assert out["lower"] == "image" and out["image"]["built"] is True
        assert out["image"]["path"] == image and out["image"]["source"] == "file"
        with open(image, "rb") as handle:
            assert handle.read() == original  # the same bytes: the recipe is deterministic
        assert stat.S_IMODE(os.lstat(image).st_mode) == 0o444
        assert_same_tree(site.src, site.target)
    finally:
        site.cli("umount", site.target)
    before = os.lstat(image)
    out = json.loads(site.cli("mount", out["id"], site.target, "--keys", site.keys,
                              "--verify", "userspace", "--read-only", "--json").stdout)
    try:
        assert out["lower"] == "image" and out["image"]["built"] is False
        after = os.lstat(image)
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        status = json.loads(site.cli("status", "--json").stdout)
        [shown] = status["deployments"]
        assert shown["image"] == {"digest": out["image"]["digest"], "size": len(original),
                                  "path": image, "present": True}
        assert shown["mounted_at"] == [os.path.realpath(site.target)]
    finally:
        site.cli("umount", site.target)


def test_a_changed_image_is_refused_naming_it_and_nothing_is_mounted(site):
    repo, result = _deploy(site, make_default=False)
    image = _image_object(repo)
    os.chmod(image, 0o644)
    with open(image, "r+b") as handle:
        handle.seek(4096)  # past the superblock: an inode or a directory block
        byte = handle.read(1)
        handle.seek(4096)
        handle.write(bytes([byte[0] ^ 1]))
    os.chmod(image, 0o444)
    with pytest.raises(ImageMismatch, match="image object changed: userspace fs-verity") as err:
        md.mount_deployment(repo, result.deployment.id, site.target, keys_dir=site.keys,
                            policy=USERSPACE)
    assert err.value.path == image and show(image) in str(err.value)
    assert _leftovers(site.base) == [] and os.listdir(site.target) == []
    failed = site.cli("mount", result.deployment.id, site.target, "--keys", site.keys,
                      "--verify", "userspace", check=False)
    assert failed.returncode != 0 and "image object changed" in failed.stderr
    assert "Traceback" not in failed.stderr and image in failed.stderr
    # Changed to another size: refused before any digest.
    os.chmod(image, 0o644)
    with open(image, "ab") as handle:
        handle.write(b"\0" * 4096)
    with pytest.raises(ImageMismatch, match="bytes, the pack signs"):
        deploy(repo, "os/main", site.keys, layout=Layout.METACOPY, policy=USERSPACE,
               target=site.target)
    assert _leftovers(site.base) == [] and os.listdir(site.target) == []
    assert len(state.state_file(repo).read().deployments) == 1  # the new one not recorded


def test_the_image_layer_is_read_only_and_gone_with_the_overlay(site):
    repo, result = _deploy(site, target=site.target, live=True)
    try:
        # The erofs mount is detached from the tree (overlayfs holds it): only the overlay
        # and nothing of the staging directory is left under the repository or the target.
        assert [m.fstype for m in mounts.mounts_under(site.base)] == ["overlay"]
        # --live: writes go to the upper tmpfs, never to the image.
        with open(os.path.join(site.target, "etc", "new file"), "w") as handle:
            handle.write("x")
        image = _image_object(repo)
        with open(image, "rb") as handle:
            assert image_digest(handle.read()) == result.mount.image.digest
    finally:
        md.unmount(repo, site.target)
    assert _leftovers(site.base) == []


def test_the_image_through_a_loop_device_shows_the_same_tree(site):
    """The path kernels before 6.12 take (no file-backed erofs): the checked image attached
    read-only to a loop device, under the overlay over the objects; the device goes with it."""
    repo, result = _deploy(site, make_default=False)
    dep = result.deployment
    commit = RawId(bytes.fromhex(site.commit))
    with open_deployment_pack(site.kept_pack(), trusted_keyring(site.keys), commit) as (reader, _v):
        image = open_image(repo.objects, reader, USERSPACE)
    try:
        with Staging(repo.layout.tmp) as stage:
            source = stage.image(image.fd, dep.id, loop=True)
            assert source.startswith("/dev/loop")
            stage.mount(site.target, None, data=repo.objects.root, verity="off")
            stage.keep()
    finally:
        image.close()
    try:
        assert_same_tree(site.src, site.target)
        assert mounted_farms.deployment_mounts(os.path.join(site.repo, "deploy")) == \
            {dep.id: [os.path.abspath(site.target)]}
        backing = f"/sys/block/{os.path.basename(source)}/loop/backing_file"
        with open(backing) as handle:
            assert handle.read().strip() == image.path
    finally:
        md.unmount(repo, site.target)
    assert not os.path.exists(backing)  # autoclear: detached with the last mount
    assert _leftovers(site.base) == []


def _stubs_and_objects(repo: Repository, dep_id: str, site: Site) -> dict[str, str]:
    """Unpack the deployment's stubs into a tmpfs of our own; check each stub; return
    tree path -> the object file its redirect names."""
    keyring = trusted_keyring(site.keys)
    commit = RawId(bytes.fromhex(dep_id.split(".")[0]))
    where = os.path.join(site.base, "stubs")
    os.mkdir(where)
    found: dict[str, str] = {}
    with open_deployment_pack(kept_pack_path(repo, commit), keyring, commit) as (reader, _v), \
            mounts.tmpfs(where):
        items = large_files(repo.objects, reader.manifest)
        plan = metacopy.plan_stubs(repo.objects, items)
        unpack_into_tmpfs(reader, where, plan)
        for item in items:
            stub = os.path.join(os.fsencode(where), item.path)
            st = os.lstat(stub)
            assert stat.S_ISREG(st.st_mode) and st.st_size == item.size
            assert st.st_blocks == 0  # sparse: no data in memory
            assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == \
                (item.meta.mode, item.meta.uid, item.meta.gid)
            got = dict(xattrs.read(stub))
            redirect = got.pop(metacopy.REDIRECT_XATTR)
            value = got.pop(metacopy.METACOPY_XATTR)
            assert tuple(sorted(got.items())) == tuple(sorted(item.meta.xattrs))
            # The redirect points inside the data layer only: absolute, normalised, no "..".
            assert redirect.startswith(b"/") and os.path.normpath(redirect) == redirect
            assert b".." not in redirect.split(b"/")
            obj = os.fsencode(repo.objects.root) + redirect
            assert os.path.realpath(obj).startswith(os.fsencode(repo.objects.root) + b"/")
            assert value == b"\x00\x24\x00\x01" + item.digest
            fd = os.open(obj, os.O_RDONLY)
            try:
                assert digest_fd(fd)[0] == item.digest
            finally:
                os.close(fd)
            found[os.fsdecode(item.path)] = os.fsdecode(obj)
    return found


def test_stubs_redirect_inside_the_objects_and_share_one_object_per_content(site):
    repo, result = _deploy(site)
    found = _stubs_and_objects(repo, result.deployment.id, site)
    # Same bytes, other owner and mode: two stubs, one object.
    assert found["usr/lib/same content"] == found["usr/lib/same,content:2"]
    assert found["usr/bin/tool"] != found["usr/lib/same content"]
    # That object is the first one's in manifest order; the other's own object is unused.
    assert len(set(found.values())) == result.check.files < len(found)


def test_undeploy_of_a_metacopy_deployment(site):
    repo, result = _deploy(site, make_default=False)
    assert undeploy(repo, result.deployment.id).layout == "metacopy"
    assert state.state_file(repo).read().deployments == []
    assert os.path.isdir(repo.objects.root)


# -- generated trees and a Debian tree ------------------------------------------------------------

def _deploy_and_compare(where: str, src: str) -> None:
    made = Site(where, src)
    made.publish("1", 1_700_000_000)
    repo, result = _deploy(made, target=made.target)
    try:
        assert result.mount is not None and result.mount.layout == "metacopy"
        assert_same_tree(src, made.target)
        # Every large file's content is the object's: reading through the stubs.
        nodes, _groups = snapshot(made.target)
        assert len(nodes) > 0
    finally:
        md.unmount(repo, made.target)
    assert _leftovers(where) == []


@settings(max_examples=8, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                 HealthCheck.too_slow], deadline=None)
@given(tree=trees, links=extra_links)
def test_generated_trees_in_metacopy_layout(tmp_path_factory, tree, links):
    where = str(tmp_path_factory.mktemp("mc") / "m e,t:a")
    os.mkdir(where)
    src = os.path.join(where, "src")
    os.mkdir(src)
    big = add_content_twins(_enlarge(tree))  # two stubs of other metadata, one object
    materialise(os.fsencode(src), big, links)
    try:
        _deploy_and_compare(where, src)
    finally:
        for info in reversed(mounts.mounts_under(where)):
            mounts.umount(info.mount_point, mounts.MNT_DETACH)


def test_directories_whose_metadata_changes_what_is_made_in_them(base):
    """A setgid directory (a new inode would take its group), directories with xattrs (a
    default ACL would change a new inode's mode), one we could only fill by overriding its
    permissions: their stubs, inline files and symlinks come out as committed (an unpack
    that gave directories their metadata before filling them would get these wrong)."""
    acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, 0xFFFFFFFF)
                                          for tag, perm in ((0x01, 7), (0x04, 0), (0x20, 0)))
    inside = {b"big": ("file", b"B" * 9000, 0o644, (0, 0), []),
              b"small": ("file", b"s", 0o664, (0, 0), []),
              b"link": ("symlink", b"big", (0, 0), []),
              b"sub": ("dir", {b"deep": ("file", b"D" * 9000, 0o755, (0, 0), [])}, 0o755, (0, 0), [])}
    tree = {b"sg": ("dir", dict(inside), 0o2775, (0, 50), []),
            b"acl": ("dir", dict(inside), 0o755, (0, 0), [(b"system.posix_acl_default", acl)]),
            b"both": ("dir", dict(inside), 0o2750, (1000, 50), [(b"user.d", b"v")]),
            b"ro": ("dir", dict(inside), 0o555, (1000, 2), []),
            b"mine": ("dir", dict(inside), 0o700, (0, 0), [])}
    src = os.path.join(base, "src")
    os.mkdir(src)
    materialise(os.fsencode(src), tree)
    _deploy_and_compare(base, src)


def test_debian_minbase_in_metacopy_layout(base, minbase):
    tree = minbase
    made = Site(base, tree)
    made.publish("1", 1_700_000_000)
    repo, result = _deploy(made, target=made.target)
    try:
        assert result.check.files > 100 and result.mount is not None
        assert_same_tree(tree, made.target)
        for path in ("usr/bin/bash", "usr/lib/x86_64-linux-gnu/libc.so.6"):
            with open(os.path.join(made.target, path), "rb") as a, \
                    open(os.path.join(tree, path), "rb") as b:
                assert hashlib.sha256(a.read()).digest() == hashlib.sha256(b.read()).digest()
    finally:
        md.unmount(repo, made.target)
