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
again (the file written by the installed boot is there) with an update run on the device:
release 2 (the same tree with another ``/usr/share/sealtree-image-test/release``, published
by the vendor and served by nginx on this host's loopback, 10.0.2.2 on qemu's user network)
pulled, and deployed with ``deploy --esp /boot/efi`` (the image's ESP, vfat, mounted in the
running system); then the next boot, which systemd-boot takes from release 2's own entry
(the default ``deploy --esp`` wrote into loader.conf) and which runs release 2.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.nginx import serving
from tests.vm import debian_chroot, guest, image_guest, real_system, scenario
from tests.vm.fixtures import vm_kernel

__all__ = ["vm_kernel"]  # a fixture, used by name below

RELEASE_FILE = "usr/share/sealtree-image-test/release"
DEVICE_REPO = "/sysroot/sealtree/repo"  # the image's repository, as the booted system sees it
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
echo "SEALTREE-RESULT release=$(cat /usr/share/sealtree-image-test/release)"
# the test's commands for this boot, if the host gave a second disk (the update boot)
if [ -b /dev/vdb ]; then
  tr -d '\\000' < /dev/vdb > /run/sealtree-image-test.sh && . /run/sealtree-image-test.sh
fi
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
    (report.parent.parent.parent / "share" / "sealtree-image-test").mkdir(parents=True, exist_ok=True)
    (root / RELEASE_FILE).write_text("1\n")
    (root / "boot" / "efi").mkdir(exist_ok=True)  # where the device mounts its ESP, as Debian does
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


@dataclass(frozen=True)
class RealImage:
    built: image_guest.Built
    site: Path  # release 2, published by the vendor (``sealtree publish``), for nginx to serve
    release2: str  # its commit


@pytest.fixture(scope="module")
def real_image(vm_kernel: Path, tmp_path_factory: pytest.TempPathFactory) -> RealImage:
    if os.geteuid() != 0:
        pytest.skip("needs root: chroot, overlay mounts, owners")
    work = tmp_path_factory.mktemp("real-image")
    base = real_system.real_system_tree()
    keyring = work / "keyring"
    keyring.mkdir()
    key = work / "vendor.key"
    scenario.sealtree("keygen", str(key))
    shutil.copy(str(key) + ".pub", keyring / "vendor.pub")
    vendor = work / "vendor-repo"
    scenario.sealtree("--repo", str(vendor), "init")
    image = work / "disk.raw"
    site = work / "site"
    with debian_chroot.overlay_view(base, work / "view") as root:
        _prepare(root, keyring)
        scenario.sealtree("--repo", str(vendor), "commit", "-b", image_guest.REF, "--version", "1",
                          "--timestamp", str(TIMESTAMP), "--skip-special", str(root))
        out = scenario.sealtree("--repo", str(vendor), "image", "build", image_guest.REF, "-o", str(image),
                                "--keys", str(keyring), "--key", str(key), "--append", "panic=-1", "--json")
        # release 2: the same system with another release marker (same kernel and initramfs),
        # published for the device to pull once it runs release 1
        (root / RELEASE_FILE).write_text("2\n")
        done = scenario.sealtree("--repo", str(vendor), "commit", "-b", image_guest.REF, "--version", "2",
                                 "--timestamp", str(TIMESTAMP + 1), "--skip-special", "--json", str(root))
        scenario.sealtree("--repo", str(vendor), "publish", str(site), "--key", str(key), image_guest.REF)
    shutil.rmtree(work / "view", ignore_errors=True)
    built = image_guest.Built(image, json.loads(out), keyring)
    return RealImage(built, site, str(json.loads(done)["commit"]))


def _boot(image: Path, log: Path, script: Path | None = None) -> guest.BootResult:
    result = image_guest.boot(image, log, timeout=1200, script=script)
    assert not result.timed_out, result.describe(150)
    assert result.results.get("reached") == "active", result.describe(150)
    return result


def _update_script(guest_url: str) -> str:
    """The third boot's commands (sourced by the report script, output on the console): the
    network, the ESP mounted at /boot/efi, release 2 pulled over HTTP and deployed with
    ``--esp``, as an update runs on the device."""
    return f"""R() {{ printf 'SEALTREE-RESULT %s=%s\\n' "$1" "$2"; }}
IF=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
ip link set "$IF" up && ip addr add 10.0.2.15/24 dev "$IF" && ip route add default via 10.0.2.2
FIELDS='import json, sys; d = json.load(sys.stdin); print(d["id"], d["commit"], d["esp"]["default_entry"])'
mount -t vfat /dev/vda1 /boot/efi && R esp "$(findmnt -n -o FSTYPE /boot/efi)"
R vfat "$(grep -cw vfat /proc/filesystems)"
sealtree --repo {DEVICE_REPO} remote add vendor {guest_url} --keys /etc/sealtree/keys
sealtree --repo {DEVICE_REPO} pull vendor && R pulled yes
sealtree --repo {DEVICE_REPO} deploy {image_guest.REF} --keys /etc/sealtree/keys --esp /boot/efi --json \\
  > /run/deploy.json && R deployed "$(python3 -c "$FIELDS" < /run/deploy.json)"
umount /boot/efi && R esp-unmounted yes
"""


@pytest.mark.vm
def test_real_debian_image_reaches_multi_user_installed_and_live(real_image: RealImage,
                                                                 tmp_path: Path) -> None:
    doc = real_image.built.doc
    dep = doc["deployment"]
    installed, live = f"sealtree-{dep}", f"sealtree-{dep}-live"
    image = real_image.built.image  # booted in place: the fixture made it for this test alone

    first = _boot(image, tmp_path / "installed-1.log")
    res = first.results
    assert res.get("entry") == f"{installed}.conf", first.describe(150)
    assert f"root=PARTUUID={doc['partitions']['sysroot']['partuuid']}" in res.get("cmdline", "")
    lines = scenario.boot_lines(first.console)
    assert any(line.startswith("sealed ") for line in lines), lines
    assert scenario.booted(first.console) == [dep] and scenario.refusals(first.console) == []
    assert res.get("booted-file") == dep and res.get("mark-good") == "active"
    assert (res.get("probe-before"), res.get("wrote")) == ("none", "installed")
    assert res.get("release") == "1"

    image_guest.set_default_entry(image, doc, live, tmp_path)
    second = _boot(image, tmp_path / "live.log")
    res = second.results
    assert res.get("entry") == f"{live}.conf" and res.get("cmdline", "").rstrip().endswith("sealtree.live=1")
    assert res.get("probe-before") == "none" and res.get("wrote") == "live"

    # the installed entry again, and the update deployed from the running system: release 2
    # pulled from the vendor's site (nginx on this host's loopback) and deployed with --esp
    image_guest.set_default_entry(image, doc, installed, tmp_path)
    with serving(real_image.site, tmp_path / "nginx") as server:
        script = tmp_path / "update.img"
        data = _update_script(server.url.replace("127.0.0.1", "10.0.2.2")).encode()
        script.write_bytes(data + b"\0" * (-len(data) % 4096 + 4096))
        third = _boot(image, tmp_path / "installed-2.log", script)
    res = third.results
    assert res.get("entry") == f"{installed}.conf", third.describe(150)
    assert (res.get("probe-before"), res.get("wrote")) == ("installed", "installed")
    assert res.get("esp") == "vfat" and res.get("vfat") == "1", third.describe(150)
    assert res.get("pulled") == "yes", third.describe(150)
    assert "deployed" in res, third.describe(150)
    dep2, commit, default_entry = res["deployed"].split()
    assert commit == real_image.release2 and dep2 != dep, third.describe(150)
    assert default_entry == f"sealtree-{dep2}", res["deployed"]
    assert res.get("esp-unmounted") == "yes"

    # the next boot: systemd-boot takes release 2's own entry, the system runs release 2
    fourth = _boot(image, tmp_path / "update.log")
    res = fourth.results
    assert res.get("entry") == f"sealtree-{dep2}.conf", fourth.describe(150)
    assert scenario.booted(fourth.console) == [dep2] and scenario.refusals(fourth.console) == []
    assert res.get("booted-file") == dep2 and res.get("release") == "2"
    assert res.get("mark-good") == "active" and res.get("probe-before") == "installed"
    assert res.get("failed-units") == "0", fourth.describe(150)
    seconds = [round(r.seconds) for r in (first, second, third, fourth)]
    print(f"real image {doc['size'] >> 20} MiB ({doc['allocated'] >> 20} MiB allocated), "
          f"sysroot content {doc['sysroot_content'] >> 20} MiB; boots to poweroff "
          f"(installed, live, installed + update, release 2): {seconds} s")
