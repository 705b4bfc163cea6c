"""``sealtree image build``: one signed commit into a flashable, reproducible raw disk image.

The disk (docs/FORMAT.md, "Disk images"): a GPT whose disk and partition GUIDs are derived
from the commit id; at 1 MiB the EFI system partition (FAT, systemd-boot, loader.conf, a
Boot Loader Specification entry per deployment plus a live entry, the deployment's kernel and
initramfs); after it the sysroot partition (ext4 ``-O verity``, 4 KiB blocks) holding the
device repository at ``/sealtree/repo`` with the commit deployed; 1 MiB at the end for the
backup GPT.  The output file is sparse: nothing is written where the filesystems hold
nothing.  Every timestamp is the commit's (clamped to 1980 for FAT), every seed is derived
from the commit id, every directory is written in name order: two builds of the same commit
with the same keys, pack and boot loader package give the same bytes.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

from pack.build import RELEASE_INLINE_MAX, build_pack
from pack.importer import kept_pack_path
from pack.keys import load_private_key
from pack.signature import sign_pack
from store.atomic import atomic_file, check_destination
from store.errors import RefError, UsageError
from store.ids import RawId, to_hex
from store.refs import check_ref_name
from store.remove import remove_tree
from store.repo import Repository

from . import bootloader, entries, esp, gpt, sysroot
from .errors import ImageError

MIB = 1 << 20
ALIGN = MIB  # partitions start and end on MiB boundaries
ESP_SPARE = 8 * MIB  # besides room for a second kernel and initramfs (the next release's)
ESP_MIN = esp.MIN_SIZE
SYSROOT_SPARE = 64 * MIB  # besides a quarter of the content: journal, Merkle trees, first writes
FAT_EPOCH_MIN = 315_532_800 + 86_400  # 1980-01-02: FAT cannot store earlier times

LOADER_EFI = "/EFI/systemd/systemd-bootx64.efi"
FALLBACK_EFI = "/EFI/BOOT/BOOTX64.EFI"  # the removable-media path: boots without NVRAM entries


@dataclass(frozen=True)
class BuildResult:
    path: str
    commit: str
    ref: str
    deployment: str
    size: int  # the disk's apparent size
    allocated: int  # bytes the sparse file occupies
    disk_guid: str
    esp: gpt.Partition
    sysroot: gpt.Partition
    filesystem_uuid: str
    content: int  # bytes of the sysroot's files (blocks), before the margin
    esp_files: int  # bytes of the ESP's files
    boot_loader: str  # the Debian package systemd-boot came from
    entries: list[str] = field(default_factory=list)
    objects_copied: int = 0


def align(n: int, to: int = ALIGN) -> int:
    return -(-n // to) * to


def minimum_sysroot(content: int) -> int:
    """The sysroot partition for ``content`` bytes of files: a quarter more, plus 64 MiB."""
    return align(content + content // 4 + SYSROOT_SPARE)


def esp_size(kernel_bytes: int, other_bytes: int) -> int:
    """The ESP for kernels and initramfs images of ``kernel_bytes`` and ``other_bytes`` of
    boot loader and entries: twice the kernels (the next release's go beside them), 8 MiB."""
    return max(ESP_MIN, align(2 * kernel_bytes + other_bytes + ESP_SPARE))


def _signed_pack(vendor: Repository, rev: str, commit_id: RawId, work: str, pack: str | None,
                 key: str | None) -> str:
    if pack is not None:
        return pack
    if key is not None:
        try:
            is_ref = vendor.refs.read(check_ref_name(rev)) is not None
        except RefError:
            is_ref = False
        if not is_ref:
            raise UsageError("is not a ref: a pack built here needs the ref it is for", path=rev)
        out = os.path.join(work, "release.pack")
        build_pack(vendor, commit_id, rev, out, inline_max=RELEASE_INLINE_MAX)  # the pack publish makes
        sign_pack(out, load_private_key(key))  # Ed25519 signatures are deterministic
        return out
    kept = kept_pack_path(vendor, commit_id)
    if os.path.exists(kept):
        return kept
    raise ImageError("the repository keeps no signed pack of this commit: give the signed pack, "
                     "or the key to sign one here", path=rev)


def _esp_files(directory: str, loader: bootloader.BootLoader, boot_entries: list[entries.BootEntry]
               ) -> dict[str, str]:
    """ESP path -> host file of the boot loader, loader.conf and the entries (written into
    ``directory``); the kernels are added by the caller."""
    os.mkdir(directory)
    files = {FALLBACK_EFI: str(loader.efi), LOADER_EFI: str(loader.efi)}
    texts = {"/loader/loader.conf": entries.loader_conf(boot_entries[0].name)}
    texts.update({f"/loader/entries/{e.name}.conf": e.text() for e in boot_entries})
    for esp_path, text in texts.items():
        path = os.path.join(directory, os.path.basename(esp_path))
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        files[esp_path] = path
    return files


def build_image(vendor: Repository, rev: str, output: str, keys_dir: str, *, pack: str | None = None,
                key: str | None = None, size: int | None = None, append: str = "",
                boot_loader: str = "systemd-boot") -> BuildResult:
    """Build the image of ``rev`` of ``vendor`` at ``output`` (replaced atomically).

    The signed pack is ``pack`` (signatures at ``pack.sig``), or built and signed here with
    the private key file ``key``, or the one ``vendor`` keeps for the commit; it is verified
    against the keyring ``keys_dir``.  ``size``: the whole disk's size, at least the minimum
    (the sysroot takes what is above it).  ``append``: more kernel command line for every
    entry.  Raises UsageError, ImageError, SignatureError, PackError, DeployError, NotInTree.
    """
    if boot_loader not in bootloader.BOOT_LOADERS:
        raise UsageError(f"unknown boot loader (known: {', '.join(bootloader.BOOT_LOADERS)})",
                         path=boot_loader)
    output = check_destination(output, "-o")
    commit_id = vendor.resolve(rev)
    commit = vendor.objects.read_commit(commit_id)
    kernel = entries.find_kernel(vendor.objects, commit.root_tree)  # before any work: a bootable tree?
    loader = bootloader.systemd_boot()
    work = tempfile.mkdtemp(prefix=".sealtree-image-", dir=os.path.dirname(os.path.abspath(output)))
    try:
        signed = _signed_pack(vendor, rev, commit_id, work, pack, key)
        root = os.path.join(work, "sysroot")
        os.mkdir(root, 0o755)
        device = sysroot.make_device_repo(root, vendor, commit_id, signed, keys_dir)
        seed = bytes(commit_id)
        ids = {name: gpt.derived_guid(name, seed) for name in
               ("disk", "esp-partition", "sysroot-partition", "sysroot-filesystem", "sysroot-hash-seed")}
        epoch = max(commit.timestamp, FAT_EPOCH_MIN)

        dep = device.deployment
        boot_entries = entries.entries_for([dep], dep.id, {dep.commit: kernel},
                                           str(ids["sysroot-partition"]), append)
        files = _esp_files(os.path.join(work, "esp"), loader, boot_entries)
        other = sum(align(os.path.getsize(path), 4096) for path in files.values())
        objects = device.repo.objects
        files[f"{entries.esp_dir(dep)}/linux"] = objects.file_path(kernel.linux.digest, kernel.linux.meta)
        files[f"{entries.esp_dir(dep)}/initrd"] = objects.file_path(kernel.initrd.digest,
                                                                   kernel.initrd.meta)
        kernel_bytes = kernel.linux.size + kernel.initrd.size
        esp_bytes = esp_size(align(kernel.linux.size, 4096) + align(kernel.initrd.size, 4096), other)

        # The sysroot.
        sysroot.fix_times(root, epoch)
        data, inodes = sysroot.content_bytes(root)
        content = data + inodes * sysroot.INODE_SIZE
        esp_start = ALIGN
        sys_start = esp_start + esp_bytes
        sys_bytes = minimum_sysroot(content)
        total = sys_start + sys_bytes + ALIGN
        if size is not None:
            if size < total:
                raise ImageError(f"the disk size asked for ({size} bytes) is below this image's "
                                 f"minimum of {total} bytes ({total // MIB} MiB)", path=output)
            total = size - size % ALIGN
            sys_bytes = total - ALIGN - sys_start
        esp_part = gpt.Partition(gpt.ESP_TYPE, ids["esp-partition"], esp_start // gpt.SECTOR,
                                 (esp_start + esp_bytes) // gpt.SECTOR - 1, "ESP")
        sys_part = gpt.Partition(gpt.LINUX_DATA_TYPE, ids["sysroot-partition"], sys_start // gpt.SECTOR,
                                 (sys_start + sys_bytes) // gpt.SECTOR - 1, "sealtree-sysroot")
        with atomic_file(output, 0o644) as handle:
            fd = handle.fileno()
            disk = os.readlink(f"/proc/self/fd/{fd}")
            os.ftruncate(fd, total)
            gpt.write_table(fd, total, ids["disk"], [esp_part, sys_part])
            esp.make_esp(disk, esp_start, esp_bytes, files,
                         gpt.derived_bytes("esp-volume-id", seed, 4), epoch,
                         os.path.join(work, "esp.img"))
            sysroot.make_ext4(disk, sys_start, sys_bytes, root, ids["sysroot-filesystem"],
                              ids["sysroot-hash-seed"], epoch)
        allocated = os.stat(output).st_blocks * 512
        return BuildResult(output, to_hex(commit_id), dep.ref, dep.id, total, allocated, str(ids["disk"]),
                           esp_part, sys_part, str(ids["sysroot-filesystem"]), content,
                           kernel_bytes + other, loader.package, [e.name for e in boot_entries],
                           device.objects_copied)
    finally:
        remove_tree(work)
