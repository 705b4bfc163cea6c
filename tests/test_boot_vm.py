"""The boot verifier, proven by booting Linux: a real 6.1 kernel under qemu, an ext4 ``-O verity``
disk holding a repository with three deployments, and an initramfs with Debian's python3.

Every boot provisions the disk first (fs-verity enabled on every object, as a device does on
pull), then runs the verifier, which either mounts a deployment read-only at the new root (the
guest then switches into it and the deployed tree's own busybox prints its marker) or refuses.
``tests/vm/scenario.py`` builds the releases, the disk and the tampering.

Two boot flows are used: ``initramfs-tools`` (the root= device mounted read-only at /root, then
integration/initramfs-tools/scripts/local-bottom/sealtree, then the handover, as initramfs-tools
does) for the chain of boots of one disk, and ``standalone`` (``sealtree-boot`` mounting
``sealtree.root=`` itself) for the tampered disks, one boot each.

The tests without the ``vm`` mark check the configuration rules and the verifier's imports on the
host; tests/test_initramfs_real.py runs the initramfs-tools hook in Debian's real initramfs-tools.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from overlay import boot, boot_config
from overlay.objcheck import Policy
from store.fsverity import digest_file
from tests.vm import guest, scenario
from tests.vm.fixtures import host_fsverity, vm_kernel

__all__ = ["host_fsverity", "vm_kernel"]  # fixtures used by name below

ROOT = Path(__file__).resolve().parents[1]
STATE_IN_IMAGE = scenario.REPO_IN_SYSROOT + "/deploy/state.json"


# -- host side: configuration, imports, the hook ---------------------------------------------------

def test_config_file_then_cmdline_then_options(tmp_path: Path) -> None:
    conf = tmp_path / "boot.conf"
    conf.write_text("# baked in\nrepo = /ostree/sealtree   # comment\nverify = kernel\n"
                    "freshness = /etc/sealtree/freshness.json\n")
    cmdline = tmp_path / "cmdline"
    cmdline.write_text('quiet sealtree.root=/dev/vdb sealtree.deployment=previous sealtree.keys=/tmp/evil '
                       'sealtree.verify=userspace sealtree.freshness=none root=/dev/sda1\n')
    said: list[str] = []
    config = boot_config.config_from_args(["--config", str(conf), "--cmdline", str(cmdline),
                                    "--target", "/root"], said.append)
    assert config.repo == "/ostree/sealtree"
    assert config.root == "/dev/vdb" and config.deployment == "previous" and config.target == "/root"
    # The keyring and the floor come only from the initramfs; a weaker policy only if allowed.
    assert config.keys == "/etc/sealtree/keys" and config.freshness == "/etc/sealtree/freshness.json"
    assert config.verify is Policy.KERNEL
    assert any("sealtree.keys=" in line for line in said)
    assert any("sealtree.verify=userspace" in line and "cmdline_verify" in line for line in said)
    conf.write_text("cmdline_verify = yes\n")
    config = boot_config.config_from_args(["--config", str(conf), "--cmdline", str(cmdline)], said.append)
    assert config.verify is Policy.USERSPACE
    assert config.repo_path == "/sysroot/sealtree/repo"


@pytest.mark.parametrize("text", ["verify = maybe\n", "keyring = /x\n", "repo = relative\n",
                                  "repo = /a/../b\n", "count = perhaps\n", "just words\n"])
def test_config_errors_are_refused(text: str) -> None:
    with pytest.raises(boot_config.BootConfigError):
        boot_config.parse_config_text(text, "boot.conf")


def test_verifier_imports_only_stdlib_cryptography_and_zstandard() -> None:
    """What an initramfs has: no xattr package (os.*xattr then), no pygit2."""
    code = r"""
import sys
before = set(sys.modules)  # what site's .pth files loaded at startup does not count
sys.modules["xattr"] = None
sys.modules["pygit2"] = None
import overlay.boot, overlay.provision
from store import xattrs  # os.*xattr: the standard library's
# cryptography's own: its cffi bindings (_openssl, _cffi_backend) in the versions that have them
allowed = {"store", "pack", "overlay", "cryptography", "zstandard", "_cffi_backend", "_openssl"}
extra = sorted({name.split(".")[0] for name in set(sys.modules) - before}
               - set(sys.stdlib_module_names) - allowed - {"xattr", "pygit2"})
print(",".join(extra))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"the boot path imports more than it may: {out}"


def test_run_boot_on_the_host_mounts_or_fails_closed(tmp_path: Path) -> None:
    """The verifier's whole run against a host directory: with ``userspace`` it mounts the
    default at the target; with ``kernel`` on a filesystem without fs-verity nothing boots."""
    if os.geteuid() != 0:
        pytest.skip("needs root: tmpfs and overlay mounts")
    sysroot = scenario.build_sysroot(tmp_path / "vendor")
    target = tmp_path / "newroot"
    config = boot_config.BootConfig(sysroot=str(sysroot.root), keys=str(sysroot.keyring),
                             freshness=str(sysroot.floor), target=str(target),
                             scratch=str(tmp_path / "scratch"), verify=Policy.USERSPACE)
    said: list[str] = []
    assert boot.run_boot(config, said.append) == boot.EXIT_BOOTED, said
    try:
        assert (target / "etc/sealtree-marker").read_text().strip() == scenario.RELEASES[2].marker
        assert (target / scenario.BLOB).stat().st_uid == 1000
        assert os.getxattr(target / "etc/os-release", "trusted.sealtree") == b"C"
        with pytest.raises(OSError):
            (target / "new-file").write_text("x")  # read-only
        assert (tmp_path / "scratch" / "booted").read_text().strip() == sysroot.deployments["C"]
    finally:
        subprocess.run(["umount", "-R", str(target)], check=True)
    # no staging directory left behind: only the boot record and the staging lock file
    assert sorted(os.listdir(tmp_path / "scratch")) == ["booted", "mounts.lock"]
    said.clear()
    kernel = dataclasses.replace(config, verify=Policy.KERNEL)
    assert boot.run_boot(kernel, said.append) == boot.EXIT_REFUSED, said
    refused = [line for line in said if line.startswith("REFUSED")]
    assert len(refused) == 2 and all("the kernel cannot measure" in line for line in refused), said
    assert said[-1] == "FAILED: no deployment could be verified; not booting"
    assert not os.path.ismount(target)


def test_run_boot_refuses_an_xattr_on_a_farm_directory(tmp_path: Path) -> None:
    """``trusted.overlay.opaque`` on a farm (written by whoever can write the disk) is refused
    at the farm stage, for every deployment, with nothing mounted."""
    if os.geteuid() != 0:
        pytest.skip("needs root: tmpfs and overlay mounts")
    sysroot = scenario.build_sysroot(tmp_path / "vendor")
    deploy_dir = Path(str(sysroot.root) + scenario.REPO_IN_SYSROOT) / "deploy"
    for dep_id in sysroot.deployments.values():
        os.setxattr(deploy_dir / dep_id, "trusted.overlay.opaque", b"y")
    target = tmp_path / "newroot"
    config = boot_config.BootConfig(sysroot=str(sysroot.root), keys=str(sysroot.keyring),
                                    freshness=str(sysroot.floor), target=str(target),
                                    scratch=str(tmp_path / "scratch"), verify=Policy.USERSPACE)
    said: list[str] = []
    assert boot.run_boot(config, said.append) == boot.EXIT_REFUSED, said
    refused = [line for line in said if line.startswith("REFUSED")]
    assert len(refused) == 2, said
    assert all(": farm failed at /: " in line and "trusted.overlay.opaque" in line
               for line in refused), said
    assert not os.path.ismount(target)


# -- the guest -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sysroot(tmp_path_factory: pytest.TempPathFactory) -> scenario.Sysroot:
    return scenario.build_sysroot(tmp_path_factory.mktemp("vendor"))


@pytest.fixture(scope="module")
def initrds(vm_kernel: Path, sysroot: scenario.Sysroot, tmp_path_factory: pytest.TempPathFactory
            ) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("initrd")
    return {"initramfs-tools": scenario.build_initrd(work / "it", sysroot, scenario.INIT_INITRAMFS_TOOLS),
            "standalone": scenario.build_initrd(work / "sa", sysroot, scenario.INIT_STANDALONE)}


def _boot(kernel: Path, initrd: Path, image: Path, append: str, log: Path) -> guest.BootResult:
    result = guest.boot(kernel, initrd, disks=[image], append=append, timeout=300, console_log=log)
    assert result.powered_off, result.describe()
    assert "Traceback" not in result.console, result.describe(120)
    return result


@dataclass
class Chain:
    """One disk booted again and again through the initramfs-tools flow."""

    sysroot: scenario.Sysroot
    image: Path
    boots: list[guest.BootResult]
    state_after_counting: dict[str, Any]


@pytest.fixture(scope="module")
def chain(vm_kernel: Path, sysroot: scenario.Sysroot, initrds: dict[str, Path],
          tmp_path_factory: pytest.TempPathFactory) -> Chain:
    """Boots 1..TRIES boot the default (C) and never reach mark-good; boot TRIES+1 falls back
    to B.  Then one byte of B's blob is changed on the sealed disk and it boots once more."""
    work = tmp_path_factory.mktemp("chain")
    copy = sysroot.copy(work / "sysroot")
    image = scenario.make_image(copy, work / "disk.img")
    boots = [_boot(vm_kernel, initrds["initramfs-tools"], image, "root=/dev/vda", work / f"boot{i}.log")
             for i in range(1, scenario.TRIES + 2)]
    state = json.loads(scenario.image_file(image, STATE_IN_IMAGE))
    scenario.corrupt_in_image(image, scenario.in_image(copy, copy.object_path("B", scenario.BLOB)))
    boots.append(_boot(vm_kernel, initrds["initramfs-tools"], image, "root=/dev/vda", work / "sealed.log"))
    return Chain(copy, image, boots, state)


def _tampered(kernel: Path, sysroot: scenario.Sysroot, initrd: Path, work: Path,
              tamper: Callable[[scenario.Sysroot], None] | None = None,
              tamper_image: Callable[[scenario.Sysroot, Path], None] | None = None
              ) -> tuple[scenario.Sysroot, guest.BootResult]:
    """Boot a copy of ``sysroot`` changed by ``tamper`` (the directory) and ``tamper_image``."""
    copy = sysroot.copy(work / "sysroot")
    if tamper is not None:
        tamper(copy)
    image = scenario.make_image(copy, work / "disk.img")
    if tamper_image is not None:
        tamper_image(copy, image)
    return copy, _boot(kernel, initrd, image, "sealtree.root=/dev/vda", work / "console.log")


def _booted_release(result: guest.BootResult, sysroot: scenario.Sysroot, release: str) -> None:
    """The verifier booted ``release`` and the marker came from its deployed tree."""
    dep = sysroot.deployments[release]
    assert scenario.booted(result.console) == [dep], result.describe()
    res = result.results
    assert res.get("marker") == scenario.RELEASES["ABC".index(release)].marker, result.describe()
    assert res.get("root") == "overlay ro" and res.get("root-writable") == "no", result.describe()
    assert res.get("booted-file") == dep


@pytest.mark.vm
def test_good_boot_runs_the_deployed_tree(chain: Chain) -> None:
    first = chain.boots[0]
    assert scenario.refusals(first.console) == []
    _booted_release(first, chain.sysroot, "C")
    assert first.results.get("blob") == "readable"
    assert first.results.get("sysroot") == "repo"  # the sysroot was moved under the new root
    lines = scenario.boot_lines(first.console)
    assert any("measured by the kernel" in line and "0 digested in userspace" in line for line in lines)
    assert "provision: 11 file objects, 3 image objects: fs-verity enabled on 14" in first.console
    # layout = auto (the config does not set it): 6.1 has no overlay verity, so hardlinks.
    assert "layout hardlinks: objects checked once, before mounting" in lines


@pytest.mark.vm
def test_kernel_measured_digests_equal_userspace_digests(chain: Chain, host_fsverity: str) -> None:
    measured = scenario.kernel_digests(chain.boots[0].console)
    objects = sorted((chain.sysroot.repo / "objects").rglob("*.file"))
    objects += sorted((chain.sysroot.repo / "objects").rglob("*.image"))  # one per release
    assert len(objects) == len(measured) > 0
    for path in objects:
        guest_path = "/root" + scenario.in_image(chain.sysroot, path)
        kernel = measured[guest_path]
        assert kernel == digest_file(path).hex(), path  # sealtree's userspace digest
        tool = guest.run([host_fsverity, "digest", "--hash-alg=sha256", "--block-size=4096", path])
        assert tool.split()[0] == "sha256:" + kernel, path  # fsverity-utils
        assert path.name.startswith(kernel[2:]) and path.parent.name == kernel[:2]  # its name


@pytest.mark.vm
def test_default_without_mark_good_falls_back_to_previous_after_n_boots(chain: Chain) -> None:
    c, b = chain.sysroot.deployments["C"], chain.sysroot.deployments["B"]
    for i, result in enumerate(chain.boots[:scenario.TRIES]):
        _booted_release(result, chain.sysroot, "C")
        left = scenario.TRIES - 1 - i
        assert f"deployment {c} (default; {left} boot {'try' if left == 1 else 'tries'} left)" \
            in scenario.boot_lines(result.console)
    fallback = chain.boots[scenario.TRIES]
    assert any(line.startswith("the default deployment has no boot tries left") and b in line
               for line in scenario.boot_lines(fallback.console)), fallback.describe()
    _booted_release(fallback, chain.sysroot, "B")
    state = chain.state_after_counting
    assert state["default"] == c and state["previous"] == b and state["booted"] == b
    assert {d["id"]: d["tries_left"] for d in state["deployments"]}[c] == 0


@pytest.mark.vm
def test_bytes_changed_on_a_sealed_disk_are_never_served(chain: Chain) -> None:
    """After sealing, the measured digest comes from the intact Merkle tree, so the verifier
    boots; the kernel then refuses the changed block itself (EIO), so the booted system never
    sees the bytes."""
    result = chain.boots[-1]
    _booted_release(result, chain.sysroot, "B")
    assert result.results.get("blob") == "unreadable", result.describe()


@pytest.mark.vm
def test_object_bytes_changed_on_the_disk_image_is_refused(
        vm_kernel: Path, sysroot: scenario.Sysroot, initrds: dict[str, Path], tmp_path: Path) -> None:
    def tamper_image(copy: scenario.Sysroot, image: Path) -> None:
        scenario.corrupt_in_image(image, scenario.in_image(copy, copy.object_path("C", scenario.BLOB)))

    copy, result = _tampered(vm_kernel, sysroot, initrds["standalone"], tmp_path, tamper_image=tamper_image)
    refused = scenario.refusals(result.console)
    assert len(refused) == 1, result.describe()
    dep, stage, where, detail = refused[0]
    assert (dep, stage, where) == (copy.deployments["C"], "large object", "/" + scenario.BLOB)
    assert "content changed: the kernel-measured fs-verity digest is" in detail
    assert "provision: CORRUPT" in result.console  # the device's own check on sealing
    assert f"falling back to the previous deployment {copy.deployments['B']}" in result.console
    _booted_release(result, copy, "B")


@pytest.mark.vm
def test_object_chmod_is_refused(vm_kernel: Path, sysroot: scenario.Sysroot, initrds: dict[str, Path],
                                 tmp_path: Path) -> None:
    """busybox is one object shared by every release: no deployment can boot."""
    def tamper(copy: scenario.Sysroot) -> None:
        copy.object_path("C", "bin/busybox").chmod(0o4777)

    copy, result = _tampered(vm_kernel, sysroot, initrds["standalone"], tmp_path, tamper=tamper)
    refused = scenario.refusals(result.console)
    assert [(r[0], r[1], r[2]) for r in refused] == [
        (copy.deployments[x], "large object", "/bin/busybox") for x in ("C", "B")], result.describe()
    assert all("mode is 0o4777, the manifest says 0o755" in r[3] for r in refused)
    assert "sealtree-boot: FAILED: no deployment could be verified; not booting" in result.console
    assert result.results.get("boot") == "refused status=1"
    assert scenario.booted(result.console) == [] and "marker" not in result.results


@pytest.mark.vm
def test_pack_byte_flipped_is_refused(vm_kernel: Path, sysroot: scenario.Sysroot,
                                      initrds: dict[str, Path], tmp_path: Path) -> None:
    copy, result = _tampered(vm_kernel, sysroot, initrds["standalone"], tmp_path,
                             tamper=lambda s: scenario.flip_pack_byte(s, "C"))
    refused = scenario.refusals(result.console)
    assert len(refused) == 1, result.describe()
    dep, stage, where, detail = refused[0]
    assert (dep, stage) == (copy.deployments["C"], "pack signature")
    assert where == "/sysroot" + scenario.in_image(copy, copy.pack("C"))
    assert "does not verify over this pack" in detail
    _booted_release(result, copy, "B")


@pytest.mark.vm
def test_pack_signed_by_unknown_key_is_refused(vm_kernel: Path, sysroot: scenario.Sysroot,
                                               initrds: dict[str, Path], tmp_path: Path) -> None:
    copy, result = _tampered(vm_kernel, sysroot, initrds["standalone"], tmp_path,
                             tamper=lambda s: scenario.resign_with(s, "C", s.attacker_key))
    refused = scenario.refusals(result.console)
    assert len(refused) == 1, result.describe()
    dep, stage, where, detail = refused[0]
    assert (dep, stage) == (copy.deployments["C"], "pack signature")
    assert where == "/sysroot" + scenario.in_image(copy, copy.pack("C"))
    assert "not in the keyring" in detail
    _booted_release(result, copy, "B")


@pytest.mark.vm
def test_older_signed_pack_put_back_is_refused(vm_kernel: Path, sysroot: scenario.Sysroot,
                                               initrds: dict[str, Path], tmp_path: Path) -> None:
    """Release A is validly signed, but older than the floor baked into the initramfs (B)."""
    copy, result = _tampered(vm_kernel, sysroot, initrds["standalone"], tmp_path,
                             tamper=lambda s: scenario.set_default(s, "A"))
    refused = scenario.refusals(result.console)
    assert len(refused) == 1, result.describe()
    dep, stage, where, detail = refused[0]
    assert (dep, stage) == (copy.deployments["A"], "freshness")
    assert where == "/sysroot" + scenario.in_image(copy, copy.pack("A"))
    assert "version 1" in detail and "older than the oldest release this initramfs boots" in detail
    _booted_release(result, copy, "B")
