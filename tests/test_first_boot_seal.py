"""First-boot sealing: ``seal = yes`` makes a disk written without fs-verity boot with ``verify = kernel``.

A disk made on a host whose objects carry no fs-verity (``mke2fs -d`` of a repository
deployed on a filesystem without it) cannot boot with ``verify = kernel``: the kernel has
nothing to measure.  With ``seal = yes`` in the initramfs's boot.conf, the verifier
enables fs-verity on the large objects the verified, signed pack names before it measures
them; an object whose bytes were changed is sealed as it is and then measures to another
digest than its name, so it is refused as before.

The vm tests boot the initramfs that Debian's real ``update-initramfs`` builds with the
project's hook (tests/vm/debian_chroot.py: klibc, no busybox, the real local-bottom
script and panic) on the scenario's disk (tests/vm/scenario.py), under qemu.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from overlay import boot, boot_config
from overlay.objcheck import Policy
from tests.vm import debian_chroot, guest, scenario
from tests.vm.fixtures import vm_kernel

__all__ = ["vm_kernel"]  # a fixture, used by name below

SEAL_CONF = scenario.BOOT_CONF + "seal = yes\n"


# -- host side ---------------------------------------------------------------------------------

def test_seal_is_set_only_by_the_initramfs_configuration() -> None:
    assert boot_config.BootConfig().seal is False
    config = boot_config.parse_config_text(SEAL_CONF, "boot.conf")
    assert config.seal is True and config.verify is Policy.KERNEL
    said: list[str] = []
    unsealed = boot_config.apply_cmdline(boot_config.BootConfig(), "sealtree.seal=yes", said.append)
    assert unsealed.seal is False
    assert said == ["ignoring sealtree.seal= on the kernel command line: "
                    "only the initramfs configuration sets it"]
    with pytest.raises(boot_config.BootConfigError):
        boot_config.parse_config_text("seal = maybe\n", "boot.conf")


def test_seal_where_the_filesystem_has_no_fs_verity_is_refused_at_the_seal_stage(tmp_path: Path) -> None:
    """On this host's filesystem fs-verity cannot be enabled: each deployment is refused at
    ``seal``, naming an object, and nothing is mounted."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the scenario's owners and xattrs")
    sysroot = scenario.build_sysroot(tmp_path / "vendor")
    probe = next((sysroot.repo / "objects").rglob("*.file"))
    from store import kverity
    if kverity.is_supported(str(probe)):
        pytest.skip("this host's filesystem has fs-verity")
    target = tmp_path / "newroot"
    config = boot_config.BootConfig(sysroot=str(sysroot.root), keys=str(sysroot.keyring),
                                    freshness=str(sysroot.floor), target=str(target),
                                    scratch=str(tmp_path / "scratch"), verify=Policy.KERNEL, seal=True)
    said: list[str] = []
    assert boot.run_boot(config, said.append) == boot.EXIT_REFUSED, said
    refused = [line for line in said if line.startswith("REFUSED")]
    assert len(refused) == 2, said
    assert all(": seal failed at " + str(sysroot.repo / "objects") in line
               and "fs-verity not supported here" in line for line in refused), said
    assert not os.path.ismount(target)


# -- the guest -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class RealInitrds:
    seal: Path  # boot.conf with seal = yes
    no_seal: Path  # the same without it
    seconds: tuple[float, float]  # update-initramfs -c, then -u


@pytest.fixture(scope="module")
def sysroot(tmp_path_factory: pytest.TempPathFactory) -> scenario.Sysroot:
    return scenario.build_sysroot(tmp_path_factory.mktemp("vendor"))


@pytest.fixture(scope="module")
def real_initrds(vm_kernel: Path, sysroot: scenario.Sysroot, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[RealInitrds]:
    """Two initramfs images from the real update-initramfs: with and without ``seal = yes``."""
    work = tmp_path_factory.mktemp("real-initramfs")
    base = debian_chroot.initramfs_chroot()
    floor = work / "freshness.json"
    debian_chroot.write_vendor_floor(sysroot, floor)
    with debian_chroot.writable_chroot(base, work / "overlay") as root:
        debian_chroot.install_sealtree(root, sysroot, SEAL_CONF, floor)
        sealing = debian_chroot.update_initramfs(root, "-c", "seal")
        shutil.copy(sealing.image, work / "initrd-seal.img")
        (root / "etc/sealtree/boot.conf").write_text(scenario.BOOT_CONF)
        plain = debian_chroot.update_initramfs(root, "-u", "no-seal")
        shutil.copy(plain.image, work / "initrd-no-seal.img")
    yield RealInitrds(work / "initrd-seal.img", work / "initrd-no-seal.img",
                      (sealing.seconds, plain.seconds))


def _boot(kernel: Path, initrd: Path, image: Path, log: Path) -> guest.BootResult:
    result = guest.boot(kernel, initrd, disks=[image], append="root=/dev/vda", timeout=400, console_log=log)
    assert not result.timed_out, result.describe()
    assert "Traceback" not in result.console, result.describe(120)
    return result


@pytest.mark.vm
def test_unsealed_disk_is_refused_without_seal(vm_kernel: Path, sysroot: scenario.Sysroot,
                                                real_initrds: RealInitrds, tmp_path: Path) -> None:
    image = scenario.make_image(sysroot.copy(tmp_path / "sysroot"), tmp_path / "disk.img")
    result = _boot(vm_kernel, real_initrds.no_seal, image, tmp_path / "console.log")
    refused = scenario.refusals(result.console)
    assert [r[0] for r in refused] == [sysroot.deployments["C"], sysroot.deployments["B"]], result.describe()
    assert all(r[1] == "large object" and "the kernel cannot measure" in r[3] for r in refused)
    assert "sealtree: no deployment could be verified; not booting" in result.console
    assert scenario.booted(result.console) == [] and "marker" not in result.results


@pytest.mark.vm
def test_seal_yes_boots_an_unsealed_disk_with_verify_kernel(vm_kernel: Path, sysroot: scenario.Sysroot,
                                                             real_initrds: RealInitrds,
                                                             tmp_path: Path) -> None:
    """First boot: the objects of C are sealed, measured by the kernel and booted; the second
    boot finds them sealed already."""
    copy = sysroot.copy(tmp_path / "sysroot")
    image = scenario.make_image(copy, tmp_path / "disk.img")
    first = _boot(vm_kernel, real_initrds.seal, image, tmp_path / "first.log")
    c = copy.deployments["C"]
    lines = scenario.boot_lines(first.console)
    assert "remounted /sysroot read-write" in lines, first.describe()  # mount(2): klibc has no remount
    sealed = [line for line in lines if line.startswith("sealed ")]
    assert len(sealed) == 1 and sealed[0].endswith(f"large objects of {c} with fs-verity (seal = yes)"), lines
    assert int(sealed[0].split()[1]) > 0
    assert any("measured by the kernel" in line and "0 digested in userspace" in line for line in lines)
    assert scenario.refusals(first.console) == []
    assert scenario.booted(first.console) == [c]
    res = first.results
    assert res.get("marker") == scenario.RELEASES[2].marker, first.describe()
    assert res.get("root") == "overlay ro" and res.get("booted-file") == c
    second = _boot(vm_kernel, real_initrds.seal, image, tmp_path / "second.log")
    lines = scenario.boot_lines(second.console)
    assert not [line for line in lines if line.startswith("sealed ")], lines
    assert scenario.booted(second.console) == [c], second.describe()
    assert second.results.get("marker") == scenario.RELEASES[2].marker
    print(f"update-initramfs: {real_initrds.seconds[0]:.0f} s and {real_initrds.seconds[1]:.0f} s; "
          f"boots: {first.seconds:.0f} s (sealing) and {second.seconds:.0f} s")


@pytest.mark.vm
def test_seal_yes_seals_changed_bytes_as_they_are_and_refuses_them(
        vm_kernel: Path, sysroot: scenario.Sysroot, real_initrds: RealInitrds, tmp_path: Path) -> None:
    """Sealing is safe on a disk nobody checked: C's large object, changed on the image before
    the first boot, is sealed with the changed bytes, measures to another digest than its
    name, and C is refused; B (other objects) boots."""
    copy = sysroot.copy(tmp_path / "sysroot")
    image = scenario.make_image(copy, tmp_path / "disk.img")
    scenario.corrupt_in_image(image, scenario.in_image(copy, copy.object_path("C", scenario.BLOB)))
    result = _boot(vm_kernel, real_initrds.seal, image, tmp_path / "console.log")
    refused = scenario.refusals(result.console)
    assert len(refused) == 1, result.describe()
    dep, stage, where, detail = refused[0]
    assert (dep, stage, where) == (copy.deployments["C"], "large object", "/" + scenario.BLOB)
    assert "content changed: the kernel-measured fs-verity digest is" in detail
    assert scenario.booted(result.console) == [copy.deployments["B"]], result.describe()
    assert result.results.get("marker") == scenario.RELEASES[1].marker
