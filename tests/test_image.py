"""``sealtree image build`` on the host: reproducible bytes, the partition table, the ESP, the
sysroot filesystem and its repository, sizes, and the errors.  (Booting: test_image_vm.py.)

The tree is small and its kernel and initramfs are random bytes: nothing here boots it.
Every check reads the image with other tools than the ones that wrote it where one exists
(util-linux ``partx`` and ``blkid`` for the table and the filesystem, ``e2fsck``, debugfs'
``rdump`` and then ``sealtree fsck`` for the repository, ``mtype``/``mcopy`` for the ESP).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from image import build, gpt
from image.entries import LIVE_SUFFIX
from pack.build import RELEASE_INLINE_MAX
from tests.cli_runner import run_cli

MIB = 1 << 20
RELEASE = "6.1.0-test-amd64"
TIMESTAMP = 1_700_000_000

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mke2fs -d keeps owners")


def sealtree(*args: str) -> str:
    result = run_cli(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@dataclass(frozen=True)
class Vendor:
    repo: Path
    keys: Path
    key: Path
    commit: str
    kernel: bytes
    initrd: bytes


def _tree(dest: Path, with_boot: bool = True) -> tuple[bytes, bytes]:
    rng = random.Random(19)
    for d in ("boot", "etc", "usr/bin", "var"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    kernel, initrd = rng.randbytes(300_000), rng.randbytes(200_000)
    if with_boot:
        (dest / "boot" / f"vmlinuz-{RELEASE}").write_bytes(kernel)
        (dest / "boot" / f"initrd.img-{RELEASE}").write_bytes(initrd)
        (dest / "boot" / "vmlinuz-5.10.0-old").write_bytes(b"no initrd beside me")
    (dest / "etc" / "hostname").write_text("device\n")
    (dest / "usr" / "bin" / "tool").write_bytes(rng.randbytes(100_000))
    os.chown(dest / "usr" / "bin" / "tool", 1000, 1000)
    os.symlink("tool", dest / "usr" / "bin" / "tool-link")
    return kernel, initrd


@pytest.fixture(scope="module")
def vendor(tmp_path_factory: pytest.TempPathFactory) -> Vendor:
    work = tmp_path_factory.mktemp("vendor")
    kernel, initrd = _tree(work / "tree")
    keys = work / "keys"
    keys.mkdir()
    sealtree("keygen", str(work / "vendor.key"))
    shutil.copy(work / "vendor.key.pub", keys / "vendor.pub")
    sealtree("--repo", str(work / "repo"), "init")
    out = sealtree("--repo", str(work / "repo"), "commit", "-b", "os/main", "--version", "1",
                   "--timestamp", str(TIMESTAMP), "--json", str(work / "tree"))
    return Vendor(work / "repo", keys, work / "vendor.key", json.loads(out)["commit"], kernel, initrd)


def _build(vendor: Vendor, out: Path, *extra: str) -> dict:  # type: ignore[type-arg]
    return json.loads(sealtree("--repo", str(vendor.repo), "image", "build", "os/main", "-o", str(out),
                               "--keys", str(vendor.keys), "--json", *extra))


@pytest.fixture(scope="module")
def built(vendor: Vendor, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:  # type: ignore[type-arg]
    out = tmp_path_factory.mktemp("image") / "disk.raw"
    return out, _build(vendor, out, "--key", str(vendor.key))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def test_two_builds_of_the_same_commit_are_byte_identical(vendor: Vendor, built, tmp_path: Path) -> None:
    """The second build signs nothing: it takes the signed pack made by pack build (at the
    threshold of a shipped pack, as image build and publish make one) and pack sign (Ed25519
    is deterministic), from another directory, a moment later."""
    first, doc = built
    pack = tmp_path / "release.pack"
    sealtree("--repo", str(vendor.repo), "pack", "build", "os/main", "-o", str(pack),
             "--inline-max", str(RELEASE_INLINE_MAX))
    sealtree("pack", "sign", str(pack), "--key", str(vendor.key))
    second = tmp_path / "elsewhere" / "disk.raw"
    second.parent.mkdir()
    doc2 = _build(vendor, second, "--pack", str(pack))
    assert subprocess.run(["cmp", str(first), str(second)]).returncode == 0
    assert _sha256(first) == _sha256(second)
    assert {k: v for k, v in doc.items() if k != "path"} == {k: v for k, v in doc2.items() if k != "path"}


def test_partition_table_guids_are_derived_from_the_commit(vendor: Vendor, built) -> None:
    image, doc = built
    seed = bytes.fromhex(vendor.commit)
    with image.open("rb") as handle:
        disk_guid, parts = gpt.read_partitions(handle.read(gpt.FIRST_USABLE * gpt.SECTOR))
    assert str(disk_guid) == doc["disk_guid"] == str(gpt.derived_guid("disk", seed))
    esp, root = parts
    assert (esp.type_guid, esp.name, esp.offset) == (gpt.ESP_TYPE, "ESP", MIB)
    assert (root.type_guid, root.name) == (gpt.LINUX_DATA_TYPE, "sealtree-sysroot")
    assert str(root.guid) == doc["partitions"]["sysroot"]["partuuid"]
    assert str(root.guid) == str(gpt.derived_guid("sysroot-partition", seed))
    # util-linux reads the same table (primary and backup CRCs are checked by it)
    shown = subprocess.run(["partx", "--show", "-o", "NR,START,SECTORS,UUID,NAME", "-g", str(image)],
                           capture_output=True, text=True, check=True).stdout.split("\n")
    assert shown[0].split() == ["1", str(esp.first_lba), str(esp.size // 512), str(esp.guid), "ESP"]
    assert shown[1].split() == ["2", str(root.first_lba), str(root.size // 512), str(root.guid),
                                "sealtree-sysroot"]
    blkid = subprocess.run(["blkid", "-p", "-o", "export", "-O", str(root.offset), str(image)],
                           capture_output=True, text=True, check=True).stdout
    assert f"UUID={doc['filesystem_uuid']}" in blkid and "TYPE=ext4" in blkid
    assert "BLOCK_SIZE=4096" in blkid


def _mtools(image: Path, *args: str) -> str:
    return subprocess.run([args[0], "-i", f"{image}@@{MIB}", *args[1:]], capture_output=True,
                          text=True, check=True).stdout


def test_esp_holds_systemd_boot_loader_conf_and_the_entries(vendor: Vendor, built, tmp_path: Path) -> None:
    image, doc = built
    dep = doc["deployment"]
    assert doc["entries"] == [f"sealtree-{dep}", f"sealtree-{dep}{LIVE_SUFFIX}"]
    loader = _mtools(image, "mtype", "::/loader/loader.conf")
    assert f"default sealtree-{dep}.conf\n" in loader and "timeout 3\n" in loader
    partuuid = doc["partitions"]["sysroot"]["partuuid"]
    installed = _mtools(image, "mtype", f"::/loader/entries/sealtree-{dep}.conf")
    assert installed.splitlines() == [
        "title os/main 1 (sealtree)", f"version {RELEASE}", "sort-key sealtree-0",
        f"linux /sealtree/{vendor.commit}/linux", f"initrd /sealtree/{vendor.commit}/initrd",
        f"options root=PARTUUID={partuuid} console=ttyS0"]
    live = _mtools(image, "mtype", f"::/loader/entries/sealtree-{dep}{LIVE_SUFFIX}.conf")
    assert f"options root=PARTUUID={partuuid} console=ttyS0 sealtree.live=1\n" in live
    for name, expected in (("linux", vendor.kernel), ("initrd", vendor.initrd)):
        _mtools(image, "mcopy", f"::/sealtree/{vendor.commit}/{name}", str(tmp_path / name))
        assert (tmp_path / name).read_bytes() == expected
    for efi in ("/EFI/BOOT/BOOTX64.EFI", "/EFI/systemd/systemd-bootx64.efi"):
        _mtools(image, "mcopy", f"::{efi}", str(tmp_path / "loader.efi"))
        assert (tmp_path / "loader.efi").read_bytes()[:2] == b"MZ"  # a PE image
    assert "systemd-boot-efi_" in doc["boot_loader"]


def test_sysroot_is_a_clean_verity_ext4_with_the_repository_deployed(vendor: Vendor, built,
                                                                      tmp_path: Path) -> None:
    image, doc = built
    device = f"{image}?offset={doc['partitions']['sysroot']['offset']}"
    check = subprocess.run(["e2fsck", "-fn", device], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    features = subprocess.run(["dumpe2fs", "-h", device], capture_output=True, text=True,
                              check=True).stdout
    assert "verity" in features.split("Filesystem features:")[1].splitlines()[0]
    out = tmp_path / "sysroot"
    out.mkdir()
    subprocess.run(["debugfs", "-R", f"rdump /sealtree {out}", device], capture_output=True, check=True)
    repo = str(out / "sealtree" / "repo")
    sealtree("--repo", repo, "fsck")
    status = json.loads(sealtree("--repo", repo, "status", "--json"))
    (dep,) = status["deployments"]
    assert status["default"] == dep["id"] == doc["deployment"]
    assert (dep["commit"], dep["created"], dep["keys"], dep["layout"]) == (
        vendor.commit, TIMESTAMP, "/etc/sealtree/keys", "hardlinks")
    assert dep["tries_left"] is None
    owned = os.stat(out / "sealtree" / "repo" / "deploy" / dep["id"] / "usr" / "bin" / "tool")
    assert (owned.st_uid, owned.st_gid) == (1000, 1000)  # the farm's hardlink keeps the owner


def test_size_is_content_plus_the_stated_margin_and_the_file_is_sparse(built) -> None:
    image, doc = built
    esp, root = doc["partitions"]["esp"], doc["partitions"]["sysroot"]
    assert root["size"] == build.minimum_sysroot(doc["sysroot_content"])
    assert esp["size"] == build.ESP_MIN  # a small kernel: the least ESP
    assert doc["size"] == MIB + esp["size"] + root["size"] + MIB == image.stat().st_size
    assert doc["allocated"] == image.stat().st_blocks * 512 < doc["size"] // 2


def test_size_grows_the_sysroot_and_too_small_a_size_is_refused(vendor: Vendor, built,
                                                                 tmp_path: Path) -> None:
    _image, doc = built
    big = _build(vendor, tmp_path / "big.raw", "--key", str(vendor.key), "--size", "512M")
    assert big["size"] == 512 * MIB == (tmp_path / "big.raw").stat().st_size
    assert big["partitions"]["esp"] == doc["partitions"]["esp"]
    assert big["partitions"]["sysroot"]["size"] == 512 * MIB - 2 * MIB - doc["partitions"]["esp"]["size"]
    result = run_cli("--repo", str(vendor.repo), "image", "build", "os/main", "-o", str(tmp_path / "s.raw"),
                     "--keys", str(vendor.keys), "--key", str(vendor.key), "--size", "16M", check=False)
    assert result.returncode == 18, result.stderr
    assert (f"the disk size asked for ({16 * MIB} bytes) is below this image's minimum of "
            f"{doc['size']} bytes") in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "s.raw").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no work dir left


def test_errors_are_one_line_each(vendor: Vendor, tmp_path: Path) -> None:
    common = ["image", "build", "os/main", "-o", str(tmp_path / "d.raw"), "--keys", str(vendor.keys)]
    result = run_cli("--repo", str(vendor.repo), *common, check=False)
    assert result.returncode == 18
    assert "os/main: the repository keeps no signed pack of this commit" in result.stderr
    other = tmp_path / "other-keys"
    other.mkdir()
    sealtree("keygen", str(tmp_path / "other.key"))
    shutil.copy(tmp_path / "other.key.pub", other / "other.pub")
    result = run_cli("--repo", str(vendor.repo), "image", "build", "os/main", "-o", str(tmp_path / "d.raw"),
                     "--keys", str(other), "--key", str(vendor.key), check=False)
    assert result.returncode == 12, result.stderr  # a signature error: not signed by a trusted key
    _tree(tmp_path / "bootless", with_boot=False)
    sealtree("--repo", str(vendor.repo), "commit", "-b", "os/bootless", str(tmp_path / "bootless"))
    result = run_cli("--repo", str(vendor.repo), "image", "build", "os/bootless", "-o",
                     str(tmp_path / "d.raw"), "--keys", str(vendor.keys), "--key", str(vendor.key),
                     check=False)
    assert "/boot: no kernel to boot: the tree needs /boot/vmlinuz-RELEASE" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "d.raw").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_help_is_a_manual_page() -> None:
    text = run_cli("image", "build", "--help").stdout
    for words in ("root=PARTUUID=", "sealtree.live=1", "/sealtree/repo", "seal = yes", "--size",
                  "Reproducible", "bmaptool", "systemd-boot-efi", "Exit status 18"):
        assert words in text


def test_entries_for_two_deployments_pin_only_the_one_that_is_not_the_default() -> None:
    """A repository with an A/B pair: the default's entries leave the choice to the verifier
    (boot counting and fallback), the other deployment's entry pins it."""
    from image.entries import Kernel, entries_for, loader_conf
    from overlay.state import Deployment
    from store.model import Entry, Kind, Meta

    def dep(commit: str, version: str) -> Deployment:
        return Deployment(f"{commit}.1", commit, "os/main", version, TIMESTAMP, "p", "s", "k")

    file = Entry(b"f", Kind.FILE, Meta(0o644, 0, 0))
    old, new = dep("a" * 64, "1"), dep("b" * 64, "2")
    kernels = {old.commit: Kernel("6.1.0-1", file, file), new.commit: Kernel("6.1.0-2", file, file)}
    made = entries_for([old, new], new.id, kernels, "PU", "quiet")
    assert [e.name for e in made] == [f"sealtree-{new.id}", f"sealtree-{new.id}-live", f"sealtree-{old.id}"]
    assert [e.options for e in made] == [
        "root=PARTUUID=PU console=ttyS0 quiet", "root=PARTUUID=PU console=ttyS0 quiet sealtree.live=1",
        f"root=PARTUUID=PU console=ttyS0 quiet sealtree.deployment={old.id}"]
    assert [(e.version, e.linux) for e in made] == [
        ("6.1.0-2", f"/sealtree/{new.commit}/linux"), ("6.1.0-2", f"/sealtree/{new.commit}/linux"),
        ("6.1.0-1", f"/sealtree/{old.commit}/linux")]
    assert [e.sort_key for e in made] == ["sealtree-0", "sealtree-1", "sealtree-2"]
    assert f"default sealtree-{new.id}.conf\n" in loader_conf(made[0].name)


def test_kernel_is_the_newest_release_with_an_initramfs(vendor: Vendor) -> None:
    """/boot also holds vmlinuz-5.10.0-old without an initramfs: it is not chosen."""
    from image.entries import find_kernel
    from store.ids import RawId
    from store.repo import Repository

    repo = Repository.open(str(vendor.repo))
    commit = repo.objects.read_commit(RawId(bytes.fromhex(vendor.commit)))
    kernel = find_kernel(repo.objects, commit.root_tree)
    assert (kernel.release, kernel.linux.name, kernel.initrd.name) == (
        RELEASE, f"vmlinuz-{RELEASE}".encode(), f"initrd.img-{RELEASE}".encode())
