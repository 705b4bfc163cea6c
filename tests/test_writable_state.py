"""Writable state (overlay/writable.py, overlay/deploy_state.py, overlay/boot_files.py): a
deployment's own /etc, the shared /var and a /tmp tmpfs over its read-only tree; the 3-way
/etc merge on redeploy; live mode; the boot files; the boot verifier mounting the state.

Real tmpfs, overlay and bind mounts, as root; real SIGKILLs.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from overlay import boot, boot_config, boot_files, mounts
from overlay.layout import DeployLayout
from overlay.objcheck import Policy
from pack.manifest import ManifestEntry
from store.ids import RawId
from store.model import Entry, Kind, Meta
from tests.helpers import ROOT
from tests.test_deploy_cli import Site, _leftovers
from tests.vm import scenario

pytestmark = pytest.mark.usefixtures("needs_root")

BIG = 70_000  # above the pack's inline limit: a large object
KERNEL_10 = b"\x7fkernel 6.1.0-10 " + b"k" * BIG
KERNEL_9 = b"kernel 6.1.0-9"
INITRD_10 = b"initrd 6.1.0-10\n"


def os_tree(root: str, release: int) -> None:
    """A small OS tree laid out as ostree wants one: /home a symlink into /var, an empty
    /etc/machine-id, a kernel and an initramfs in /boot.  Release 2 changes the vendor's
    configuration: app.conf and both.conf changed, gone.conf removed, new.conf added."""
    def write(rel: str, data: bytes, mode: int = 0o644, owner: tuple[int, int] = (0, 0)) -> None:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
        os.chown(path, *owner)
        os.chmod(path, mode)

    write("usr/bin/tool", b"\x7fELF" + b"t" * BIG, 0o755)
    write("etc/hostname", b"device\n")
    write("etc/machine-id", b"")  # systemd generates it at first boot
    write("etc/empty-too", b"")  # as empty as machine-id: must stay its own file
    write("etc/keep.conf", b"vendor keep\n")
    write("etc/app.conf", f"vendor app {release}\n".encode())
    write("etc/both.conf", f"vendor both {release}\n".encode())
    write("etc/shadow", b"root:*:19000:0:99999:7:::\n", 0o640, (0, 42))
    write("etc/large.conf", f"release {release}\n".encode() * (BIG // 10))  # a large object
    if release == 1:
        write("etc/gone.conf", b"dropped in release 2\n")
    else:
        write("etc/new.conf", b"added in release 2\n")
    write("var/lib/dpkg/status", f"release {release}\n".encode())
    write("var/lib/big.db", b"D" * BIG, 0o600, (0, 42))
    os.makedirs(os.path.join(root, "var/home/user"))
    os.symlink("var/home", os.path.join(root, "home"))
    os.makedirs(os.path.join(root, "tmp"))
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    write("boot/vmlinuz-6.1.0-9-amd64", KERNEL_9)
    write("boot/vmlinuz-6.1.0-10-amd64", KERNEL_10)
    write("boot/initrd.img-6.1.0-10-amd64", INITRD_10)
    write("boot/initrd.img-6.1.0-9-amd64", b"initrd 9\n")


class StateSite(Site):
    def __init__(self, base: str) -> None:
        self.trees = [os.path.join(base, f"tree {n}") for n in (1, 2)]
        for number, tree in enumerate(self.trees, 1):
            os.mkdir(tree)
            os_tree(tree, number)
        super().__init__(base, self.trees[0])
        self.layout = DeployLayout(os.path.join(self.repo, "deploy"))

    def release(self, number: int) -> None:
        self.publish(f"{number}.0", 1_700_000_000 + number, src=self.trees[number - 1])

    def mount(self, dep: str, *extra: str) -> str:
        return self.cli("mount", dep, self.target, "--keys", self.keys, *extra).stdout

    def umount(self) -> None:
        self.cli("umount", self.target)
        assert _leftovers(self.base) == []

    def status(self) -> dict:  # type: ignore[type-arg]
        return json.loads(self.cli("status", "--json").stdout)  # type: ignore[no-any-return]

    def at(self, rel: str) -> Path:
        return Path(self.target) / rel


@pytest.fixture
def site(base):  # not conftest's: two releases of its own OS tree, the first imported
    made = StateSite(base)
    made.release(1)
    return made


def _mount_point(path: Path) -> mounts.MountInfo:
    info = mounts.is_mount_point(path)
    assert info is not None, f"{path} is not a mount point"
    return info


def test_state_is_writable_persists_and_the_tree_stays_read_only(site):
    out = site.cli("deploy", "os/main", "--keys", site.keys).stdout
    dep = out.strip().splitlines()[-1].split()[-1]
    assert "/etc: copied from the release" in out
    assert f"/var: seeded from this tree at {site.layout.var}" in out
    assert "vmlinuz (/boot/vmlinuz-6.1.0-10-amd64)" in out  # 10 > 9, as numbers
    assert "initrd.img (/boot/initrd.img-6.1.0-10-amd64)" in out
    assert (Path(site.layout.etc(dep)) / "shadow").stat().st_gid == 42  # exact metadata
    # large files are copies of their objects, never hardlinks to them
    large = Path(site.layout.etc(dep)) / "large.conf"
    assert large.read_bytes() == b"release 1\n" * (BIG // 10) and large.stat().st_nlink == 1
    big = Path(site.layout.var) / "lib/big.db"
    assert big.read_bytes() == b"D" * BIG and big.stat().st_nlink == 1
    assert (big.stat().st_mode & 0o7777, big.stat().st_gid) == (0o600, 42)
    said = site.mount(dep)
    assert "persistent state: /etc from" in said and "/tmp tmpfs" in said
    try:
        assert _mount_point(site.at("etc")).fstype != "overlay"
        assert _mount_point(site.at("var")).fstype != "overlay"
        tmp = _mount_point(site.at("tmp"))
        assert tmp.fstype == "tmpfs" and {"nosuid", "nodev"} <= set(tmp.options.split(","))
        assert stat.S_IMODE(site.at("tmp").stat().st_mode) == 0o1777
        site.at("etc/hostname").write_text("changed\n")
        site.at("etc/added").write_text("mine\n")
        site.at("var/lib/written").write_text("kept\n")
        site.at("home/user/notes").write_text("in /var/home\n")  # through the tree's symlink
        site.at("tmp/scratch").write_text("gone at unmount\n")
        for read_only in ("usr/bin/new", "new-file"):
            with pytest.raises(OSError):
                site.at(read_only).write_text("x")
        # machine-id and its empty twin are separate files (the tmpfs shares identical ones)
        site.at("etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
        assert site.at("etc/empty-too").read_bytes() == b""
    finally:
        site.umount()
    assert os.listdir(site.target) == []
    site.mount(dep)
    try:
        assert site.at("etc/hostname").read_text() == "changed\n"
        assert site.at("etc/added").read_text() == "mine\n"
        assert site.at("var/lib/written").read_text() == "kept\n"
        assert site.at("home/user/notes").read_text() == "in /var/home\n"
        assert not site.at("tmp/scratch").exists()
    finally:
        site.umount()
    assert (Path(site.layout.var) / "home/user/notes").read_text() == "in /var/home\n"
    # --read-only: the verified tree alone, as released
    site.mount(dep, "--read-only")
    try:
        assert site.at("etc/hostname").read_text() == "device\n"
        assert mounts.is_mount_point(site.at("etc")) is None
    finally:
        site.umount()


def test_live_mode_persists_nothing(site):
    dep = site.deploy()
    before = sorted(os.listdir(site.layout.etc(dep)))
    said = site.mount(dep, "--live")
    assert "live (writes in memory)" in said
    try:
        assert mounts.mounts_under(site.target)[-1].mount_point == os.fsencode(
            os.path.realpath(site.target))  # nothing over the overlay
        site.at("etc/hostname").write_text("live change\n")
        site.at("var/lib/live").write_text("x")
    finally:
        site.umount()
    assert sorted(os.listdir(site.layout.etc(dep))) == before
    site.mount(dep)
    try:
        assert site.at("etc/hostname").read_text() == "device\n"
        assert not site.at("var/lib/live").exists()
    finally:
        site.umount()


def test_redeploy_merges_etc_and_reports_the_conflict(site):
    first = site.deploy()
    site.mount(first)
    try:
        site.at("etc/keep.conf").write_text("local keep\n")
        site.at("etc/both.conf").write_text("local both\n")
        # what systemd does at first boot with the tree's empty /etc/machine-id
        site.at("etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
        site.at("var/lib/written").write_text("from release 1\n")
    finally:
        site.umount()
    site.release(2)
    out = site.cli("deploy", "os/main", "--keys", site.keys).stdout
    second = out.strip().splitlines()[-1].split()[-1]
    assert f"/etc: merged from {first}: 3 local changes kept, 4 release changes applied, " \
           f"1 conflict" in out, out
    assert "CONFLICT /etc/both.conf: modified by the user, modified by the new release " \
           "(the user's version kept)" in out
    assert "/var: seeded" not in out  # the shared /var is seeded once
    doc = {d["id"]: d for d in site.status()["deployments"]}
    assert doc[second]["etc"]["how"] == "merged" and doc[second]["etc"]["merged_from"] == first
    assert doc[second]["etc"]["conflicts"] == [
        {"path": "/etc/both.conf", "user": "modified", "vendor": "modified"}]
    assert doc[first]["etc"]["how"] == "copied" and doc[first]["etc"]["conflicts"] == []
    text = site.cli("status").stdout
    assert "CONFLICT /etc/both.conf: modified by the user, modified by the new release" in text
    site.mount(second)
    try:
        assert site.at("etc/keep.conf").read_text() == "local keep\n"  # user change kept
        assert site.at("etc/app.conf").read_text() == "vendor app 2\n"  # vendor change applied
        assert site.at("etc/both.conf").read_text() == "local both\n"  # conflict: user's kept
        assert site.at("etc/new.conf").read_text() == "added in release 2\n"
        assert site.at("etc/large.conf").read_bytes() == b"release 2\n" * (BIG // 10)
        assert not site.at("etc/gone.conf").exists()
        assert site.at("etc/machine-id").read_text() == "0123456789abcdef0123456789abcdef\n"
        assert site.at("var/lib/written").read_text() == "from release 1\n"  # shared /var
        assert site.at("var/lib/dpkg/status").read_text() == "release 1\n"  # not re-seeded
    finally:
        site.umount()
    # The old deployment's /etc is its own, untouched by the merge.
    assert Path(site.layout.etc(first), "app.conf").read_text() == "vendor app 1\n"


def test_machine_id_generated_at_first_boot_survives_every_update(site):
    """Empty in every release; written once on the device: carried by each merge."""
    first = site.deploy()
    Path(site.layout.etc(first), "machine-id").write_text("feedface" * 4 + "\n")
    site.release(2)
    second = site.deploy()
    third = site.deploy()  # the same release again: a merge with nothing to apply
    for dep in (second, third):
        assert Path(site.layout.etc(dep), "machine-id").read_text() == "feedface" * 4 + "\n"
    doc = {d["id"]: d for d in site.status()["deployments"]}
    assert doc[third]["etc"]["merged_from"] == second and doc[third]["etc"]["conflicts"] == []


def test_boot_files_and_the_default_pointer(site):
    layout = site.layout
    first = site.deploy()
    boot_dir = Path(layout.boot(first))
    assert (boot_dir / "vmlinuz").read_bytes() == KERNEL_10  # a copy of the large object
    assert (boot_dir / "initrd.img").read_bytes() == INITRD_10
    assert os.readlink(layout.boot_default) == first
    site.release(2)
    second = site.deploy()
    assert os.readlink(layout.boot_default) == second
    site.cli("rollback")
    assert os.readlink(layout.boot_default) == first
    site.cli("set-default", second)
    assert os.readlink(layout.boot_default) == second
    status = site.status()
    assert status["boot_default"] == second
    doc = {d["id"]: d for d in status["deployments"]}
    assert doc[first]["boot"] == layout.boot(first)
    site.cli("undeploy", first)
    assert not os.path.exists(layout.boot(first)) and not os.path.exists(layout.etc(first))
    assert not os.path.exists(layout.etc_report(first))
    assert os.path.isdir(layout.var)  # the shared /var stays


def _row(path: bytes, kind: Kind, target: bytes = b"") -> ManifestEntry:
    entry = Entry(path.rpartition(b"/")[2], kind, Meta(0o644, 0, 0, ()), 1, RawId(b"\0" * 32),
                  target=target)
    return ManifestEntry(path, entry, True)


def test_boot_files_choice():
    files = [_row(b"boot/vmlinuz-6.1.0-9-amd64", Kind.FILE),
             _row(b"boot/vmlinuz-6.1.0-10-amd64", Kind.FILE),
             _row(b"boot/initrd.img-6.1.0-10-amd64", Kind.FILE),
             _row(b"boot/initrd.img-6.1.0-9-amd64", Kind.FILE)]
    chosen = boot_files.choose(files)
    assert chosen == boot_files.BootFiles(b"boot/vmlinuz-6.1.0-10-amd64",
                                          b"boot/initrd.img-6.1.0-10-amd64")
    # Debian's /vmlinuz and /initrd.img symlinks win over the version order
    links = [_row(b"initrd.img", Kind.SYMLINK, b"boot/initrd.img-6.1.0-9-amd64"),
             _row(b"vmlinuz", Kind.SYMLINK, b"/boot/vmlinuz-6.1.0-9-amd64")]
    assert boot_files.choose(files + links) == boot_files.BootFiles(
        b"boot/vmlinuz-6.1.0-9-amd64", b"boot/initrd.img-6.1.0-9-amd64")
    assert boot_files.choose(files[:2]) == boot_files.BootFiles(b"boot/vmlinuz-6.1.0-10-amd64", None)
    assert boot_files.choose([_row(b"boot/config-6.1", Kind.FILE)]) is None
    assert boot_files.choose([_row(b"vmlinuz", Kind.SYMLINK, b"boot/missing")]) is None


# A deploy SIGKILLed in the middle of the /etc merge: after the 3rd file written.
KILLED_IN_THE_MERGE = """
import os, signal, sys
import overlay.etc_merge as m
real, calls = m._create, []
def create(*args):
    calls.append(1)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    real(*args)
m._create = create
from sealtree.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_deploy_killed_in_the_merge_leaves_no_half_written_etc(site):
    first = site.deploy()
    Path(site.layout.etc(first), "keep.conf").write_text("local keep\n")
    site.release(2)
    proc = subprocess.run([sys.executable, "-c", KILLED_IN_THE_MERGE, "--repo", site.repo,
                           "deploy", "os/main", "--keys", site.keys],
                          capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == -9, proc.stderr
    # Nothing recorded, no /etc under a deployment's name: only the temporary directory.
    assert [d["id"] for d in site.status()["deployments"]] == [first]
    assert sorted(os.listdir(site.layout.etc_root)) == sorted(
        [first, first + ".json", ".tmp-" + site.commit + ".2"])
    assert Path(site.layout.etc(first), "keep.conf").read_text() == "local keep\n"
    second = site.deploy()  # cleans it up, and takes the serial again
    assert second == site.commit + ".2"
    assert sorted(os.listdir(site.layout.etc_root)) == sorted(
        [first, first + ".json", second, second + ".json"])
    assert Path(site.layout.etc(second), "keep.conf").read_text() == "local keep\n"


def test_a_failed_merge_records_nothing_and_leaves_nothing(site, monkeypatch):
    from overlay import etc_merge
    from overlay.deploy import deploy
    from store.repo import Repository
    first = site.deploy()
    site.release(2)
    real = etc_merge._create
    calls: list[bytes] = []

    def failing(src: bytes, dst: bytes, node: etc_merge.Node) -> None:
        calls.append(dst)
        if len(calls) == 4:
            raise OSError(28, "No space left on device", os.fsdecode(dst))
        real(src, dst, node)

    monkeypatch.setattr(etc_merge, "_create", failing)
    repo = Repository.open(site.repo)
    with pytest.raises(etc_merge.EtcMergeError, match="No space left on device"):
        deploy(repo, "os/main", site.keys, policy=Policy.USERSPACE, target=site.target,
               with_state=True)
    assert _leftovers(site.base) == [] and os.listdir(site.target) == []
    assert [d["id"] for d in site.status()["deployments"]] == [first]
    assert sorted(os.listdir(site.layout.etc_root)) == [first, first + ".json"]
    assert sorted(os.listdir(site.layout.boot_root)) == [first, "default"]
    assert not [n for n in os.listdir(site.layout.root) if n.startswith(".tmp-")]


def test_deploy_mount_mounts_the_state_and_a_failure_there_unmounts_everything(site, monkeypatch):
    out = site.cli("deploy", "os/main", "--keys", site.keys, "--mount", site.target).stdout
    dep = out.strip().splitlines()[-1].split()[-1]
    assert "persistent state: /etc from" in out
    try:
        site.at("etc/hostname").write_text("at deploy\n")
    finally:
        site.umount()
    assert Path(site.layout.etc(dep), "hostname").read_text() == "at deploy\n"
    # The /tmp tmpfs cannot be mounted: neither /etc, /var nor the overlay stays mounted.
    from overlay import mount_deployment as md
    from overlay import writable
    from store.errors import MountError
    from store.repo import Repository
    real = mounts.tmpfs

    def no_tmp(target: str, **kwargs: object) -> mounts.Mounted:
        if str(target).endswith("/tmp"):
            return mounts.Mounted(target, lambda: mounts.mount("none", "/nonexistent", "tmpfs"))
        return real(target, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(writable.mounts, "tmpfs", no_tmp)
    with pytest.raises(MountError, match="writable /tmp"):
        md.mount_deployment(Repository.open(site.repo), dep, site.target, keys_dir=site.keys,
                            with_state=True)
    assert _leftovers(site.base) == []


def test_umount_refuses_a_foreign_mount_below_the_deployment(site):
    dep = site.deploy()
    site.mount(dep)
    foreign = site.at("usr")
    mounts.mount("tmpfs", foreign, "tmpfs")
    try:
        proc = site.cli("umount", site.target, check=False)
        assert proc.returncode != 0 and "is mounted below it; unmount it first" in proc.stderr
        assert mounts.is_mount_point(site.at("etc")) is not None  # nothing was taken down
    finally:
        mounts.umount(foreign)
    site.umount()


def test_mount_makes_the_etc_of_a_deployment_that_has_none(site):
    """A deployment made before writable state existed: its /etc is copied at its first mount."""
    from store.remove import remove_tree
    dep = site.deploy()
    remove_tree(site.layout.etc(dep))
    os.unlink(site.layout.etc_report(dep))
    doc = json.loads(site.mount(dep, "--json"))
    try:
        assert doc["state"]["created"] == ["etc"]
        assert site.at("etc/hostname").read_text() == "device\n"
    finally:
        site.umount()
    assert Path(site.layout.etc(dep), "hostname").read_text() == "device\n"
    assert not [n for n in os.listdir(site.layout.etc_root) if n.startswith(".tmp-")]


# -- the boot verifier -------------------------------------------------------------------------------

def _boot_config(sysroot: scenario.Sysroot, root: Path | str, tmp_path: Path, *,
                 count: bool = False) -> boot_config.BootConfig:
    """The verifier's configuration for ``sysroot`` mounted at ``root``: the tree mounted at
    tmp_path/newroot, userspace digests, boots counted only with ``count``."""
    return boot_config.BootConfig(sysroot=str(root), keys=str(sysroot.keyring),
                                  freshness=str(sysroot.floor), target=str(tmp_path / "newroot"),
                                  scratch=str(tmp_path / "scratch"), verify=Policy.USERSPACE,
                                  count=count)


def test_boot_verifier_mounts_the_state_or_nothing_in_live_mode(tmp_path):
    sysroot = scenario.build_sysroot(tmp_path / "vendor")
    target = tmp_path / "newroot"
    config = _boot_config(sysroot, sysroot.root, tmp_path)
    layout = DeployLayout(str(sysroot.root) + scenario.REPO_IN_SYSROOT + "/deploy")
    dep = sysroot.deployments["C"]
    said: list[str] = []
    try:
        assert boot.run_boot(config, said.append) == boot.EXIT_BOOTED, said
        booting = [line for line in said if line.startswith(f"booting {dep}")]
        assert booting and "persistent state: /etc from" in booting[0], said
        assert _mount_point(target / "etc").mount_point == os.fsencode(target / "etc")
        assert _mount_point(target / "tmp").fstype == "tmpfs"
        # This tree has no /var: nothing is mounted for it (and no /var seeded)
        assert not (target / "var").exists() and not os.path.exists(layout.var)
        (target / "etc/written-at-boot").write_text("persists\n")
        (target / "tmp/boot-scratch").write_text("gone\n")
        with pytest.raises(OSError):
            (target / "new-file").write_text("x")  # the tree itself stays read-only
    finally:
        subprocess.run(["umount", "-R", str(target)], check=True)
    assert Path(layout.etc(dep), "written-at-boot").read_text() == "persists\n"
    # Live, from the kernel command line: nothing over the overlay, writes in memory.
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("quiet sealtree.live=1\n")
    live = boot_config.apply_cmdline(config, cmdline.read_text(), said.append)
    assert live.live
    said.clear()
    try:
        assert boot.run_boot(live, said.append) == boot.EXIT_BOOTED, said
        assert any("live: writes in memory only, nothing persists" in line for line in said), said
        assert [m.mount_point for m in mounts.mounts_under(target)] == [os.fsencode(target)]
        assert (target / "etc/written-at-boot").exists() is False  # the release's /etc
        (target / "etc/live-only").write_text("gone\n")
    finally:
        subprocess.run(["umount", "-R", str(target)], check=True)
    assert not Path(layout.etc(dep), "live-only").exists()
    assert boot_config.parse_config_text("live = yes\n", "boot.conf").live


def test_boot_verifier_remounts_a_read_only_sysroot_for_the_state(tmp_path):
    """The sysroot mounted read-only (as initramfs-tools leaves root=): without boot counting,
    the persistent state still needs it writable; live mode does not."""
    sysroot = scenario.build_sysroot(tmp_path / "vendor")
    mounts.mount(str(sysroot.root), sysroot.root, "none", mounts.MS_BIND)
    target = tmp_path / "newroot"
    try:
        mounts.mount("none", sysroot.root, "none", mounts.MS_BIND | 0x20 | mounts.MS_RDONLY)
        config = _boot_config(sysroot, sysroot.root, tmp_path)
        said: list[str] = []
        try:
            assert boot.run_boot(config, said.append) == boot.EXIT_BOOTED, said
            assert any(line.startswith("remounted") for line in said), said
            (target / "etc/x").write_text("y")
        finally:
            subprocess.run(["umount", "-R", str(target)], check=True)
    finally:
        mounts.umount(sysroot.root)


def test_debian_minbase_state_and_merge(base, minbase):
    """A real Debian tree: its /etc copied with exact metadata, its /var seeded, both writable
    under the mount; deployed again, the merge applies nothing and keeps the local change."""
    site = Site(base, minbase)
    site.publish("1", 1_700_000_000)
    layout = DeployLayout(os.path.join(site.repo, "deploy"))
    first = site.deploy()
    for rel in ("etc", "var"):
        root = Path(layout.etc(first) if rel == "etc" else layout.var)
        for path in (Path(minbase) / rel).rglob("*"):
            copy = root / path.relative_to(Path(minbase) / rel)
            a, b = path.lstat(), copy.lstat()
            assert (a.st_mode, a.st_uid, a.st_gid) == (b.st_mode, b.st_uid, b.st_gid), copy
    site.cli("mount", first, site.target, "--keys", site.keys)
    target = Path(site.target)
    try:
        assert (target / "etc/passwd").read_bytes() == (Path(minbase) / "etc/passwd").read_bytes()
        (target / "etc/hostname").write_text("device-1\n")
        (target / "var/lib/dpkg/marker").write_text("x")
    finally:
        site.cli("umount", site.target)
    out = site.cli("deploy", "os/main", "--keys", site.keys).stdout
    second = out.strip().splitlines()[-1].split()[-1]
    assert f"/etc: merged from {first}: 1 local changes kept, 0 release changes applied, " \
           f"0 conflicts" in out, out
    assert Path(layout.etc(second), "hostname").read_text() == "device-1\n"
    assert Path(layout.var, "lib/dpkg/marker").read_text() == "x"


def test_boot_on_a_read_only_device_mounts_the_state_read_only(tmp_path):
    """A sysroot on a read-only block device: without boot counting the verifier boots with
    /etc and /var read-only (and says so); with counting, nothing boots."""
    from tests.vm import guest
    sysroot = scenario.build_sysroot(tmp_path / "vendor")
    image = guest.make_ext4_image(tmp_path / "disk.img", sysroot.root, 64)
    device = subprocess.run(["losetup", "-r", "-f", "--show", str(image)], check=True,
                            capture_output=True, text=True).stdout.strip()
    mnt = tmp_path / "sysroot"
    mnt.mkdir()
    target = tmp_path / "newroot"
    try:
        mounts.mount(device, mnt, "ext4", mounts.MS_RDONLY)
        config = _boot_config(sysroot, mnt, tmp_path)
        said: list[str] = []
        try:
            assert boot.run_boot(config, said.append) == boot.EXIT_BOOTED, said
            assert any(line.startswith(f"cannot remount {mnt} read-write") and
                       line.endswith("/etc and /var will be read-only") for line in said), said
            assert any("persistent state: /etc from" in line for line in said), said
            with pytest.raises(OSError):
                (target / "etc/x").write_text("y")
        finally:
            subprocess.run(["umount", "-R", str(target)], check=False)
        said.clear()
        counting = _boot_config(sysroot, mnt, tmp_path, count=True)
        assert boot.run_boot(counting, said.append) == boot.EXIT_REFUSED, said
        assert said[-1].startswith("FAILED:") and "boot counting" in said[-1], said
        assert not os.path.ismount(target)
    finally:
        if os.path.ismount(mnt):
            mounts.umount(mnt)
        subprocess.run(["losetup", "-d", device], check=False)
