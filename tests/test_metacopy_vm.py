"""The metacopy layout enforced by the kernel: Debian trixie's 6.12 under qemu (TCG).

The disk is the boot tests' (``tests/vm/scenario.py``: three signed releases deployed on a
host without fs-verity, so recorded in the hardlinks layout; the boot chooses the layout).
Two boots:

1. ``scenarios``: two copies of the disk (/dev/vda, /dev/vdb), both provisioned (fs-verity
   on every object); then ``tests/vm/metacopy_guest.py`` runs on /dev/vda: a live boot
   (``sealtree.live=1`` on this boot's kernel command line: the tree writable in memory, a
   file written gone at the next verifier run, ``verity=require`` still), a good boot in
   the metacopy layout, an object swapped at runtime, an object without fs-verity, stubs
   without a digest (see that module).  /dev/vdb is left sealed and untouched.
2. ``sealed``: /dev/vdb after boot 1, with one byte of the default release's large file
   changed on the image, booted through ``sealtree-boot`` with the test initramfs's own
   configuration (``layout`` not set: ``auto``, which picks metacopy on 6.12): the verifier
   passes (the measured digest is the intact Merkle tree's), the deployed tree runs, and
   reading that file fails (EIO): the boot cannot pass an assessment that reads it.

``auto`` picking hardlinks on bookworm's 6.1 is asserted in tests/test_boot_vm.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from pack.reader import read_image_ref
from store.fsverity import digest_file
from store.ids import RawId
from store.repo import Repository
from tests.vm import guest, scenario
from tests.vm.fixtures import vm_kernel_612

__all__ = ["vm_kernel_612"]  # a fixture used by name below

pytestmark = pytest.mark.vm

GUEST_SCRIPT = Path(__file__).resolve().parent / "vm" / "metacopy_guest.py"
GUEST_SPEC = "/etc/sealtree/metacopy-test.json"

_WAIT = ("for d in vda vdb; do i=0; while [ ! -b /dev/$d ] && [ $i -lt 100 ]; do sleep 0.1; "
         "i=$((i+1)); done; done\n")
_PROVISION = (f"PYTHONPATH={scenario.GUEST_PYTHON} python3 -s -B -m overlay.provision --digests "
              "{repo} || echo 'SEALTREE-RESULT provision=failed'\n")
INIT_SCENARIOS = (
    "mkdir -p /run /newroot /mnt/b && mount -t tmpfs -o mode=0755 tmpfs /run\n" + _WAIT
    + "mount -t ext4 /dev/vdb /mnt/b && " + _PROVISION.format(repo="/mnt/b" + scenario.REPO_IN_SYSROOT)
    + "umount /mnt/b\n"
    + "mount -t ext4 /dev/vda /sysroot && " + _PROVISION.format(repo="/sysroot" + scenario.REPO_IN_SYSROOT)
    + "umount /sysroot\n"
    + f"PYTHONPATH={scenario.GUEST_PYTHON} python3 -s -B /usr/lib/sealtree/metacopy_guest.py\n"
    + "dmesg | grep -i 'overlayfs' | sed 's/^/KERNEL: /'\n"
    + "poweroff -f\n"
)


@dataclass(frozen=True)
class Boots:
    sysroot: scenario.Sysroot
    scenarios: guest.BootResult
    sealed: guest.BootResult


def _boot(kernel: guest.Kernel, initrd: Path, disks: list[Path], append: str,
          log: Path) -> guest.BootResult:
    result = guest.boot(kernel.vmlinuz, initrd, disks=disks, append=append, timeout=600,
                        console_log=log)
    assert result.powered_off, result.describe()
    assert "Traceback" not in result.console, result.describe(120)
    return result


def _image_digest(sysroot: scenario.Sysroot, release: str) -> bytes:
    """The image digest release's kept pack signs (format version 2)."""
    ref = read_image_ref(sysroot.repo / "packs" / f"{sysroot.commits[release]}.pack")
    assert ref is not None
    return ref.digest


def _image_object(sysroot: scenario.Sysroot, release: str) -> Path:
    path = Path(Repository.open(str(sysroot.repo)).objects.image_path(
        RawId(_image_digest(sysroot, release))))
    assert path.is_file()  # pack import built it
    return path


@pytest.fixture(scope="module")
def boots(vm_kernel_612: guest.Kernel, tmp_path_factory: pytest.TempPathFactory) -> Boots:
    work = tmp_path_factory.mktemp("metacopy-vm")
    sysroot = scenario.build_sysroot(work / "vendor")
    blob_c = sysroot.object_path("C", scenario.BLOB)
    blob_b = sysroot.object_path("B", scenario.BLOB)
    image_c = _image_object(sysroot, "C")

    def in_guest(path: Path) -> str:
        return "/sysroot" + scenario.in_image(sysroot, path)

    spec = {"blob": scenario.BLOB, "objects": in_guest(sysroot.repo / "objects"),
            "blob_c_object": in_guest(blob_c), "blob_b_object": in_guest(blob_b),
            "blob_c_digest": digest_file(blob_c).hex(), "blob_b_digest": digest_file(blob_b).hex(),
            "blob_c_sha256": hashlib.sha256(blob_c.read_bytes()).hexdigest(),
            "image_c": in_guest(image_c), "image_c_digest": _image_digest(sysroot, "C").hex()}
    (work / "spec.json").write_text(json.dumps(spec))
    extra = {GUEST_SPEC: work / "spec.json", "/usr/lib/sealtree/metacopy_guest.py": GUEST_SCRIPT}
    initrd = scenario.build_initrd(work / "scenarios-initrd", sysroot, INIT_SCENARIOS,
                                   guest_kernel=vm_kernel_612, extra_trees=extra)
    disk_a = scenario.make_image(sysroot, work / "a.img")
    disk_b = work / "b.img"
    shutil.copyfile(disk_a, disk_b)
    first = _boot(vm_kernel_612, initrd, [disk_a, disk_b], "sealtree.live=1",
                  work / "scenarios.log")
    scenario.corrupt_in_image(disk_b, scenario.in_image(sysroot, blob_c))
    standalone = scenario.build_initrd(work / "standalone-initrd", sysroot, scenario.INIT_STANDALONE,
                                       guest_kernel=vm_kernel_612)
    sealed = _boot(vm_kernel_612, standalone, [disk_b], "sealtree.root=/dev/vda",
                   work / "sealed.log")
    return Boots(sysroot, first, sealed)


def test_good_boot_in_metacopy_layout(boots: Boots) -> None:
    res = boots.scenarios.results
    assert res.get("provision") is None, boots.scenarios.describe()
    assert res.get("good-status") == "0", boots.scenarios.describe()
    options = res["good-options"].split(",")
    assert "verity=require" in options and "metacopy=on" in options, options
    assert any(o.startswith("datadir+=") for o in options)  # the new mount API on 6.12
    assert res.get("good-blob") == "right" and res.get("good-marker") == scenario.RELEASES[2].marker
    lines = scenario.boot_lines(boots.scenarios.console)
    assert "layout metacopy (verity=require): the kernel checks every large file's fs-verity " \
           "digest at each open" in lines, lines
    assert any("measured by the kernel, 0 digested in userspace" in line for line in lines)


def test_live_boot_is_writable_in_memory_and_still_enforced(boots: Boots) -> None:
    """``sealtree.live=1``: the metacopy tree is writable in memory, mounted ``verity=require``;
    a file written is gone when the next boot's verifier mounts the tree again."""
    res = boots.scenarios.results
    assert res.get("live-config") == "True", boots.scenarios.describe()
    assert res.get("live-status") == "0", boots.scenarios.describe()
    options = res["live-options"].split(",")
    assert "verity=require" in options and "metacopy=on" in options, options
    assert res.get("live-write") == "read back", boots.scenarios.describe()
    assert res.get("live-blob") == "right", boots.scenarios.describe()
    assert res.get("live-again-status") == "0", boots.scenarios.describe()
    assert res.get("live-again-written") == "False", boots.scenarios.describe()
    assert res.get("live-on-disk") == "none", boots.scenarios.describe()
    assert res.get("live-again-blob") == "right"
    lines = scenario.boot_lines(boots.scenarios.console)
    assert any("live: writes in memory only, nothing persists" in line for line in lines), lines
    assert not any("ignoring sealtree.live" in line for line in lines), lines


def test_object_replaced_at_runtime_is_not_served(boots: Boots) -> None:
    res = boots.scenarios.results
    assert res.get("swap-has-verity") == "True", boots.scenarios.describe()
    assert res.get("swap-read") == "EIO", boots.scenarios.describe()
    assert res.get("swap-other-file") == "readable"
    assert "has the wrong fs-verity digest" in boots.scenarios.console


def test_object_without_fs_verity_is_refused(boots: Boots) -> None:
    res = boots.scenarios.results
    assert res.get("noverity-measure") == "None", boots.scenarios.describe()
    refused = scenario.refusals(boots.scenarios.console)[:1]  # the image scenario's follows
    c, b = boots.sysroot.deployments["C"], boots.sysroot.deployments["B"]
    assert [(r[0], r[1], r[2]) for r in refused] == [(c, "large object", "/" + scenario.BLOB)]
    assert "the kernel cannot measure its fs-verity digest" in refused[0][3]
    assert res.get("noverity-status") == "0" and res.get("noverity-booted") == b


def test_stub_without_digest_is_refused_by_verity_require(boots: Boots) -> None:
    res = boots.scenarios.results
    assert res.get("stub-require-good") == "read", boots.scenarios.describe()
    assert res.get("stub-require-nodigest") == "EIO"
    assert res.get("stub-require-noverity") == "EIO"
    # verity=on (not what sealtree mounts) lets a stub without a digest through.
    assert res.get("stub-on-nodigest") == "read" and res.get("stub-on-noverity") == "EIO"
    assert "has no digest specified" in boots.scenarios.console
    assert not [k for k in res if k.endswith("-crashed")], res


def test_the_tree_is_mounted_from_the_signed_image(boots: Boots) -> None:
    """The lower layer is the pack's EROFS image, measured by the kernel; a missing one is
    built again at boot; one whose bytes changed (its fs-verity digest differs) is refused."""
    res = boots.scenarios.results
    lines = scenario.boot_lines(boots.scenarios.console)
    digest = _image_digest(boots.sysroot, "C").hex()
    assert any(f"image {digest[:16]} (" in line and "kernel-measured) mounted as the lower "
               "layer" in line for line in lines), lines
    c, b = boots.sysroot.deployments["C"], boots.sysroot.deployments["B"]
    assert res.get("image-missing-status") == "0", boots.scenarios.describe()
    assert res.get("image-missing-booted") == c and res.get("image-rebuilt") == "right"
    assert res.get("image-missing-blob") == boots_blob_sha(boots)
    assert any(f"image {digest[:16]} (" in line and "built now" in line for line in lines), lines
    assert res.get("image-changed-has-verity") == "True", boots.scenarios.describe()
    assert res.get("image-changed-status") == "0" and res.get("image-changed-booted") == b
    refused = scenario.refusals(boots.scenarios.console)
    assert [(r[0], r[1]) for r in refused[1:]] == [(c, "image")], refused
    assert refused[1][2].endswith(".image") and "image object changed: kernel fs-verity " \
        "digest is" in refused[1][3] and f"the pack signs {digest}" in refused[1][3], refused


def boots_blob_sha(boots: Boots) -> str:
    blob_c = boots.sysroot.object_path("C", scenario.BLOB)
    return hashlib.sha256(blob_c.read_bytes()).hexdigest()


def test_bytes_changed_on_the_sealed_disk_fail_the_read(boots: Boots) -> None:
    result = boots.sealed
    c = boots.sysroot.deployments["C"]
    assert scenario.refusals(result.console) == [], result.describe()
    assert scenario.booted(result.console) == [c], result.describe()
    lines = scenario.boot_lines(result.console)
    assert any(line.startswith("layout metacopy (verity=require)") for line in lines), lines
    res = result.results
    assert res.get("marker") == scenario.RELEASES[2].marker
    assert res.get("root") == "overlay ro" and res.get("root-writable") == "no"
    assert res.get("blob") == "unreadable", result.describe()


def test_boot_times(boots: Boots) -> None:
    """Not a check: the wall times of the two boots, for the report (``-s`` shows them)."""
    print(f"metacopy vm boots: scenarios {boots.scenarios.seconds:.1f} s, "
          f"sealed {boots.sealed.seconds:.1f} s")
