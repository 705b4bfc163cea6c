"""How long store.erofs takes to write the image of Debian minbase, against the step it
replaces: the same tree made inode by inode in a tmpfs from Python (the metacopy layout's
unpack before issue 17).

    python3 -m bench.erofs_write [--repeats N]

The tree is the cached bench corpus (``bench.corpora.debian_minbase``) as the metacopy
layout holds it: files up to 4,096 bytes with their bytes, every larger file a stub
(its size, no data, a ``trusted.overlay.redirect`` and a ``trusted.overlay.metacopy``
xattr), hardlinks kept.  Both sides run in turns, ``--repeats`` times each; the medians,
their ratio and the load average are printed.  Needs root (the tmpfs, owners, trusted.*).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import stat
import statistics
import tempfile
import time

from bench.corpora import debian_minbase
from overlay import mounts
from store.erofs import DIR, FILE, SYMLINK, Node, image_bytes

INLINE_MAX = 4096


def load(root: bytes) -> Node:
    """The tree under ``root`` as Nodes, large files as stubs (see the module docstring)."""
    seen: dict[tuple[int, int], Node] = {}

    def walk(path: bytes) -> Node | None:
        st = os.lstat(path)
        key = (st.st_dev, st.st_ino)
        if key in seen:
            return seen[key]
        xattrs = [(os.fsencode(n), os.getxattr(path, n, follow_symlinks=False))
                  for n in os.listxattr(path, follow_symlinks=False)]
        mode = stat.S_IMODE(st.st_mode)
        node: Node
        if stat.S_ISDIR(st.st_mode):
            node = Node(DIR, mode, st.st_uid, st.st_gid, tuple(xattrs))
            for name in sorted(os.listdir(path)):
                child = walk(os.path.join(path, name))
                if child is not None:
                    node.entries[name] = child
        elif stat.S_ISLNK(st.st_mode):
            node = Node(SYMLINK, 0o777, st.st_uid, st.st_gid, tuple(xattrs), os.readlink(path))
        elif stat.S_ISREG(st.st_mode) and st.st_size <= INLINE_MAX:
            with open(path, "rb") as handle:
                node = Node(FILE, mode, st.st_uid, st.st_gid, tuple(xattrs), handle.read())
        elif stat.S_ISREG(st.st_mode):
            digest = hashlib.sha256(path).hexdigest()
            redirect = f"/{digest[:2]}/{digest[2:]}.{'0' * 64}.file".encode()
            xattrs += [(b"trusted.overlay.redirect", redirect),
                       (b"trusted.overlay.metacopy", b"\x00\x24\x00\x01" + hashlib.sha256(redirect).digest())]
            node = Node(FILE, mode, st.st_uid, st.st_gid, tuple(xattrs), size=st.st_size)
        else:
            return None
        seen[key] = node
        return node

    tree = walk(root)
    assert tree is not None
    return tree


def to_tmpfs(root: Node, where: bytes) -> None:
    """The peer: the same tree made in the directory ``where``, one inode at a time."""
    made: dict[int, bytes] = {}

    def meta(path: bytes, node: Node) -> None:
        os.chown(path, node.uid, node.gid, follow_symlinks=False)
        if node.kind != SYMLINK:
            os.chmod(path, node.mode)
        for name, value in node.xattrs:
            os.setxattr(path, name, value, follow_symlinks=False)

    def make(path: bytes, node: Node) -> None:
        if node.kind == DIR:
            os.mkdir(path)
            for name, child in node.entries.items():
                make(os.path.join(path, name), child)
        elif id(node) in made:
            os.link(made[id(node)], path)
            return
        elif node.kind == SYMLINK:
            os.symlink(node.data, path)
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                if node.size is not None:
                    os.ftruncate(fd, node.size)
                else:
                    os.write(fd, node.data)
            finally:
                os.close(fd)
            made[id(node)] = path
        meta(path, node)

    make(os.path.join(where, b"tree"), root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()
    tree = load(os.fsencode(debian_minbase()))
    ours: list[float] = []
    peer: list[float] = []
    size = 0
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.repeats):
            start = time.perf_counter()
            size = len(image_bytes(tree))
            ours.append(time.perf_counter() - start)
            with mounts.tmpfs(scratch):
                start = time.perf_counter()
                to_tmpfs(tree, os.fsencode(scratch))
                peer.append(time.perf_counter() - start)
    a, b = statistics.median(ours), statistics.median(peer)
    print(f"erofs image of minbase: {a * 1000:.1f} ms median ({size} bytes); "
          f"tmpfs peer: {b * 1000:.1f} ms median; ratio {a / b:.2f}; "
          f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
