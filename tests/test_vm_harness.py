"""The qemu guest harness boots a real 6.1 kernel whose fs-verity agrees with the host's."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.vm import guest
from tests.vm.fixtures import host_fsverity, vm_kernel

__all__ = ["host_fsverity", "vm_kernel"]  # fixtures used by name below

pytestmark = pytest.mark.vm

IMPORT_CHECK = r"""
import sys, cryptography, zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
key = Ed25519PrivateKey.generate()
sig = key.sign(b"sealtree")
key.public_key().verify(sig, b"sealtree")
data = b"sealtree " * 1000
assert zstandard.ZstdDecompressor().decompress(zstandard.ZstdCompressor().compress(data)) == data
print("SEALTREE-RESULT python=" + sys.version.split()[0])
print("SEALTREE-RESULT cryptography=" + cryptography.__version__)
print("SEALTREE-RESULT zstandard=" + zstandard.__version__)
print("SEALTREE-RESULT imports=ok")
"""

# Runs in the guest: enable fs-verity on every file of a directory, then measure it.
VERITY_SCRIPT = r"""
import ctypes, errno, fcntl, os, struct, sys

FS_IOC_ENABLE_VERITY = 0x40806685
FS_IOC_MEASURE_VERITY = 0xC0046686
FS_IOC_GETFLAGS = 0x80086601
FS_VERITY_FL = 0x00100000

def enable(fd):
    arg = ctypes.create_string_buffer(128)
    struct.pack_into("=IIIIQIIQ", arg, 0, 1, 1, 4096, 0, 0, 0, 0, 0)
    fcntl.ioctl(fd, FS_IOC_ENABLE_VERITY, arg)

def measure(fd):
    buf = bytearray(struct.pack("=HH", 0, 64) + bytes(64))
    fcntl.ioctl(fd, FS_IOC_MEASURE_VERITY, buf)
    alg, size = struct.unpack_from("=HH", buf)
    assert alg == 1, alg
    return "sha256:" + bytes(buf[4:4 + size]).hex()

def flags(fd):
    buf = bytearray(4)
    fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf)
    return struct.unpack("=i", buf)[0]

def errno_of(call):
    try:
        call()
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return "none"

root = sys.argv[1]
for name in sorted(os.listdir(root)):
    path = os.path.join(root, name)
    fd = os.open(path, os.O_RDONLY)
    try:
        print(f"SEALTREE-RESULT before.{name}=" + errno_of(lambda: measure(fd)))
        enable(fd)
        print(f"SEALTREE-RESULT digest.{name}=" + measure(fd))
        print(f"SEALTREE-RESULT flag.{name}=" + str(bool(flags(fd) & FS_VERITY_FL)))
        print(f"SEALTREE-RESULT again.{name}=" + errno_of(lambda: enable(fd)))
    finally:
        os.close(fd)
    print(f"SEALTREE-RESULT write.{name}=" + errno_of(lambda: os.close(os.open(path, os.O_WRONLY))))
print("SEALTREE-RESULT verity=done")
"""

FILES: dict[str, int] = {"empty": 0, "one": 1, "block": 4096, "block-plus-one": 4097,
                         "mib": (1 << 20) + 123}


def _run_guest(vm_kernel: Path, tmp_path: Path, init_body: str, *,
               extra_trees: dict[str, Path], modules: Sequence[str] = (),
               mount_sysroot: bool = False, disks: Sequence[Path] = ()) -> guest.BootResult:
    """Build an initramfs running ``init_body`` after the preamble, boot it, check it powered off."""
    init = guest.init_preamble(mount_sysroot=mount_sysroot) + init_body
    initrd = guest.build_initramfs(tmp_path / "initrd.gz", init_script=init,
                                   extra_trees=extra_trees, modules=modules)
    result = guest.boot(vm_kernel, initrd, disks=disks, timeout=300)
    assert result.powered_off, result.describe()
    return result


def test_guest_python_imports_cryptography_and_zstandard(vm_kernel: Path, tmp_path: Path) -> None:
    script = tmp_path / "check.py"
    script.write_text(IMPORT_CHECK)
    result = _run_guest(vm_kernel, tmp_path, "python3 /opt/check.py\npoweroff -f\n",
                        extra_trees={"/opt/check.py": script})
    res = result.results
    assert res.get("imports") == "ok", result.describe()
    assert res["python"].startswith("3.11.")
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", res["cryptography"])
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", res["zstandard"])


def _host_digest(tool: str, path: Path) -> str:
    out = guest.run([tool, "digest", "--hash-alg=sha256", "--block-size=4096", path])
    return out.split()[0]


def test_guest_fsverity_digests_match_host_tool(vm_kernel: Path, host_fsverity: str,
                                                tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "files").mkdir(parents=True)
    for name, size in FILES.items():
        (src / "files" / name).write_bytes(os.urandom(size))
    expected = {name: _host_digest(host_fsverity, src / "files" / name) for name in FILES}
    disk = guest.make_ext4_image(tmp_path / "disk.img", src, 64)
    script = tmp_path / "verity.py"
    script.write_text(VERITY_SCRIPT)
    body = "python3 /opt/verity.py /sysroot/files\numount /sysroot\npoweroff -f\n"
    result = _run_guest(vm_kernel, tmp_path, body, mount_sysroot=True, modules=guest.DISK_MODULES,
                        extra_trees={"/opt/verity.py": script}, disks=[disk])
    res = result.results
    assert res.get("verity") == "done", result.describe()
    assert len(set(expected.values())) == len(FILES)  # random contents: all distinct
    for name, digest in expected.items():
        assert res[f"digest.{name}"] == digest, name
        assert res[f"before.{name}"] == "ENODATA", name
        assert res[f"flag.{name}"] == "True", name
        assert res[f"again.{name}"] == "EEXIST", name
        assert res[f"write.{name}"] == "EPERM", name
    # The guest wrote verity into the image: debugfs on the host sees the inode flag.
    for name in FILES:
        stat = guest.run(["debugfs", "-R", f"stat /files/{name}", disk])
        found = re.search(r"Flags: (0x[0-9a-f]+)", stat)
        assert found is not None, stat
        flags = int(found.group(1), 16)
        assert flags & 0x00100000, (name, stat)
