"""The sysroot partition: a device repository at ``/sealtree/repo``, deployed, written into an
ext4 ``-O verity`` filesystem (4 KiB blocks) with ``mke2fs -d`` so that the bytes are a
function of the content alone.

The repository is made the way a device makes its own (``Repository.init``, the signed pack
imported and checked against the keyring, the large objects it lacks copied in through a
transaction that checks each digest, then ``overlay.deploy.deploy`` in the hardlinks layout
with userspace digests: the build host's kernel is not asked for fs-verity, which mke2fs
would not copy anyway; the first boot seals the objects, ``seal = yes``).  What would differ
between two builds is fixed afterwards: the deployment's ``created`` time becomes the
commit's timestamp and its informational keyring path the system keyring's; every mtime and
atime in the tree becomes the image epoch.

mke2fs is given the UUID and directory hash seed (derived from the commit), the epoch as
``E2FSPROGS_FAKE_TIME``, no discard, and ``root_owner=0:0``; it walks the source directory
in name order.  It copies each inode's ctime from the source, which no system call can set,
so every used inode's ctime is then set to the epoch with ``debugfs -w``, and its atime too
(reading a file for the ESP, or mke2fs reading it, may have moved it).
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass

from overlay.deploy import deploy
from overlay.layout import SYSTEM_KEYRING
from overlay.metacopy import Layout
from overlay.objcheck import Policy
from overlay.state import Deployment, state_file
from pack.importer import MissingObject, import_pack
from pack.keys import Keyring
from store.ids import RawId
from store.repo import Repository

from .errors import ImageError
from .run import run

REPO_IN_SYSROOT = "sealtree/repo"  # the boot verifier's default ``repo = /sealtree/repo``
BLOCK = 4096
INODE_SIZE = 256
BYTES_PER_INODE = 16384  # mke2fs's default inode ratio for a "default" filesystem


@dataclass(frozen=True)
class DeviceRepo:
    root: str  # the sysroot source directory (holds sealtree/repo)
    repo: Repository
    deployment: Deployment
    objects_copied: int


def _copy_missing(vendor: Repository, repo: Repository, missing: list[MissingObject]) -> int:
    """Copy the large objects ``repo`` lacks from ``vendor`` through a transaction (each one's
    fs-verity digest is computed while it is copied and must equal its name)."""
    copied = 0
    with repo.writing() as tx:
        for item in missing:
            row = item.entry
            source = os.path.join(vendor.objects.root, item.object_path)
            try:
                fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise ImageError("the vendor repository lacks this large object of the pack",
                                 path=source) from None
            try:
                digest, _size = tx.add_file_stream(fd, row.entry.meta)
            finally:
                os.close(fd)
            if digest != row.entry.digest:
                raise ImageError(f"object content does not match its name (digest {digest.hex()})",
                                 path=source)
            copied += 1
        tx.publish()
    return copied


def make_device_repo(root: str, vendor: Repository, commit_id: RawId, pack_path: str,
                     keys_dir: str) -> DeviceRepo:
    """Create ``root/sealtree/repo``: the signed pack at ``pack_path`` (signatures beside it)
    imported against the keyring in ``keys_dir``, the large objects copied from ``vendor``, the
    commit deployed and made the default, not counting boots (an image's first deployment
    has nothing to fall back to).  Raises SignatureError, PackError, DeployError, ImageError."""
    repo = Repository.init(os.path.join(root, REPO_IN_SYSROOT))
    result = import_pack(repo, pack_path, Keyring.load(keys_dir))
    if result.commit_id != commit_id:
        raise ImageError(f"is the pack of commit {result.commit_id.hex()}, not of "
                         f"{commit_id.hex()}", path=pack_path)
    copied = _copy_missing(vendor, repo, result.missing)
    deployed = deploy(repo, commit_id.hex(), keys_dir, policy=Policy.USERSPACE, tries=None,
                      layout=Layout.HARDLINKS)
    commit = repo.objects.read_commit(commit_id)
    with state_file(repo).update() as state:
        # Information that would differ between builds: when (the commit's time instead) and
        # the keyring path it was checked with on the build host (the device's own instead).
        fixed = state.get(deployed.deployment.id).replace(created=commit.timestamp,
                                                          keys=SYSTEM_KEYRING)
        state.deployments = [fixed if d.id == fixed.id else d for d in state.deployments]
    return DeviceRepo(root, repo, fixed, copied)


def fix_times(root: str, epoch: int) -> int:
    """Set atime and mtime of everything under ``root`` (``root`` too) to ``epoch``, without
    following symlinks; the number of inodes touched."""
    count = 0
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            os.utime(os.path.join(directory, name), (epoch, epoch), follow_symlinks=False)
            count += 1
    os.utime(root, (epoch, epoch))
    return count + 1


def content_bytes(root: str) -> tuple[int, int]:
    """(bytes of data blocks, inodes) of the tree at ``root``: each file rounded up to a block,
    each directory and symlink one block, hard links counted once."""
    seen: set[int] = set()
    data = 0
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            st = os.lstat(os.path.join(directory, name))
            if st.st_ino in seen:
                continue
            seen.add(st.st_ino)
            data += max(BLOCK, -(-st.st_size // BLOCK) * BLOCK)
    return data, len(seen) + 1


def _env(epoch: int) -> dict[str, str]:
    return {"E2FSPROGS_FAKE_TIME": str(epoch), "SOURCE_DATE_EPOCH": str(epoch)}


def make_ext4(disk: str, offset: int, size: int, source: str, fs_uuid: uuid.UUID,
              hash_seed: uuid.UUID, epoch: int, label: str = "sealtree-sysroot") -> None:
    """Write an ext4 filesystem of ``size`` bytes holding ``source`` at ``offset`` of the file
    ``disk`` (nothing outside that range is written), then fix every used inode's ctime and
    atime."""
    if size % BLOCK or offset % BLOCK:
        raise ValueError("ext4 offset and size must be multiples of 4 KiB")
    extended = f"hash_seed={hash_seed},offset={offset},nodiscard,root_owner=0:0"
    run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", str(BLOCK), "-I", str(INODE_SIZE),
         "-O", "verity", "-L", label, "-U", str(fs_uuid), "-E", extended, "-d", source,
         disk, f"{size // 1024}k"], env=_env(epoch))
    device = f"{disk}?offset={offset}"
    used = used_inodes(device)
    commands = "".join(f"sif <{ino}> {field} {value}\n" for ino in used
                       for field, value in (("ctime", f"@{epoch}"), ("ctime_extra", "0"),
                                            ("atime", f"@{epoch}"), ("atime_extra", "0")))
    script = f"{disk}.debugfs"
    with open(script, "w", encoding="ascii") as handle:
        handle.write(commands)
    try:
        out = run(["debugfs", "-w", "-f", script, device], env=_env(epoch))
    finally:
        os.unlink(script)
    if "error" in out.lower():
        raise ImageError(f"debugfs could not set the inode times: {out.strip()[:200]}", path=disk)


_FREE = re.compile(r"^\s+Free inodes: (.*)$", re.M)


def used_inodes(device: str) -> list[int]:
    """The inodes in use (the root, 2, and 11 on: the reserved ones mke2fs does not fill are
    left alone), from ``dumpe2fs``'s per-group free ranges."""
    out = run(["dumpe2fs", device])
    count = int(re.search(r"^Inode count:\s+(\d+)", out, re.M).group(1))  # type: ignore[union-attr]
    free: set[int] = set()
    for ranges in _FREE.findall(out):
        for part in filter(None, (p.strip() for p in ranges.split(","))):
            first, _, last = part.partition("-")
            free.update(range(int(first), int(last or first) + 1))
    return [ino for ino in [2, *range(11, count + 1)] if ino not in free]
