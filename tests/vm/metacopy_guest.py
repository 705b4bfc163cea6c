"""Runs inside the 6.12 guest (Debian's python3.11): the metacopy layout's kernel checks.

Several scenarios in one boot, in order, on the sealed disk /dev/vda (fs-verity enabled on
every object by provisioning before this runs); each prints ``SEALTREE-RESULT key=value``:

0. ``live``: the configuration as the boot reads it, with this boot's kernel command line
   (``sealtree.live=1``) applied: the verifier mounts the default in live mode, metacopy
   layout, ``verity=require``; a file written into the tree reads back, a large file reads
   right; then the next boot's verifier run (the tree unmounted, the verifier run again
   with the same configuration, as the next boot would): the file is gone, on the tree and
   on the disk;
1. ``good``: the boot verifier (layout metacopy, policy kernel) mounts the default at /newroot;
   the overlay's options, a large file's content, the marker;
2. ``swap``: at runtime, with the tree mounted, the large file's object is replaced by another
   verity-enabled file of the same size: reading the path fails (EIO) once the overlay's
   cached inode is dropped (``drop_caches``; until then the inode verified at its first open
   is served, so the swapped bytes never are);
3. ``noverity``: the object replaced by a plain copy of its right bytes, without fs-verity:
   the verifier refuses that deployment (the kernel cannot measure it) and boots the previous;
4. ``stub``: stubs made by hand, mounted with ``verity=require``: a stub with the right digest
   reads; one whose digest xattr is empty (removed), or whose object has no fs-verity, fails
   (EIO) at open;
5. ``image``: the default's large object restored; its EROFS image object deleted: the
   verifier builds it again (fs-verity enabled, measured right) and boots the default from
   it; then the image replaced by a verity-enabled copy with one byte changed: the
   kernel-measured digest differs from the signed one, the verifier refuses the default
   (stage ``image``) and boots the previous.

The host passes paths and digests in ``/etc/sealtree/metacopy-test.json``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys

from overlay import boot, boot_config, mounts
from overlay.metacopy import METACOPY_XATTR, REDIRECT_XATTR, Layout, metacopy_value
from overlay.objcheck import Policy
from overlay.writable import unmount_state
from store import kverity, xattrs

SPEC_FILE = "/etc/sealtree/metacopy-test.json"
TARGET = "/newroot"


def result(key: str, value: object) -> None:
    print(f"SEALTREE-RESULT {key}={value}", flush=True)


def say(line: str) -> None:
    print("sealtree-boot: " + line, flush=True)


def sha256_or_errno(path: str) -> str:
    """The file's SHA-256, or the errno name reading it failed with (EIO, ...)."""
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError as err:
        return errno.errorcode.get(err.errno or 0, str(err.errno))


def unmount_tree() -> None:
    """Unmount the booted tree: the writable state mounted over it (its /etc, /var, /tmp;
    none in live mode), then the overlay."""
    unmount_state(TARGET)
    mounts.umount(TARGET)


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as handle:
        handle.write("3\n")


def config() -> boot_config.BootConfig:
    return boot_config.BootConfig(root="/dev/vda", keys="/etc/sealtree/keys",
                                  freshness="/etc/sealtree/freshness.json", target=TARGET,
                                  verify=Policy.KERNEL, count=False, layout=Layout.METACOPY)


def live(spec: dict[str, str]) -> None:
    with open("/proc/cmdline") as handle:
        cmdline = handle.read()
    live_config = boot_config.apply_cmdline(config(), cmdline, say)
    result("live-config", live_config.live)
    result("live-status", boot.run_boot(live_config, say))
    info = mounts.is_mount_point(TARGET)
    result("live-options", info.raw_super_options.decode(errors="replace") if info else "none")
    written = os.path.join(TARGET, "etc", "live-written")
    token = "written in a live boot\n"
    try:
        with open(written, "w") as handle:
            handle.write(token)
        with open(written) as handle:
            result("live-write", "read back" if handle.read() == token else "different")
    except OSError as err:
        result("live-write", errno.errorcode.get(err.errno or 0, str(err.errno)))
    blob = sha256_or_errno(os.path.join(TARGET, spec["blob"]))
    result("live-blob", "right" if blob == spec["blob_c_sha256"] else blob)
    unmount_tree()
    # The next boot: the verifier again, with the same configuration.
    result("live-again-status", boot.run_boot(live_config, say))
    result("live-again-written", os.path.lexists(written))
    on_disk = [os.path.join(d, n) for d, _, names in os.walk("/sysroot") for n in names
               if n == "live-written"]
    result("live-on-disk", on_disk or "none")
    blob = sha256_or_errno(os.path.join(TARGET, spec["blob"]))
    result("live-again-blob", "right" if blob == spec["blob_c_sha256"] else blob)
    unmount_tree()


def good(spec: dict[str, str]) -> None:
    result("good-status", boot.run_boot(config(), say))
    info = mounts.is_mount_point(TARGET)
    result("good-options", info.raw_super_options.decode(errors="replace") if info else "none")
    blob = sha256_or_errno(os.path.join(TARGET, spec["blob"]))
    result("good-blob", "right" if blob == spec["blob_c_sha256"] else blob)
    with open(os.path.join(TARGET, "etc/sealtree-marker")) as handle:
        result("good-marker", handle.read().strip())


def swap(spec: dict[str, str]) -> None:
    obj = spec["blob_c_object"]
    os.link(obj, "/sysroot/kept-blob-c")  # the right object, for the next scenario
    size = os.path.getsize(obj)
    evil = obj + ".evil"
    with open(evil, "wb") as handle:
        handle.write(b"E" * size)
    kverity.enable(evil)
    os.rename(evil, obj)
    result("swap-has-verity", kverity.measure(obj) is not None)
    drop_caches()
    path = os.path.join(TARGET, spec["blob"])
    result("swap-read", sha256_or_errno(path))
    marker = sha256_or_errno(os.path.join(TARGET, "etc/sealtree-marker"))
    result("swap-other-file", "readable" if len(marker) == 64 else marker)
    unmount_tree()


def noverity(spec: dict[str, str]) -> None:
    obj = spec["blob_c_object"]
    plain = obj + ".plain"
    shutil.copyfile("/sysroot/kept-blob-c", plain)
    os.chmod(plain, 0o640)
    os.rename(plain, obj)
    result("noverity-measure", kverity.measure(obj))
    result("noverity-status", boot.run_boot(config(), say))
    with open("/run/sealtree/booted") as handle:
        result("noverity-booted", handle.read().strip())
    unmount_tree()


def stubs(spec: dict[str, str]) -> None:
    objects = spec["objects"]
    layer, view = "/run/stubs", "/run/view"
    os.makedirs(layer)
    os.makedirs(view)
    mounts.mount("tmpfs", layer, "tmpfs", 0, "mode=0755")
    cases = {
        "good": (spec["blob_b_object"], metacopy_value(bytes.fromhex(spec["blob_b_digest"]))),
        "nodigest": (spec["blob_b_object"], b""),  # the digest removed: plain metacopy
        "noverity": (spec["blob_c_object"], metacopy_value(bytes.fromhex(spec["blob_c_digest"]))),
    }
    for name, (obj, value) in cases.items():
        stub = os.path.join(layer, name)
        with open(stub, "wb") as handle:
            handle.truncate(os.path.getsize(obj))
        redirect = obj.removeprefix(objects).encode()
        xattrs.write(stub, ((REDIRECT_XATTR, redirect), (METACOPY_XATTR, value)))
    for verity in ("require", "on"):
        spec_ = mounts.OverlaySpec([layer], data=[objects], verity=verity)
        mounts.mount_overlay(view, spec_, "auto")
        for name in cases:
            got = sha256_or_errno(os.path.join(view, name))
            result(f"stub-{verity}-{name}", got if len(got) != 64 else "read")
        mounts.umount(view)


def image(spec: dict[str, str]) -> None:
    os.rename("/sysroot/kept-blob-c", spec["blob_c_object"])  # the right object again
    path = spec["image_c"]
    os.unlink(path)
    result("image-missing-status", boot.run_boot(config(), say))
    with open("/run/sealtree/booted") as handle:
        result("image-missing-booted", handle.read().strip())
    measured = kverity.measure(path)
    result("image-rebuilt", "right" if measured == bytes.fromhex(spec["image_c_digest"])
           else measured)
    result("image-missing-blob", sha256_or_errno(os.path.join(TARGET, spec["blob"])))
    unmount_tree()
    with open(path, "rb") as handle:
        data = bytearray(handle.read())
    data[len(data) // 2] ^= 0x01
    evil = path + ".evil"
    with open(evil, "wb") as handle:
        handle.write(data)
    kverity.enable(evil)
    os.rename(evil, path)
    result("image-changed-has-verity", kverity.measure(path) is not None)
    result("image-changed-status", boot.run_boot(config(), say))
    with open("/run/sealtree/booted") as handle:
        result("image-changed-booted", handle.read().strip())
    unmount_tree()


def main() -> int:
    with open(SPEC_FILE) as handle:
        spec = json.load(handle)
    for scenario in (live, good, swap, noverity, stubs, image):
        try:
            scenario(spec)
        except Exception as err:  # noqa: BLE001 - a test guest: report and go on
            result(f"{scenario.__name__}-crashed", f"{type(err).__name__}: {err}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
