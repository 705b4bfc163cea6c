"""An image of a real Debian system (systemd, udev, Debian's kernel and initramfs-tools),
built with ``sealtree image build`` and booted on UEFI firmware to multi-user.target.

The tree is the realvm builder's cached bookworm system (tests/vm/real_system.py), seen
through an overlay, made ready with ``integration/sealtree-prepare-rootfs`` (sealtree for
the device's python3, the initramfs-tools hook, the mark-good unit, /var layout, an empty
machine-id), given the vendor's keyring and a boot.conf with ``seal = yes``, and its
initramfs rebuilt by Debian's own ``update-initramfs`` inside it.  A test unit, ordered
after multi-user.target and the mark-good unit, prints what the test checks on the serial
console and powers off.  The initramfs carries no freshness floor (it is part of the
release a floor would name; see tests/vm/image_guest.py).

Boots: the installed entry (first boot: initramfs-tools finds ``root=PARTUUID=`` with udev
and blkid, the verifier seals and verifies the objects, systemd reaches multi-user.target,
the boot is marked good, a file is written to /var), then the live entry (multi-user.target
again; the file is not there and what it writes is not kept), then the installed entry
again (the file written by the installed boot is there).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.vm import debian_chroot, guest, image_guest, real_system, scenario
from tests.vm.fixtures import vm_kernel

__all__ = ["vm_kernel"]  # a fixture, used by name below

PREPARE = scenario.ROOT / "integration" / "sealtree-prepare-rootfs"
TIMESTAMP = 1_700_000_000
BOOT_CONF = """# sealtree-boot configuration (the image's real initramfs)
repo = /sealtree/repo
verify = kernel
seal = yes
"""
REPORT = f"""#!/bin/sh
# sealtree image test: what the boot test checks, on the serial console; then power off.
{{
echo "SEALTREE-RESULT reached=$(systemctl is-active multi-user.target)"
echo "SEALTREE-RESULT mark-good=$(systemctl is-active sealtree-mark-good.service)"
echo "SEALTREE-RESULT booted-file=$(cat /run/sealtree/booted 2>/dev/null)"
printf '%s\\n' "SEALTREE-RESULT cmdline=$(cat /proc/cmdline)"  # dash's echo would interpret the backslashes
V=/sys/firmware/efi/efivars/LoaderEntrySelected-{image_guest.EFI_GUID}
echo "SEALTREE-RESULT efivarfs=$(findmnt -n -o FSTYPE /sys/firmware/efi/efivars)"
echo "SEALTREE-RESULT entry=$(cat $V 2>&1 | tail -c +5 | tr -d '\\000')"
echo "SEALTREE-RESULT root=$(findmnt -n -o FSTYPE,OPTIONS / | cut -d, -f1)"
MODE=installed; case " $(cat /proc/cmdline) " in *" sealtree.live=1 "*) MODE=live;; esac
echo "SEALTREE-RESULT probe-before=$(cat /var/lib/sealtree-probe 2>/dev/null || echo none)"
if echo "$MODE" > /var/lib/sealtree-probe; then echo "SEALTREE-RESULT wrote=$MODE"; fi
echo "SEALTREE-RESULT failed-units=$(systemctl list-units --failed --plain --no-legend | wc -l)"
sync
}} > /dev/ttyS0 2>&1
systemctl --no-block poweroff
"""
UNIT = """[Unit]
Description=sealtree image test: report on the console and power off
After=multi-user.target sealtree-mark-good.service

[Service]
Type=oneshot
ExecStart=/usr/lib/sealtree-image-test/report

[Install]
WantedBy=multi-user.target
"""


def _prepare(root: Path, keyring: Path) -> None:
    # no package caches in the image (every device would seal them), as the realvm test does
    assert real_system.run_in(root, ["apt-get", "clean"]).returncode == 0
    subprocess.run(["sh", "-c", f"rm -rf {root}/var/lib/apt/lists/*"], check=True)
    subprocess.run(["sh", str(PREPARE), str(root)], check=True, capture_output=True)
    keys = root / "etc" / "sealtree" / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    for pub in keyring.iterdir():
        shutil.copy(pub, keys / pub.name)
    (root / "etc" / "sealtree" / "boot.conf").write_text(BOOT_CONF)
    report = root / "usr" / "lib" / "sealtree-image-test" / "report"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(REPORT)
    report.chmod(0o755)
    (root / "etc" / "systemd" / "system" / "sealtree-image-test.service").write_text(UNIT)
    wants = root / "etc" / "systemd" / "system" / "multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "sealtree-image-test.service"
    if not link.is_symlink():
        os.symlink("/etc/systemd/system/sealtree-image-test.service", link)
    # No login prompt on the serial console: the getty's vhangup() would cut the report off
    # in the middle (its writes to /dev/ttyS0 fail from then on).
    os.symlink("/dev/null", root / "etc" / "systemd" / "system" / "serial-getty@ttyS0.service")
    with debian_chroot.chroot_mounts(root):
        done = real_system.run_in(root, ["update-initramfs", "-u", "-k", "all"])
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def real_image(vm_kernel: Path, tmp_path_factory: pytest.TempPathFactory) -> image_guest.Built:
    if os.geteuid() != 0:
        pytest.skip("needs root: chroot, overlay mounts, owners")
    if not PREPARE.is_file():
        pytest.skip(f"{PREPARE} is not here (branch h-realvm)")
    work = tmp_path_factory.mktemp("real-image")
    base = real_system.real_system_tree()
    keyring = work / "keyring"
    keyring.mkdir()
    key = work / "vendor.key"
    scenario.sealtree("keygen", str(key))
    shutil.copy(str(key) + ".pub", keyring / "vendor.pub")
    vendor = work / "vendor-repo"
    scenario.sealtree("--repo", str(vendor), "init")
    with debian_chroot.overlay_view(base, work / "view") as root:
        _prepare(root, keyring)
        scenario.sealtree("--repo", str(vendor), "commit", "-b", image_guest.REF, "--version", "1",
                          "--timestamp", str(TIMESTAMP), "--skip-special", str(root))
    shutil.rmtree(work / "view", ignore_errors=True)
    image = work / "disk.raw"
    out = scenario.sealtree("--repo", str(vendor), "image", "build", image_guest.REF, "-o", str(image),
                            "--keys", str(keyring), "--key", str(key), "--append", "panic=-1", "--json")
    return image_guest.Built(image, json.loads(out), keyring)


def _boot(image: Path, log: Path) -> guest.BootResult:
    result = image_guest.boot(image, log, timeout=1200)
    assert not result.timed_out, result.describe(150)
    assert result.results.get("reached") == "active", result.describe(150)
    return result


@pytest.mark.vm
def test_real_debian_image_reaches_multi_user_installed_and_live(real_image: image_guest.Built,
                                                                 tmp_path: Path) -> None:
    doc = real_image.doc
    dep = doc["deployment"]
    installed, live = f"sealtree-{dep}", f"sealtree-{dep}-live"
    image = real_image.image  # booted in place: the fixture made it for this test alone

    first = _boot(image, tmp_path / "installed-1.log")
    res = first.results
    assert res.get("entry") == f"{installed}.conf", first.describe(150)
    assert f"root=PARTUUID={doc['partitions']['sysroot']['partuuid']}" in res.get("cmdline", "")
    lines = scenario.boot_lines(first.console)
    assert any(line.startswith("sealed ") for line in lines), lines
    assert scenario.booted(first.console) == [dep] and scenario.refusals(first.console) == []
    assert res.get("booted-file") == dep and res.get("mark-good") == "active"
    assert (res.get("probe-before"), res.get("wrote")) == ("none", "installed")

    image_guest.set_default_entry(image, doc, live, tmp_path)
    second = _boot(image, tmp_path / "live.log")
    res = second.results
    assert res.get("entry") == f"{live}.conf" and res.get("cmdline", "").rstrip().endswith("sealtree.live=1")
    assert res.get("probe-before") == "none" and res.get("wrote") == "live"

    image_guest.set_default_entry(image, doc, installed, tmp_path)
    third = _boot(image, tmp_path / "installed-2.log")
    assert third.results.get("entry") == f"{installed}.conf"
    assert (third.results.get("probe-before"), third.results.get("wrote")) == ("installed", "installed")
    seconds = [round(r.seconds) for r in (first, second, third)]
    print(f"real image {doc['size'] >> 20} MiB ({doc['allocated'] >> 20} MiB allocated), "
          f"sysroot content {doc['sysroot_content'] >> 20} MiB; boots to poweroff: {seconds} s")
