"""Deployments end to end through the CLI: commit -> keygen -> pack build -> sign -> import
-> deploy -> mount -> compare -> umount, every tampering case refused before anything is
mounted (with the path named), live mode, deployment state, prune.

Real tmpfs and overlay mounts (as root) in directories whose names hold spaces, commas and
colons; every test checks /proc/self/mountinfo has nothing left below its directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overlay import mounts
from overlay.deploy import deploy
from overlay.mount_deployment import mount_deployment, unmount
from overlay.state import StateFile, count_try
from store.repo import Repository
from tests.helpers import assert_same_tree, materialise, run_cli, trees

pytestmark = pytest.mark.usefixtures("needs_root")

BIG = 20000  # above the default inline limit: a large object


def _leftovers(path: str) -> list[bytes]:
    return [m.mount_point for m in mounts.mounts_under(path)]


def sample_tree(root: str) -> None:
    """Every kind of path: large and inline files, identical content with different metadata,
    hardlink groups (large and inline), xattrs, setuid, symlinks, odd names, empty dirs."""
    def write(rel: str, data: bytes, mode: int = 0o644, owner: tuple[int, int] = (0, 0),
              xattrs: dict[str, bytes] | None = None) -> str:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
        os.chown(path, *owner)
        for name, value in (xattrs or {}).items():
            os.setxattr(path, name, value)
        os.chmod(path, mode)
        return path

    big = write("usr/bin/tool", b"\x7fELF" + b"t" * BIG, 0o755)
    os.link(big, os.path.join(root, "usr/bin/tool-again"))
    write("usr/bin/su", b"S" * BIG, 0o4755)
    write("usr/lib/same content", b"t" * BIG, 0o644, (1000, 1000))  # same bytes as below,
    write("usr/lib/same,content:2", b"t" * BIG, 0o600, (0, 0))  # other metadata: another inode
    write("opt/with xattr", b"X" * BIG, 0o644, (0, 0), {"user.origin": b"vendor",
                                                       "trusted.t": b"\x00\xff"})
    small = write("etc/hostname", b"device\n")
    os.link(small, os.path.join(root, "etc/hostname.link"))
    write("etc/empty", b"")
    write("etc/secret", b"s3cret", 0o600, (0, 42))
    os.makedirs(os.path.join(root, "var/empty dir"))
    os.chmod(os.path.join(root, "var"), 0o711)
    os.makedirs(os.path.join(root, "deep/a/b/c"))
    write("deep/a/b/c/large", os.urandom(3 * BIG))
    os.symlink("usr/bin", os.path.join(root, "bin"))
    os.symlink("/nonexistent/target", os.path.join(root, "etc/dangling"))
    os.lchown(os.path.join(root, "etc/dangling"), 7, 8)
    write("\xff-not-utf8".encode("latin-1").decode("utf-8", "surrogateescape"), b"Z" * BIG)


class Site:
    """A repository with a committed, packed, signed and imported tree; keys trusted and not."""

    def __init__(self, base: str, src: str) -> None:
        self.base = base
        self.src = src
        self.repo = os.path.join(base, "repo")
        self.keys = os.path.join(base, "keys")
        self.rogue_keys = os.path.join(base, "rogue keys")
        self.target = os.path.join(base, "root, mounted: here")
        os.mkdir(self.target)
        run_cli("init", repo=self.repo)
        for name, keyring in (("vendor", self.keys), ("rogue", self.rogue_keys)):
            run_cli("keygen", os.path.join(base, name))
            os.mkdir(keyring)
            shutil.copy(os.path.join(base, name + ".pub"), keyring)

    def publish(self, version: str, timestamp: int, key: str = "vendor", src: str | None = None) -> str:
        """Commit, build, sign and import; return the pack path (outside the repository)."""
        out = run_cli("commit", "-b", "os/main", "--version", version, "--timestamp", str(timestamp),
                      "--json", src or self.src, repo=self.repo).stdout
        commit = json.loads(out)["commit"]
        pack = os.path.join(self.base, f"os-{version}.pack")
        run_cli("pack", "build", "os/main", "-o", pack, repo=self.repo)
        run_cli("pack", "sign", pack, "--key", os.path.join(self.base, key))
        run_cli("pack", "import", pack, "--keys", self.keys, repo=self.repo)
        self.commit = commit
        return pack

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, repo=self.repo, check=check)

    def deploy(self, *extra: str) -> str:
        out = self.cli("deploy", "os/main", "--keys", self.keys, *extra).stdout
        return out.strip().splitlines()[-1].split()[-1]

    def kept_pack(self) -> str:
        return os.path.join(self.repo, "packs", f"{self.commit}.pack")

    def farm(self, dep: str) -> str:
        return os.path.join(self.repo, "deploy", dep)

    def obj_of(self, dep: str, rel: str) -> str:
        """The object file the farm links at ``rel``."""
        st = os.lstat(os.path.join(self.farm(dep), rel))
        for directory, _dirs, files in os.walk(os.path.join(self.repo, "objects")):
            for name in files:
                path = os.path.join(directory, name)
                if os.lstat(path).st_ino == st.st_ino:
                    return path
        raise AssertionError(f"no object for {rel}")


def published_site(base: str, fill: Callable[[str], None] = sample_tree) -> Site:
    """A tree made by ``fill`` (the sample tree) committed, packed, signed and imported."""
    src = os.path.join(base, "src tree")
    os.mkdir(src)
    fill(src)
    made = Site(base, src)
    made.publish("1.0", 1_700_000_000)
    return made


def test_deploy_mount_equals_the_tree_and_is_read_only(site):
    dep = site.deploy()
    assert dep.startswith(site.commit + ".")
    farm = site.farm(dep)
    # The farm holds only the large files, as hardlinks into the objects.
    assert os.path.samestat(os.lstat(os.path.join(farm, "usr/bin/tool")),
                            os.lstat(site.obj_of(dep, "usr/bin/tool")))
    assert not os.path.lexists(os.path.join(farm, "etc"))
    assert not os.path.lexists(os.path.join(farm, "bin"))
    site.cli("mount", dep, site.target, "--keys", site.keys, "--read-only")
    try:
        assert_same_tree(site.src, site.target)
        with pytest.raises(OSError):
            open(os.path.join(site.target, "etc", "new"), "w")
        with pytest.raises(OSError):
            os.chmod(os.path.join(site.target, "usr/bin/tool"), 0o777)
        info = mounts.is_mount_point(site.target)
        assert info is not None and info.fstype == "overlay" and "ro" in info.options.split(",")
        # Only the overlay is left in the mount tree: the tmpfs layers were detached.
        assert _leftovers(site.base) == [os.fsencode(site.target)]
        status = json.loads(site.cli("status", "--json").stdout)
        assert status["deployments"][0]["mounted_at"] == [os.path.realpath(site.target)]
    finally:
        site.cli("umount", site.target)
    assert _leftovers(site.base) == []
    status = json.loads(site.cli("status", "--json").stdout)
    assert status["deployments"][0]["mounted_at"] == []


def test_live_mode_writes_vanish(site):
    dep = site.deploy()
    site.cli("mount", "--live", dep, site.target, "--keys", site.keys)
    try:
        with open(os.path.join(site.target, "etc", "hostname"), "w") as handle:
            handle.write("changed\n")
        with open(os.path.join(site.target, "usr/bin/tool"), "ab") as handle:
            handle.write(b"appended")
        os.mkdir(os.path.join(site.target, "new dir"))
    finally:
        site.cli("umount", site.target)
    assert _leftovers(site.base) == []
    # The object under the farm was not touched, and a fresh mount shows the tree again.
    site.cli("mount", dep, site.target, "--keys", site.keys, "--read-only")
    try:
        assert_same_tree(site.src, site.target)
    finally:
        site.cli("umount", site.target)


def _refused(site: Site, dep: str, message: str, *, code: int = 15, keys: str | None = None) -> None:
    args = ["mount", dep, site.target, "--keys", keys or site.keys]
    proc = site.cli(*args, check=False)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr, proc.stderr
    assert _leftovers(site.base) == []
    assert os.listdir(site.target) == []
    assert not [n for n in os.listdir(os.path.join(site.repo, "tmp")) if n.startswith("mount-")]


def _keep_meta_write(path: str, data: bytes) -> None:
    st = os.lstat(path)
    with open(path, "r+b") as handle:
        handle.write(data)
    os.chmod(path, st.st_mode & 0o7777)


def test_object_content_changed_is_refused(site):
    dep = site.deploy()
    _keep_meta_write(site.obj_of(dep, "usr/bin/su"), b"evil")
    _refused(site, dep, "usr/bin/su: content changed: the userspace fs-verity digest")


def test_object_chmod_is_refused(site):
    dep = site.deploy()
    os.chmod(site.obj_of(dep, "usr/bin/tool"), 0o4755)
    _refused(site, dep, "usr/bin/tool: mode is 0o4755, the manifest says 0o755")


def test_object_chown_is_refused(site):
    dep = site.deploy()
    os.chown(site.obj_of(dep, "opt/with xattr"), 1000, 0)
    _refused(site, dep, "opt/with xattr: owner is 1000:0, the manifest says 0:0")


def test_object_xattr_change_is_refused(site):
    dep = site.deploy()
    os.setxattr(site.obj_of(dep, "opt/with xattr"), "user.origin", b"attacker")
    _refused(site, dep, "opt/with xattr: xattrs differ")


def test_object_replaced_by_another_is_refused(site):
    dep = site.deploy()
    victim = site.obj_of(dep, "deep/a/b/c/large")
    other = site.obj_of(dep, "usr/bin/su")
    os.rename(victim, victim + ".gone")
    shutil.copy2(other, victim)
    _refused(site, dep, "deep/a/b/c/large: ")


def test_swapped_hardlink_in_the_deploy_dir_is_refused(site):
    dep = site.deploy()
    link = os.path.join(site.farm(dep), "usr/lib/same content")
    os.unlink(link)
    os.link(site.obj_of(dep, "usr/lib/same,content:2"), link)  # same bytes, other metadata
    _refused(site, dep, "usr/lib/same content: ")


def test_file_added_to_the_deploy_dir_is_refused(site):
    dep = site.deploy()
    with open(os.path.join(site.farm(dep), "usr", "bin", "backdoor"), "w") as handle:
        handle.write("#!/bin/sh\n")
    _refused(site, dep, "usr/bin/backdoor: unexpected file in the farm")


def test_pack_byte_flipped_is_refused(site):
    dep = site.deploy()
    pack = site.kept_pack()
    os.chmod(pack, 0o644)
    with open(pack, "r+b") as handle:
        handle.seek(os.path.getsize(pack) // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x01]))
    _refused(site, dep, f"{pack}: pack sha256", code=12)
    assert "does not verify over this pack" in site.cli("mount", dep, site.target, "--keys", site.keys,
                                                  check=False).stderr


def test_pack_signed_by_an_untrusted_key_is_refused(site):
    dep = site.deploy()
    pack = site.kept_pack()
    os.unlink(pack + ".sig")
    run_cli("pack", "sign", pack, "--key", os.path.join(site.base, "rogue"))
    _refused(site, dep, f"{pack}: pack sha256", code=12)
    _refused(site, dep, "not in the keyring", code=12)
    # ...and deploying it is refused too, before anything is built.
    proc = site.cli("deploy", "os/main", "--keys", site.keys, check=False)
    assert proc.returncode == 12 and "not in the keyring" in proc.stderr
    # The rogue keyring would accept it: the keyring is what is trusted.
    _mount_ok(site, dep, keys=site.rogue_keys)


def _mount_ok(site: Site, dep: str, keys: str | None = None) -> None:
    site.cli("mount", dep, site.target, "--keys", keys or site.keys)
    site.cli("umount", site.target)
    assert _leftovers(site.base) == []


def test_older_pack_is_refused(site, base):
    old_commit = site.commit
    newer_src = os.path.join(base, "newer tree")
    shutil.copytree(site.src, newer_src, symlinks=True)
    with open(os.path.join(newer_src, "etc", "hostname"), "w") as handle:
        handle.write("v2\n")
    site.publish("2.0", 1_700_000_100, src=newer_src)
    site.deploy()
    # A replayed older pack (a different commit, lower version) is refused at deploy...
    proc = site.cli("deploy", old_commit, "--keys", site.keys, check=False)
    assert proc.returncode == 13 and "not newer" in proc.stderr, proc.stderr
    # ...unless allowed explicitly.
    dep = site.cli("deploy", old_commit, "--keys", site.keys, "--allow-downgrade").stdout.split()[-1]
    assert dep.startswith(old_commit)


def test_kernel_policy_fails_closed_here(site):
    from store.kverity import is_supported
    if is_supported(os.path.join(site.repo, "config")):
        pytest.skip("this filesystem has fs-verity")
    proc = site.cli("deploy", "os/main", "--keys", site.keys, "--verify", "kernel", check=False)
    assert proc.returncode == 15 and "the kernel cannot measure" in proc.stderr
    assert json.loads(site.cli("status", "--json").stdout)["deployments"] == []


def test_deployment_state_commands(site, base):
    first = site.deploy("--no-count")
    newer_src = os.path.join(base, "newer")
    shutil.copytree(site.src, newer_src, symlinks=True)
    os.unlink(os.path.join(newer_src, "etc", "empty"))
    site.publish("2.0", 1_700_000_100, src=newer_src)
    second = site.deploy("--tries", "2")
    doc = json.loads(site.cli("status", "--json").stdout)
    by_id = {d["id"]: d for d in doc["deployments"]}
    assert doc["default"] == second and doc["previous"] == first
    assert by_id[second]["tries_left"] == 2 and by_id[first]["tries_left"] is None
    assert by_id[second]["default"] and by_id[first]["previous"]
    assert by_id[second]["version"] == "2.0" and by_id[second]["ref"] == "os/main"
    assert "boot tries left: 2" in site.cli("status").stdout
    site.cli("mark-good")
    assert json.loads(site.cli("status", "--json").stdout)["deployments"][1]["tries_left"] is None
    site.cli("rollback")
    doc = json.loads(site.cli("status", "--json").stdout)
    assert (doc["default"], doc["previous"]) == (first, second)
    proc = site.cli("undeploy", first, check=False)
    assert proc.returncode == 14 and "is the default" in proc.stderr
    site.cli("set-default", second, "--tries", "1")
    site.cli("mount", "previous", site.target, "--keys", site.keys, "--read-only")
    try:
        assert_same_tree(site.src, site.target)
        proc = site.cli("undeploy", first, check=False)
        assert proc.returncode == 14 and "is mounted" in proc.stderr
    finally:
        site.cli("umount", site.target)
    site.cli("undeploy", first)
    assert not os.path.exists(site.farm(first))
    assert [d["id"] for d in json.loads(site.cli("status", "--json").stdout)["deployments"]] == [second]


def test_status_says_where_the_next_boot_goes(site):
    first = site.deploy("--no-count")
    second = site.deploy("--tries", "1")
    with StateFile(os.path.join(site.repo, "deploy")).update() as state:
        count_try(state, second)  # one boot spent: its tries are used up
    doc = json.loads(site.cli("status", "--json").stdout)
    assert doc["default"] == second and doc["next_boot"] == first
    assert [d["next_boot"] for d in doc["deployments"]] == [True, False]
    assert f"boot tries left: 0 (the next boot falls back to {first})" in site.cli("status").stdout
    site.cli("mark-good", second)
    assert json.loads(site.cli("status", "--json").stdout)["next_boot"] == second


def test_prune_keeps_what_deployments_need(site):
    dep = site.deploy()
    # Drop the ref: only the deployment still needs the commit and its objects.
    Repository.open(site.repo).refs.update("os/main", None, bytes.fromhex(site.commit))
    site.cli("prune")
    _mount_ok(site, dep)
    assert '"ok": true' in site.cli("fsck", "--json").stdout


# -- generated trees and the Debian tree (library calls: no process per step) ----------------

def _deploy_and_compare(src: str, base: str) -> None:
    site = Site(base, src)
    site.publish("1", 1_700_000_000)
    repo = Repository.open(site.repo)
    result = deploy(repo, "os/main", site.keys)
    _dep, mounted = mount_deployment(repo, result.deployment.id, site.target, keys_dir=site.keys)
    try:
        assert_same_tree(src, site.target)
    finally:
        unmount(repo, site.target)
    assert _leftovers(base) == []
    assert mounted.check.files == result.check.files


@settings(max_examples=10, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                  HealthCheck.too_slow], deadline=None)
@given(tree=trees, links=st.lists(st.tuples(st.integers(0, 50), st.binary(min_size=1, max_size=4).filter(
    lambda n: b"/" not in n and b"\0" not in n)), max_size=3))
def test_generated_trees_mount_exactly(tmp_path_factory, tree, links):
    base = str(tmp_path_factory.mktemp("gen") / "g e,n:x")
    os.mkdir(base)
    src = os.path.join(base, "src")
    os.mkdir(src)
    # Make some files large, so both layers are exercised.
    materialise(os.fsencode(src), _enlarge(tree), links)
    try:
        _deploy_and_compare(src, base)
    finally:
        for info in reversed(mounts.mounts_under(base)):
            mounts.umount(info.mount_point, mounts.MNT_DETACH)


def _enlarge(tree: dict) -> dict:
    out = {}
    for name, node in tree.items():
        if node[0] == "file" and len(node[1]) % 3 == 0:
            node = ("file", node[1] * (1 + 5000 // max(len(node[1]), 1)) or b"L" * 5000, *node[2:])
        elif node[0] == "dir":
            node = ("dir", _enlarge(node[1]), *node[2:])
        out[name] = node
    return out


def test_debian_minbase_mounts_exactly(base, minbase):
    _deploy_and_compare(minbase, base)


def test_legacy_mount_api_end_to_end(site):
    """The mount(2) path (what a kernel before 6.7 gets): layer paths escaped, same view."""
    repo = Repository.open(site.repo)
    dep = deploy(repo, "os/main", site.keys).deployment
    _dep, result = mount_deployment(repo, dep.id, site.target, keys_dir=site.keys, api="legacy")
    try:
        assert result.api == "legacy"
        assert_same_tree(site.src, site.target)
        info = mounts.is_mount_point(site.target)
        assert info is not None and b"\\," in info.super_options and b"\\:" in info.super_options
    finally:
        unmount(repo, site.target)
    assert _leftovers(site.base) == []


def test_umount_without_the_repository(site):
    first = site.deploy()
    site.deploy()
    site.cli("mount", first, site.target, "--keys", site.keys)
    run_cli("umount", site.target)  # no --repo: the state still lists the mount...
    assert _leftovers(site.base) == []
    doc = json.loads(site.cli("status", "--json").stdout)
    assert all(d["mounted_at"] == [] for d in doc["deployments"])  # ...status checks mountinfo
    site.cli("undeploy", first)  # ...and undeploy is not blocked by a mount that is gone
    proc = run_cli("umount", site.target, check=False)
    assert proc.returncode == 16 and "not mounted" in proc.stderr


def test_metacopy_layout_from_the_command_line(site):
    out = site.cli("deploy", "os/main", "--keys", site.keys, "--verify", "userspace",
                   "--layout", "metacopy", "--mount", site.target, "--read-only").stdout
    dep = out.strip().splitlines()[-1].split()[-1]
    try:
        assert "layout metacopy" in out
        assert "the kernel does not enforce" in out  # this host has no fs-verity
        assert not os.path.lexists(site.farm(dep))  # no farm in this layout
        assert_same_tree(site.src, site.target)
        status = json.loads(site.cli("status", "--json").stdout)
        (doc,) = [d for d in status["deployments"] if d["id"] == dep]
        assert doc["layout"] == "metacopy" and doc["present"] is True
        assert doc["mounted_at"] == [os.path.realpath(site.target)]
    finally:
        site.cli("umount", site.target)
    refused = site.cli("mount", dep, site.target, "--keys", site.keys, "--verify", "kernel", check=False)
    assert refused.returncode != 0 and _leftovers(site.base) == []
