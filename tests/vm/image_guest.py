"""The boot tests' disk image: the busybox test tree of tests/vm/scenario.py with a /boot (the
guest kernel and an initramfs holding the verifier), committed, signed and built into a raw
disk with ``sealtree image build``, booted by OVMF and systemd-boot under qemu.

The initramfs is the harness's (static busybox, Debian's python3.11 with cryptography and
zstandard) with the hook's files (the verifier's modules, the keyring, ``boot.conf`` with
``seal = yes``: objects written on this host carry no fs-verity) and an ``/init`` that does
what initramfs-tools does with ``root=PARTUUID=``: it finds the partition (a GPT reader,
``image.gpt``, run by the guest's python: busybox cannot read partition GUIDs), mounts it at
/sysroot, runs ``sealtree-boot`` and switches to the deployment.  The initramfs carries no
freshness floor: it is part of the very release whose signed pack a floor would name, and
this image holds that release alone (a vendor builds a release's initramfs with the floor of
the releases before it; README, "Building a Debian image").

The deployed tree's ``/sbin/init`` prints what the test checks and powers off: the marker,
the kernel command line, the boot loader's ``LoaderEntrySelected`` EFI variable (so the
entry systemd-boot booted is known), what ``/var/sealtree-probe`` holds from an earlier boot,
and then writes into it which entry this boot came from (``installed`` or ``live``).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.vm import guest, scenario

OVMF = Path("/usr/share/ovmf/OVMF.fd")  # Debian's ovmf: code and variables in one image
REF = "os/main"
RELEASE = scenario.Release("A", "1", 1_700_000_000)
EFI_GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"  # systemd-boot's loader variables
MODULES = (*guest.DISK_MODULES, "nvme", *guest.OVERLAY_MODULES, "efivarfs")
BOOT_CONF = f"""# sealtree-boot configuration of the image's test initramfs
repo = {scenario.REPO_IN_SYSROOT}
keys = /etc/sealtree/keys
target = /newroot
verify = kernel
seal = yes
"""

DEPLOYED_INIT = f"""#!/bin/sh
B=/bin/busybox
$B mount -t proc proc /proc 2>/dev/null
echo "SEALTREE-RESULT marker=$($B cat /etc/sealtree-marker)"
echo "SEALTREE-RESULT cmdline=$($B cat /proc/cmdline)"
$B mount -t sysfs sysfs /sys 2>/dev/null
$B mount -t efivarfs efivarfs /sys/firmware/efi/efivars 2>/dev/null
V=/sys/firmware/efi/efivars/LoaderEntrySelected-{EFI_GUID}
echo "SEALTREE-RESULT entry=$($B tail -c +5 $V 2>/dev/null | $B tr -d '\\000')"
ROOT=$($B awk '$2 == "/" {{ print $3 " " $4 }}' /proc/mounts | $B tail -n 1)
echo "SEALTREE-RESULT root=$(echo "$ROOT" | $B cut -d, -f1)"
MODE=installed; case " $($B cat /proc/cmdline) " in *" sealtree.live=1 "*) MODE=live;; esac
echo "SEALTREE-RESULT probe-before=$($B cat /var/sealtree-probe 2>/dev/null || echo none)"
if echo "$MODE" > /var/sealtree-probe 2>/dev/null; then echo "SEALTREE-RESULT wrote=$MODE";
else echo "SEALTREE-RESULT wrote=no"; fi
$B sync
echo "SEALTREE-RESULT booted-file=$($B cat /run/sealtree/booted 2>/dev/null)"
$B poweroff -f
"""

#: Finds the partition whose GUID ``root=PARTUUID=`` names, as initramfs-tools does with blkid.
FIND_PARTUUID = """import os, re, sys
from image import gpt
want = re.search(r"root=PARTUUID=(\\S+)", open("/proc/cmdline").read())
if want is None:
    sys.exit("no root=PARTUUID= on the kernel command line")
for disk in sorted(os.listdir("/sys/block")):
    try:
        with open("/dev/" + disk, "rb") as handle:
            _guid, parts = gpt.read_partitions(handle.read(gpt.FIRST_USABLE * gpt.SECTOR))
    except (OSError, gpt.GptError):
        continue
    for number, part in enumerate(parts, 1):
        if str(part.guid) == want.group(1).lower():
            print("/dev/" + disk + ("p" if disk[-1].isdigit() else "") + str(number))
            sys.exit(0)
sys.exit("no partition " + want.group(1))
"""

INIT_BODY = (
    "mkdir -p /run /newroot /sysroot && mount -t tmpfs -o mode=0755 tmpfs /run\n"
    "i=0; while [ -z \"$dev\" ] && [ $i -lt 100 ]; do\n"
    f"  dev=$(PYTHONPATH={scenario.GUEST_PYTHON} python3 -s -B /usr/bin/find-partuuid 2>/dev/null)\n"
    "  [ -n \"$dev\" ] || sleep 0.2; i=$((i+1)); done\n"
    "echo \"SEALTREE-RESULT root-device=$dev\"\n"
    "mount -t ext4 \"$dev\" /sysroot || echo 'SEALTREE-RESULT mount-failed=sysroot'\n"
    "sealtree-boot; status=$?\n"
    "if [ $status -ne 0 ]; then echo \"SEALTREE-RESULT boot=refused status=$status\"; poweroff -f; fi\n"
    "mount -o move /sysroot /newroot/sysroot\n"
    "for d in dev proc sys run; do mount -o move /$d /newroot/$d; done\n"
    "exec switch_root /newroot /sbin/init\n"
)


@dataclass(frozen=True)
class Built:
    image: Path
    doc: dict  # type: ignore[type-arg]  # image build --json
    keyring: Path


def build_initrd(work: Path, keyring: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    (work / "boot.conf").write_text(BOOT_CONF)
    (work / "find-partuuid").write_text(FIND_PARTUUID)
    python = guest.python_sources(scenario.ROOT, ["store", "pack", "overlay", "image"], work / "python")
    trees = {
        scenario.GUEST_PYTHON: python,
        "/usr/bin/sealtree-boot": scenario.INTEGRATION / "sealtree-boot",
        "/usr/bin/find-partuuid": work / "find-partuuid",
        "/etc/sealtree/boot.conf": work / "boot.conf",
        "/etc/sealtree/keys": keyring,
    }
    init = guest.init_preamble(mount_sysroot=False) + INIT_BODY
    initrd = guest.build_initramfs(work / "initrd.gz", init_script=init, extra_trees=trees,
                                   modules=MODULES)
    segment = scenario.bytecode_segment(work, python)
    if segment is not None:
        with initrd.open("ab") as out, segment.open("rb") as src:
            shutil.copyfileobj(src, out)
    return initrd


def make_tree(dest: Path, initrd: Path, release: scenario.Release = RELEASE) -> Path:
    """scenario's tree, with this module's /sbin/init, a /var and a /boot."""
    scenario.make_tree(dest, release)
    (dest / "sbin" / "init").write_text(DEPLOYED_INIT)
    (dest / "var").mkdir(mode=0o755)
    kernel = guest.kernel()
    (dest / "boot").mkdir(mode=0o755)
    shutil.copyfile(kernel.vmlinuz, dest / "boot" / f"vmlinuz-{kernel.release}")
    shutil.copyfile(initrd, dest / "boot" / f"initrd.img-{kernel.release}")
    return dest


def build_image(work: Path, append: str = "quiet panic=-1") -> Built:
    """Vendor: keys, the tree, a commit; then ``sealtree image build`` (pack signed there)."""
    work.mkdir(parents=True, exist_ok=True)
    keyring = work / "keyring"
    keyring.mkdir()
    key = work / "vendor.key"
    scenario.sealtree("keygen", str(key))
    shutil.copy(str(key) + ".pub", keyring / "vendor.pub")
    initrd = build_initrd(work / "initramfs", keyring)
    tree = make_tree(work / "tree", initrd)
    vendor = work / "vendor-repo"
    scenario.sealtree("--repo", str(vendor), "init")
    scenario.sealtree("--repo", str(vendor), "commit", "-b", REF, "--version", RELEASE.version,
                      "--timestamp", str(RELEASE.timestamp), str(tree))
    image = work / "disk.raw"
    out = scenario.sealtree("--repo", str(vendor), "image", "build", REF, "-o", str(image),
                            "--keys", str(keyring), "--key", str(key), "--append", append, "--json")
    return Built(image, json.loads(out), keyring)


def qemu_command(image: Path, *, nvme: bool = False, script: Path | None = None) -> list[str]:
    """With ``script``: that file a second virtio disk and qemu's user network (the host's
    loopback is 10.0.2.2 in the guest)."""
    nic = "none" if script is None else "user,model=virtio-net-pci"
    cmd = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "2",
           "-nographic", "-no-reboot", "-nic", nic, "-bios", str(OVMF)]
    if nvme:
        cmd += ["-drive", f"file={image},if=none,id=disk,format=raw",
                "-device", "nvme,drive=disk,serial=sealtree"]
    else:
        cmd += ["-drive", f"file={image},if=virtio,format=raw"]
    if script is not None:
        cmd += ["-drive", f"file={script},if=virtio,format=raw"]
    return cmd


def esp_offset(doc: dict) -> int:  # type: ignore[type-arg]
    return int(doc["partitions"]["esp"]["offset"])


def set_default_entry(image: Path, doc: dict, entry: str, work: Path) -> None:  # type: ignore[type-arg]
    """Make ``entry`` the default in loader.conf of ``image``'s ESP (with mtools, unmounted),
    as an administrator picks another entry for the next boots."""
    conf = work / "loader.conf"
    text = guest.run(["mtype", "-i", f"{image}@@{esp_offset(doc)}", "::/loader/loader.conf"])
    lines = [f"default {entry}.conf" if line.startswith("default ") else line for line in text.splitlines()]
    conf.write_text("\n".join(lines) + "\n")
    guest.run(["mcopy", "-o", "-Q", "-i", f"{image}@@{esp_offset(doc)}", conf, "::/loader/loader.conf"])


@contextlib.contextmanager
def partitions_mounted(image: Path, doc: dict, work: Path) -> Iterator[tuple[Path, Path]]:  # type: ignore[type-arg]
    """The image's sysroot (ext4, loop) and ESP (the kernel's vfat, else fusefat on a loop
    device) mounted on this host, as a device has them mounted: (sysroot, esp)."""
    import subprocess
    sysroot, esp = work / "sysroot-mnt", work / "esp-mnt"
    sysroot.mkdir()
    esp.mkdir()
    part = doc["partitions"]
    subprocess.run(["mount", "-t", "ext4", "-o", f"loop,offset={part['sysroot']['offset']},"
                    f"sizelimit={part['sysroot']['size']}", str(image), str(sysroot)], check=True)
    loop = None
    try:
        with open("/proc/filesystems", encoding="ascii") as handle:
            vfat = any(line.split()[-1:] == ["vfat"] for line in handle)
        if vfat:
            subprocess.run(["mount", "-t", "vfat", "-o", f"loop,offset={part['esp']['offset']},"
                            f"sizelimit={part['esp']['size']}", str(image), str(esp)], check=True)
        else:
            loop = guest.run(["losetup", "--find", "--show", "--offset", str(part["esp"]["offset"]),
                              "--sizelimit", str(part["esp"]["size"]), str(image)]).strip()
            subprocess.run(["fusefat", "-o", "rw+", loop, str(esp)], check=True, capture_output=True)
        try:
            yield sysroot, esp
        finally:
            subprocess.run(["umount", str(esp)], check=True)
    finally:
        if loop is not None:
            subprocess.run(["losetup", "-d", loop], check=False)
        subprocess.run(["umount", str(sysroot)], check=True)


def deploy_release(built: Built, image: Path, release: scenario.Release,
                   work: Path) -> dict:  # type: ignore[type-arg]
    """Vendor: commit ``release`` (same kernel and initramfs, another marker), build and sign
    its pack.  Device (``image``, a copy of ``built``'s, partitions mounted here): import it, deploy it with
    ``--esp`` (new default; its kernel, initramfs and entry on the ESP).  deploy's JSON."""
    vendor_work = built.image.parent
    vendor, key = vendor_work / "vendor-repo", vendor_work / "vendor.key"
    tree = make_tree(work / "tree", vendor_work / "initramfs" / "initrd.gz", release)
    scenario.sealtree("--repo", str(vendor), "commit", "-b", REF, "--version", release.version,
                      "--timestamp", str(release.timestamp), str(tree))
    pack = work / "release.pack"
    scenario.sealtree("--repo", str(vendor), "pack", "build", REF, "-o", str(pack))
    scenario.sealtree("pack", "sign", str(pack), "--key", str(key))
    with partitions_mounted(image, built.doc, work) as (sysroot, esp):
        repo = str(sysroot / scenario.REPO_IN_SYSROOT.lstrip("/"))
        # what the device's update does: the signed pack imported, the large objects it names
        # fetched (here from the vendor's repository, each checked against its digest)
        from image.sysroot import _copy_missing
        from pack.importer import import_pack
        from pack.keys import Keyring
        from store.repo import Repository
        device = Repository.open(repo)
        imported = import_pack(device, str(pack), Keyring.load(str(built.keyring)))
        _copy_missing(Repository.open(str(vendor)), device, imported.missing)
        out = scenario.sealtree("--repo", repo, "deploy", REF, "--keys", str(built.keyring),
                                "--verify", "userspace", "--layout", "hardlinks", "--esp", str(esp),
                                "--json")
    return json.loads(out)  # type: ignore[no-any-return]


def boot(image: Path, log: Path, timeout: int = 420, *, nvme: bool = False,
         script: Path | None = None) -> guest.BootResult:
    """Boot ``image`` through OVMF and its own boot loader (the image a virtio disk, or with
    ``nvme`` an NVMe one; ``script`` as in qemu_command); the console as a BootResult."""
    return guest.run_qemu(qemu_command(image, nvme=nvme, script=script), log, timeout)
