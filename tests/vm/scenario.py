"""Host-side builders for the boot tests: a vendor's releases, a device's disk, tampering.

The vendor commits three releases of a tiny root tree (static busybox as a
large object, a marker file, ``/sbin/init``), builds and signs a pack of each
with the sealtree CLI, and a device imports and deploys them in order: A
(version 1), B (2), C (3).  C is the default with two boot tries; B is the
previous deployment (marked good); A is still deployed but below the
freshness floor baked into the initramfs.  The sysroot directory becomes an
ext4 ``-O verity`` disk image with ``mke2fs -d`` (which keeps the farm's
hardlinks, owners, modes and xattrs).

Each tampering function changes one thing, as an attacker with the disk
would: a copy of the sysroot before the image is made, or the image itself.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from overlay import boot_floor
from store.repo import Repository
from store.walk import require
from tests.vm import guest

ROOT = Path(__file__).resolve().parents[2]
INTEGRATION = ROOT / "integration" / "initramfs-tools"
REF = "os/main"
REPO_IN_SYSROOT = "/sealtree/repo"
GUEST_PYTHON = "/usr/lib/sealtree/python"  # where the hook puts the verifier's modules
BLOB = "usr/share/sealtree/blob"
BLOB_SIZE = 96 << 10
TRIES = 2  # boot tries of the default deployment

#: The deployed tree's /sbin/init: it proves the marker comes from the deployed tree
#: (only the deployed busybox is left after switch_root) and powers off.
DEPLOYED_INIT = """#!/bin/sh
B=/bin/busybox
echo "SEALTREE-RESULT marker=$($B cat /etc/sealtree-marker)"
ROOT=$($B awk '$2 == "/" { print $3 " " $4 }' /proc/mounts | $B tail -n 1)
echo "SEALTREE-RESULT root=$(echo "$ROOT" | $B cut -d, -f1)"
if $B touch /sealtree-probe 2>/dev/null; then echo "SEALTREE-RESULT root-writable=yes";
else echo "SEALTREE-RESULT root-writable=no"; fi
if $B cat /usr/share/sealtree/blob >/dev/null 2>&1; then echo "SEALTREE-RESULT blob=readable";
else echo "SEALTREE-RESULT blob=unreadable"; fi
echo "SEALTREE-RESULT booted-file=$($B cat /run/sealtree/booted 2>/dev/null)"
echo "SEALTREE-RESULT sysroot=$($B ls /sysroot/sealtree 2>/dev/null)"
$B poweroff -f
"""


@dataclass(frozen=True)
class Release:
    name: str
    version: str
    timestamp: int

    @property
    def marker(self) -> str:
        return f"release-{self.name}-version-{self.version}"


RELEASES = (Release("A", "1", 1_700_000_000), Release("B", "2", 1_700_086_400),
            Release("C", "3", 1_700_172_800))


@dataclass(frozen=True)
class Sysroot:
    """A device's sysroot directory and what the host knows about it."""

    root: Path  # becomes the disk image; holds sealtree/repo
    keyring: Path  # the vendor's trusted keyring (goes into the initramfs)
    floor: Path  # the freshness floor the hook would bake in
    vendor_key: Path
    attacker_key: Path
    commits: dict[str, str]  # release name -> commit id
    deployments: dict[str, str]  # release name -> deployment id

    @property
    def repo(self) -> Path:
        return self.root / REPO_IN_SYSROOT.lstrip("/")

    def pack(self, release: str) -> Path:
        return self.repo / "packs" / f"{self.commits[release]}.pack"

    def object_path(self, release: str, tree_path: str) -> Path:
        """The object file (inside this sysroot) of a large file of ``release``'s tree."""
        repo = Repository.open(str(self.repo))
        commit = repo.objects.read_commit(repo.resolve(self.commits[release]))
        entry = require(repo.objects, commit.root_tree, tree_path.encode())
        return Path(repo.objects.file_path(entry.digest, entry.meta))

    def copy(self, dest: Path) -> Sysroot:
        """A copy (``cp -a``: hardlinks, owners, modes and xattrs kept) to tamper with."""
        guest.run(["cp", "-a", self.root, dest])
        return Sysroot(dest, self.keyring, self.floor, self.vendor_key, self.attacker_key,
                       self.commits, self.deployments)


def sealtree(*args: str) -> str:
    """Run the sealtree CLI in this process (it is what a vendor and a device run); its stdout."""
    from sealtree.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(args))
    if status != 0:
        raise AssertionError(f"sealtree {' '.join(args)} exited {status}:\n{out.getvalue()}{err.getvalue()}")
    return out.getvalue()


def make_tree(dest: Path, release: Release) -> Path:
    """The root tree of ``release``: busybox, sh, /sbin/init, a marker, a blob (large, owned
    by 1000:1000, mode 0640, with an xattr) and the directories a handover needs."""
    for d in ("bin", "sbin", "etc", "usr/share/sealtree", "dev", "proc", "sys", "run", "tmp", "sysroot"):
        (dest / d).mkdir(parents=True, exist_ok=True)
        (dest / d).chmod(0o755)
    (dest / "tmp").chmod(0o1777)
    shutil.copyfile(guest.STATIC_BUSYBOX, dest / "bin" / "busybox")
    (dest / "bin" / "busybox").chmod(0o755)
    os.symlink("busybox", dest / "bin" / "sh")
    (dest / "sbin" / "init").write_text(DEPLOYED_INIT)
    (dest / "sbin" / "init").chmod(0o755)
    (dest / "etc" / "sealtree-marker").write_text(release.marker + "\n")
    (dest / "etc" / "os-release").write_text(f'NAME="sealtree test"\nVERSION_ID="{release.version}"\n')
    os.setxattr(dest / "etc" / "os-release", "trusted.sealtree", release.name.encode())
    blob = dest / BLOB
    blob.write_bytes(random.Random(release.name).randbytes(BLOB_SIZE))
    os.chown(blob, 1000, 1000)
    blob.chmod(0o640)
    os.setxattr(blob, "trusted.sealtree", b"blob-" + release.name.encode())
    return dest


def build_sysroot(work: Path) -> Sysroot:
    """The vendor's three signed releases, imported and deployed by a device (see module doc)."""
    work.mkdir(parents=True, exist_ok=True)
    root = work / "sysroot"
    repo = root / REPO_IN_SYSROOT.lstrip("/")
    keyring = work / "keyring"
    keyring.mkdir()
    vendor_key = work / "vendor.key"
    attacker_key = work / "attacker.key"
    sealtree("keygen", str(vendor_key))
    sealtree("keygen", str(attacker_key))
    shutil.copy(str(vendor_key) + ".pub", keyring / "vendor.pub")
    repo.parent.mkdir(parents=True)
    sealtree("--repo", str(repo), "init")
    vendor_repo = work / "vendor-repo"
    sealtree("--repo", str(vendor_repo), "init")
    commits: dict[str, str] = {}
    deployments: dict[str, str] = {}
    for release in RELEASES:
        tree = make_tree(work / f"tree-{release.name}", release)
        out = sealtree("--repo", str(vendor_repo), "commit", "-b", REF, "-s", f"release {release.name}",
                       "--version", release.version, "--timestamp", str(release.timestamp),
                       "--json", str(tree))
        commits[release.name] = json.loads(out)["commit"]
        pack = work / f"{release.name}.pack"
        sealtree("--repo", str(vendor_repo), "pack", "build", REF, "-o", str(pack))
        sealtree("pack", "sign", str(pack), "--key", str(vendor_key))
        # The device: import the signed pack, copy the large objects it lacks (a pull),
        # deploy (the host has no fs-verity: digests in userspace; the guest seals them).
        sealtree("--repo", str(repo), "pack", "import", str(pack), "--keys", str(keyring))
        _copy_objects(vendor_repo, repo)
        tries = ["--tries", str(TRIES)] if release is RELEASES[-1] else ["--no-count"]
        out = sealtree("--repo", str(repo), "deploy", REF, "--keys", str(keyring),
                       "--verify", "userspace", "--json", *tries)
        deployments[release.name] = json.loads(out)["id"]
    floor = work / "freshness.json"
    boot_floor.write_floor(str(repo), str(floor))
    return Sysroot(root, keyring, floor, vendor_key, attacker_key, commits, deployments)


def _copy_objects(src_repo: Path, dst_repo: Path) -> None:
    """Copy the file objects ``dst_repo`` lacks, with their inode metadata (a device's pull)."""
    src = src_repo / "objects"
    for path in src.rglob("*.file"):
        dest = dst_repo / "objects" / path.relative_to(src)
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            guest.run(["cp", "-a", path, dest])


def make_image(sysroot: Sysroot, image: Path, size_mb: int = 64) -> Path:
    return guest.make_ext4_image(image, sysroot.root, size_mb)


# -- tampering ---------------------------------------------------------------------------------

def flip_pack_byte(sysroot: Sysroot, release: str, offset: int = 200) -> None:
    """Change one byte of the kept pack (the signature file is left as it is)."""
    pack = sysroot.pack(release)
    pack.chmod(0o644)
    data = bytearray(pack.read_bytes())
    data[offset] ^= 0x01
    pack.write_bytes(bytes(data))
    pack.chmod(0o444)


def resign_with(sysroot: Sysroot, release: str, key: Path) -> None:
    """Replace the kept pack's signatures with one by ``key`` only."""
    sig = Path(str(sysroot.pack(release)) + ".sig")
    sig.unlink()
    sealtree("pack", "sign", str(sysroot.pack(release)), "--key", str(key))


def set_default(sysroot: Sysroot, release: str) -> None:
    """Edit the deployment state so that ``release``'s deployment is the default."""
    path = sysroot.repo / "deploy" / "state.json"
    doc = json.loads(path.read_text())
    doc["default"] = sysroot.deployments[release]
    path.write_text(json.dumps(doc, indent=1) + "\n")


def corrupt_in_image(image: Path, path_in_image: str, offset: int = 5000) -> None:
    """Change one byte of a file's data directly in the ext4 image (found with debugfs)."""
    block_size = 4096
    out = guest.run(["debugfs", "-R", f"bmap {path_in_image} {offset // block_size}", image])
    physical = int(out.split()[-1])
    if physical <= 0:
        raise AssertionError(f"debugfs found no block for {path_in_image}: {out!r}")
    with image.open("r+b") as handle:
        handle.seek(physical * block_size + offset % block_size)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))


def image_file(image: Path, path_in_image: str) -> str:
    """A file's text as the ext4 image holds it (debugfs cat)."""
    return guest.run(["debugfs", "-R", f"cat {path_in_image}", image])


def in_image(sysroot: Sysroot, host_path: Path) -> str:
    return "/" + str(host_path.relative_to(sysroot.root))


# -- the initramfs ----------------------------------------------------------------------------

BOOT_CONF = f"""# sealtree-boot configuration of the test initramfs
repo = {REPO_IN_SYSROOT}
keys = /etc/sealtree/keys
target = /newroot
verify = kernel
freshness = /etc/sealtree/freshness.json
"""

#: Stand-ins for initramfs-tools' /scripts/functions, for the local-bottom script.
FUNCTIONS = """# the parts of initramfs-tools' /scripts/functions the sealtree script uses
log_warning_msg() { echo "W: $*"; }
log_failure_msg() { echo "E: $*"; }
panic() {
    echo "PANIC: $*"
    echo "SEALTREE-RESULT boot=refused"
    poweroff -f
    sleep 60
}
"""

_WAIT_VDA = "i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done\n"
_PROVISION = (f"PYTHONPATH={GUEST_PYTHON} python3 -s -B -m overlay.provision --digests "
              "{repo} || echo 'SEALTREE-RESULT provision=failed'\n")
_HANDOVER = """for d in dev proc sys run; do mount -o move /$d {root}/$d; done
exec switch_root {root} /sbin/init
"""

#: /init after the harness preamble: initramfs-tools' order of things (root= mounted
#: read-only at /root, then local-bottom scripts, then the handover), preceded by
#: provisioning (what a device does on pull).
INIT_INITRAMFS_TOOLS = (
    "mkdir -p /root /run && mount -t tmpfs -o mode=0755 tmpfs /run\n"
    "export rootmnt=/root\n" + _WAIT_VDA
    + "mount -t ext4 /dev/vda /root || echo 'SEALTREE-RESULT mount-failed=root'\n"
    + _PROVISION.format(repo="/root" + REPO_IN_SYSROOT)
    + "mount -o remount,ro /root\n"
    + "/scripts/local-bottom/sealtree || { echo 'SEALTREE-RESULT boot=refused'; poweroff -f; }\n"
    + _HANDOVER.format(root="/root")
)

#: /init after the harness preamble: provisioning, then sealtree-boot on its own
#: (it mounts sealtree.root= itself), then the handover.
INIT_STANDALONE = (
    "mkdir -p /run /newroot && mount -t tmpfs -o mode=0755 tmpfs /run\n" + _WAIT_VDA
    + "mount -t ext4 /dev/vda /sysroot || echo 'SEALTREE-RESULT mount-failed=sysroot'\n"
    + _PROVISION.format(repo="/sysroot" + REPO_IN_SYSROOT)
    + "umount /sysroot\n"
    + "sealtree-boot; status=$?\n"
    + "if [ $status -ne 0 ]; then echo \"SEALTREE-RESULT boot=refused status=$status\"; poweroff -f; fi\n"
    + "mount -o move /sysroot /newroot/sysroot\n"
    + _HANDOVER.format(root="/newroot")
)

MODULES = (*guest.DISK_MODULES, *guest.OVERLAY_MODULES)


def initramfs_trees(work: Path, sysroot: Sysroot) -> dict[str, Path]:
    """Guest path -> host path of what the hook puts in an initramfs (besides python3, which
    the harness's base has from Debian's packages): the modules, the wrapper, the config, the
    keyring, the freshness floor; plus the local-bottom script and its /scripts/functions."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "boot.conf").write_text(BOOT_CONF)
    (work / "functions").write_text(FUNCTIONS)
    return {
        GUEST_PYTHON: guest.python_sources(ROOT, ["store", "pack", "overlay"], work / "python"),
        "/usr/bin/sealtree-boot": INTEGRATION / "sealtree-boot",
        "/etc/sealtree/boot.conf": work / "boot.conf",
        "/etc/sealtree/keys": sysroot.keyring,
        "/etc/sealtree/freshness.json": sysroot.floor,
        "/scripts/functions": work / "functions",
        "/scripts/local-bottom/sealtree": INTEGRATION / "scripts" / "local-bottom" / "sealtree",
    }


def bytecode_segment(work: Path, python_dir: Path) -> Path | None:
    """A cpio.gz segment holding ``GUEST_PYTHON``'s modules precompiled, or None when this
    host's python is not 3.11 like the guest's (the guest then compiles them at each boot)."""
    if sys.version_info[:2] != (3, 11):
        return None
    root = work / "bytecode-root"
    dest = root / GUEST_PYTHON.lstrip("/")
    shutil.copytree(python_dir, dest)
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-s", str(root), "-p", "/",
                    "--invalidation-mode", "unchecked-hash", str(dest)], check=True)
    return guest.write_cpio_gz(root, work / "bytecode.cpio.gz", level=1)


def build_initrd(work: Path, sysroot: Sysroot, init_body: str, *,
                 guest_kernel: guest.Kernel | None = None,
                 extra_trees: dict[str, Path] | None = None) -> Path:
    """An initramfs running the harness preamble, then ``init_body``; with the modules of
    ``guest_kernel`` (default bookworm's 6.1) and ``extra_trees`` besides the hook's."""
    trees = initramfs_trees(work / "trees", sysroot)
    init = guest.init_preamble(mount_sysroot=False) + init_body
    initrd = guest.build_initramfs(work / "initrd.gz", init_script=init,
                                   extra_trees={**trees, **(extra_trees or {})},
                                   modules=MODULES, guest_kernel=guest_kernel)
    segment = bytecode_segment(work, trees[GUEST_PYTHON])
    if segment is not None:
        with initrd.open("ab") as out, segment.open("rb") as src:
            shutil.copyfileobj(src, out)
    return initrd


# -- reading the console -------------------------------------------------------------------------

BOOT_LINE = re.compile(r"sealtree-boot: (.*)")
REFUSED = re.compile(r"sealtree-boot: REFUSED (\S+): (.+?) failed at (\S+): (.*)")
BOOTING = re.compile(r"sealtree-boot: booting (\S+) ")
DIGEST = re.compile(r"provision: digest sha256:([0-9a-f]{64}) (\S+)")


def boot_lines(console: str) -> list[str]:
    return [m.group(1).strip() for m in BOOT_LINE.finditer(console)]


def refusals(console: str) -> list[tuple[str, str, str, str]]:
    """(deployment id, stage, where, detail) of every REFUSED line."""
    return [(m.group(1), m.group(2), m.group(3), m.group(4).strip()) for m in REFUSED.finditer(console)]


def booted(console: str) -> list[str]:
    return [m.group(1) for m in BOOTING.finditer(console)]


def kernel_digests(console: str) -> dict[str, str]:
    """Object path (guest) -> kernel-measured digest, from the provisioning lines."""
    return {m.group(2): m.group(1) for m in DIGEST.finditer(console)}
