"""A small built-in sample root tree, the same on every machine, for `sealtree demo`."""

from __future__ import annotations

import os

from store import xattrs


def _file(path: str | bytes, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0,
          attrs: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
    xattrs.write(path, attrs)
    if os.geteuid() == 0:
        os.chown(path, uid, gid)
    os.chmod(path, mode)


def make_sample_tree(root: str) -> None:
    """Write a root-filesystem-shaped tree under ``root`` (created): small and large files,
    symlinks, a hardlink, a setuid binary, xattrs and a name that is not UTF-8."""
    for d in ("etc", "usr/bin", "usr/lib/sample", "usr/share/doc/sample", "var/lib"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    _file(f"{root}/etc/os-release", b'NAME="sealtree sample"\nVERSION_ID="1"\n')
    _file(f"{root}/etc/hostname", b"sample\n")
    _file(f"{root}/etc/shadow", b"root:*:19000:0:99999:7:::\n", 0o640, 0, 42)
    # Large "binaries": deterministic pseudo-random bytes, several fs-verity blocks.
    state = 0x9E3779B9
    blob = bytearray()
    for _ in range(300_000 // 4):
        state = (state * 1103515245 + 12345) & 0xFFFFFFFF
        blob += state.to_bytes(4, "little")
    _file(f"{root}/usr/bin/sample-shell", bytes(blob), 0o755,
          attrs=((b"security.capability", b"\x01\x00\x00\x02" + bytes(16)),) if os.geteuid() == 0 else ())
    _file(f"{root}/usr/bin/sample-passwd", bytes(blob[:70_000]), 0o4755)
    _file(f"{root}/usr/lib/sample/libsample.so.1", bytes(reversed(blob)), 0o644,
          attrs=((b"user.origin", b"built-in sample"),))
    os.symlink("libsample.so.1", f"{root}/usr/lib/sample/libsample.so")
    os.symlink("usr/bin", f"{root}/bin")
    os.link(f"{root}/usr/bin/sample-shell", f"{root}/usr/bin/sample-sh")
    _file(f"{root}/usr/share/doc/sample/README", b"A sample tree committed by `sealtree demo`.\n")
    _file(os.fsencode(f"{root}/usr/share/doc/sample/") + b"caf\xe9 latin-1 name", b"bytes, not text\n")
    _file(f"{root}/var/lib/empty", b"")
    os.chmod(f"{root}/var/lib", 0o1777)
