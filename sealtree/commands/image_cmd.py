"""image build: a flashable, reproducible raw disk image of one signed commit."""

from __future__ import annotations

import argparse
from typing import Any

from store.names import show

from ..output import human_size, print_json
from .common import add_parser, open_repo, size_bytes


def register(sub: Any) -> None:
    group = add_parser(
        sub, "image", "build flashable disk images",
        "Disk images that a user writes to a USB stick, a disk or a VM: one signed\n"
        "commit, booted through the verifier, live or installed.  `sealtree image\n"
        "COMMAND --help` describes each command.",
        "example:\n  sealtree --repo R image build os/main -o disk.raw --keys keys --key vendor.key")
    images = group.add_subparsers(dest="image_command", metavar="COMMAND", title="commands")
    images.required = True
    p = add_parser(
        images, "build", "build a raw GPT disk image of a commit",
        "Build DISK, a raw GPT disk image that boots REF's commit on UEFI firmware:\n"
        "\n"
        "  - an EFI system partition (FAT) at 1 MiB holding systemd-boot (Debian's\n"
        "    systemd-boot-efi package, fetched with apt-get download into\n"
        "    ~/.cache/sealtree-vm, never installed here) as /EFI/BOOT/BOOTX64.EFI,\n"
        "    loader/loader.conf, and Boot Loader Specification entries: the\n"
        "    installed entry sealtree-<deployment>.conf (the default; the verifier\n"
        "    picks the deployment, counting boot tries and falling back) and\n"
        "    sealtree-<deployment>-live.conf (sealtree.live=1: a tmpfs upper layer,\n"
        "    nothing kept); each with the kernel and initramfs of the deployment's\n"
        "    own /boot (vmlinuz-RELEASE, initrd.img-RELEASE) and\n"
        "    'root=PARTUUID=<sysroot> console=ttyS0' plus --append;\n"
        "  - the sysroot partition: ext4 with the verity feature and 4 KiB blocks\n"
        "    (mke2fs -d), holding the device repository at /sealtree/repo: the\n"
        "    signed pack imported and verified against --keys, its large objects,\n"
        "    the commit deployed (hardlinks layout) as the default deployment.\n"
        "\n"
        "The initramfs must hold the verifier, the keyring and the floor, with\n"
        "'seal = yes' in its boot.conf: objects written here carry no fs-verity,\n"
        "the first boot enables it after checking the signed pack.\n"
        "\n"
        "The signed pack is --pack, or built from REF and signed here with --key,\n"
        "or the one the repository keeps for the commit (after 'pack import').\n"
        "\n"
        "Reproducible: the disk and partition GUIDs, the filesystem UUID, hash\n"
        "seed and FAT volume id are derived from the commit id, every timestamp is\n"
        "the commit's, files are written in name order: the same commit, keys,\n"
        "pack and systemd-boot package give the same bytes.  DISK is sparse; its\n"
        "size is 1 MiB + ESP + sysroot + 1 MiB, the ESP twice the kernel and\n"
        "initramfs plus 8 MiB (at least 40 MiB, FAT32), the sysroot the content plus a\n"
        "quarter plus 64 MiB.  --size makes the disk that large, the sysroot\n"
        "taking the rest.  Needs root (owners in the sysroot), mke2fs, debugfs,\n"
        "dumpe2fs (e2fsprogs), mkfs.vfat (dosfstools), mtools, dpkg-deb, apt-get.\n"
        "Exit status 18 when the image cannot be built.",
        "examples:\n"
        "  sealtree --repo R image build os/main -o disk.raw --keys keys --key vendor.key\n"
        "  sealtree --repo R image build os/main -o disk.raw --keys keys --pack os-42.pack --size 8G\n"
        "  dd if=disk.raw of=/dev/sdX bs=4M conv=sparse,fsync status=progress\n"
        "  bmaptool create disk.raw > disk.bmap && bmaptool copy --bmap disk.bmap disk.raw /dev/sdX")
    p.add_argument("rev", metavar="REF")
    p.add_argument("-o", "--output", required=True, metavar="DISK", help="the image file to write")
    p.add_argument("--keys", required=True, metavar="DIR",
                   help="the trusted keyring the pack is verified against (the device's)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--pack", metavar="PACK", help="the signed pack of REF's commit (PACK.sig beside it)")
    source.add_argument("--key", metavar="KEYFILE",
                        help="build REF's pack here and sign it with this private key")
    p.add_argument("--size", type=size_bytes, metavar="SIZE",
                   help="the disk's size (K, M, G, T suffixes), at least the minimum; the sysroot "
                        "gets the space above it")
    p.add_argument("--boot-loader", choices=("systemd-boot",), default="systemd-boot",
                   help="the EFI boot loader (default and only one: systemd-boot)")
    p.add_argument("--append", default="", metavar="ARGS",
                   help="more kernel command line for every entry (e.g. 'quiet panic=-1')")
    p.add_argument("--json", action="store_true", help="print what was built as JSON")
    p.set_defaults(func=cmd_build)


def cmd_build(args: argparse.Namespace) -> None:
    from image.build import build_image
    result = build_image(open_repo(args), args.rev, args.output, args.keys, pack=args.pack,
                         key=args.key, size=args.size, append=args.append,
                         boot_loader=args.boot_loader)
    partitions = {name: {"partuuid": str(part.guid), "offset": part.offset, "size": part.size,
                         "name": part.name}
                  for name, part in (("esp", result.esp), ("sysroot", result.sysroot))}
    if args.json:
        print_json({"path": result.path, "commit": result.commit, "ref": result.ref,
                    "deployment": result.deployment, "size": result.size,
                    "allocated": result.allocated, "disk_guid": result.disk_guid,
                    "partitions": partitions, "filesystem_uuid": result.filesystem_uuid,
                    "sysroot_content": result.content, "esp_files": result.esp_files,
                    "boot_loader": result.boot_loader, "entries": result.entries,
                    "objects_copied": result.objects_copied})
        return
    print(f"wrote {show(result.path)}: {human_size(result.size)} "
          f"({human_size(result.allocated)} allocated, sparse)")
    print(f"  disk GUID {result.disk_guid}")
    print(f"  ESP      partuuid {result.esp.guid}  {human_size(result.esp.size)}  ({result.boot_loader})")
    print(f"  sysroot  partuuid {result.sysroot.guid}  {human_size(result.sysroot.size)}  "
          f"(content {human_size(result.content)})")
    for name in result.entries:
        print(f"  entry {name}")
    print(f"deployed {result.deployment}")
