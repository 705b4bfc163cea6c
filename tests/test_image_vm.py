"""Booting an image from ``sealtree image build`` on UEFI firmware: OVMF, then the image's own
systemd-boot, its entry's kernel and initramfs, the verifier, the deployment.

The image is the busybox test tree (tests/vm/image_guest.py) with the guest kernel and an
initramfs holding the verifier in its /boot, committed, and built with its pack signed by
``image build --key``; qemu runs ``-bios /usr/share/ovmf/OVMF.fd`` (TCG) with the image as a
virtio disk and no ``-kernel``: everything that boots comes from the disk.  One image copy
goes through four boots: installed, live, live again, installed again; another copy boots
once as an NVMe disk; a third gets release B deployed with ``--esp`` and boots B's own entry.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.vm import image_guest, scenario
from tests.vm.fixtures import vm_kernel

__all__ = ["vm_kernel"]  # a fixture, used by name below


@pytest.fixture(scope="module")
def built(vm_kernel: Path, tmp_path_factory: pytest.TempPathFactory) -> image_guest.Built:
    if not image_guest.OVMF.is_file():
        pytest.skip(f"{image_guest.OVMF} is missing (apt package ovmf)")
    return image_guest.build_image(tmp_path_factory.mktemp("image"))


def _boot(image: Path, log: Path) -> image_guest.guest.BootResult:
    result = image_guest.boot(image, log)
    assert not result.timed_out, result.describe()
    assert result.powered_off, result.describe(120)
    assert "Traceback" not in result.console, result.describe(120)
    return result


@pytest.mark.vm
def test_image_boots_installed_and_live_entries_and_only_installed_keeps_writes(
        built: image_guest.Built, tmp_path: Path) -> None:
    doc = built.doc
    dep = doc["deployment"]
    installed, live = f"sealtree-{dep}", f"sealtree-{dep}-live"
    assert doc["entries"] == [installed, live]
    partuuid = doc["partitions"]["sysroot"]["partuuid"]
    image = tmp_path / "disk.raw"
    shutil.copyfile(built.image, image)

    # 1. Installed (loader.conf's default): systemd-boot shows both entries and boots the
    # default one; the verifier seals the objects (first boot), verifies and boots the
    # deployment with its persistent /etc and /var.
    first = _boot(image, tmp_path / "installed-1.log")
    res = first.results
    assert "os/main 1 (sealtree)" in first.console and "os/main 1 (live, nothing kept)" in first.console
    assert res.get("entry") == f"{installed}.conf", first.describe()
    assert f"root=PARTUUID={partuuid} console=ttyS0" in res.get("cmdline", "")
    assert "sealtree.live=1" not in res["cmdline"]
    assert res.get("root-device") == "/dev/vda2"
    lines = scenario.boot_lines(first.console)
    assert any(line.startswith("sealed ") and line.endswith("with fs-verity (seal = yes)") for line in lines)
    assert scenario.booted(first.console) == [dep] and scenario.refusals(first.console) == []
    assert res.get("marker") == image_guest.RELEASE.marker and res.get("booted-file") == dep
    assert (res.get("probe-before"), res.get("wrote")) == ("none", "installed")

    # 2. Live, chosen in loader.conf: the same deployment, verified, with a tmpfs upper layer.
    image_guest.set_default_entry(image, doc, live, tmp_path)
    second = _boot(image, tmp_path / "live-1.log")
    res = second.results
    assert res.get("entry") == f"{live}.conf", second.describe()
    assert res.get("cmdline", "").endswith("sealtree.live=1")
    assert not [line for line in scenario.boot_lines(second.console) if line.startswith("sealed ")]
    assert any(line.startswith(f"booting {dep} ") and "live" in line
               for line in scenario.boot_lines(second.console)), second.describe()
    assert res.get("marker") == image_guest.RELEASE.marker
    assert res.get("wrote") == "live"  # writable ...

    # 3. Live again: what the last live boot wrote is gone.
    third = _boot(image, tmp_path / "live-2.log")
    assert third.results.get("entry") == f"{live}.conf"
    assert third.results.get("probe-before") == second.results.get("probe-before") != "live"
    assert third.results.get("wrote") == "live"

    # 4. Installed again: what the installed boot wrote is kept, and nothing of the live boots.
    image_guest.set_default_entry(image, doc, installed, tmp_path)
    fourth = _boot(image, tmp_path / "installed-2.log")
    assert fourth.results.get("entry") == f"{installed}.conf"
    assert (fourth.results.get("probe-before"), fourth.results.get("wrote")) == ("installed", "installed")
    seconds = [round(r.seconds) for r in (first, second, third, fourth)]
    print(f"image {doc['size'] >> 20} MiB ({doc['allocated'] >> 20} MiB allocated); boots: {seconds} s")


@pytest.mark.vm
def test_image_boots_from_an_nvme_disk(built: image_guest.Built, tmp_path: Path) -> None:
    """The same image as an NVMe disk: the partition is found by its GUID, whatever the disk's
    name (``/dev/nvme0n1p2`` here, ``/dev/vda2`` above)."""
    image = tmp_path / "disk.raw"
    shutil.copyfile(built.image, image)
    result = image_guest.boot(image, tmp_path / "nvme.log", nvme=True)
    assert result.powered_off, result.describe(120)
    assert result.results.get("root-device") == "/dev/nvme0n1p2", result.describe()
    assert scenario.booted(result.console) == [built.doc["deployment"]]
    assert result.results.get("marker") == image_guest.RELEASE.marker


@pytest.mark.vm
def test_a_release_deployed_with_esp_boots_its_own_entry(built: image_guest.Built, tmp_path: Path) -> None:
    """A/B at the boot loader: release B deployed into the image's sysroot with ``--esp`` (the
    partitions mounted on this host, as the device mounts them) adds B's kernel, initramfs and
    entry to the ESP and makes it loader.conf's default; the next boot selects B's own entry
    and boots B, while A's entry stays in the menu, pinned to A."""
    image = tmp_path / "disk.raw"
    shutil.copyfile(built.image, image)
    release = scenario.Release("B", "2", image_guest.RELEASE.timestamp + 100)
    (tmp_path / "b").mkdir()
    doc = image_guest.deploy_release(built, image, release, tmp_path / "b")
    dep_a, dep_b = built.doc["deployment"], doc["id"]
    assert doc["esp"]["default_entry"] == f"sealtree-{dep_b}"
    assert f"/loader/entries/sealtree-{dep_a}-live.conf" in doc["esp"]["removed"]
    result = _boot(image, tmp_path / "b.log")
    res = result.results
    assert res.get("entry") == f"sealtree-{dep_b}.conf", result.describe()
    assert "os/main 2 (sealtree)" in result.console
    assert f"os/main 1 (sealtree, {dep_a[:12]} only)" in result.console
    assert scenario.booted(result.console) == [dep_b] and scenario.refusals(result.console) == []
    assert res.get("marker") == release.marker and res.get("booted-file") == dep_b
    assert f"root=PARTUUID={built.doc['partitions']['sysroot']['partuuid']} console=ttyS0 quiet" \
        in res.get("cmdline", "")
