"""Trees for tests: snapshot a tree with every metadata field and compare two; random trees
(Hypothesis strategies) and writing one to disk."""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass

from hypothesis import strategies as st

from store import xattrs


@dataclass(frozen=True)
class Node:
    kind: str
    mode: int
    uid: int
    gid: int
    xattrs: tuple[tuple[bytes, bytes], ...]
    content: str = ""  # sha256 of a file's bytes
    target: bytes = b""


def snapshot(root: str | bytes, *, ignore_root_meta: bool = False
             ) -> tuple[dict[bytes, Node], list[set[bytes]]]:
    """Every path below ``root`` with type, mode, owner, xattrs, content hash, symlink target;
    and the hardlink groups (sets of paths sharing an inode, only those of 2+)."""
    root_b = os.fsencode(root)
    nodes: dict[bytes, Node] = {}
    inodes: dict[tuple[int, int], set[bytes]] = {}
    for directory, dirs, files in os.walk(root_b):
        names = dirs + files
        for name in names + ([b""] if directory == root_b else []):
            path = os.path.join(directory, name) if name else directory
            rel = os.path.relpath(path, root_b) if name else b"."
            if rel == b"." and ignore_root_meta:
                continue
            st = os.lstat(path)
            meta = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, xattrs.read(path))
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as handle:
                    digest = hashlib.sha256(handle.read()).hexdigest()
                nodes[rel] = Node("file", *meta, content=digest)
                inodes.setdefault((st.st_dev, st.st_ino), set()).add(rel)
            elif stat.S_ISDIR(st.st_mode):
                nodes[rel] = Node("dir", *meta)
            elif stat.S_ISLNK(st.st_mode):
                nodes[rel] = Node("symlink", 0o777, st.st_uid, st.st_gid, meta[3],
                                  target=os.readlink(path))
            else:
                nodes[rel] = Node("special", *meta)
    groups = [g for g in inodes.values() if len(g) > 1]
    return nodes, groups


def assert_same_tree(source: str, copy: str) -> None:
    """Equal on every field; every hardlink group of ``source`` is kept in ``copy``
    (``copy`` may join more identical files: one inode per distinct object)."""
    a, a_groups = snapshot(source)
    b, b_groups = snapshot(copy)
    assert a.keys() == b.keys(), sorted(a.keys() ^ b.keys())
    for path in a:
        assert a[path] == b[path], (path, a[path], b[path])
    for group in a_groups:
        assert any(group <= g for g in b_groups), f"hardlink group {group} split in {copy}"
    for group in b_groups:
        nodes = {b[p] for p in group}
        assert len(nodes) == 1, f"{group} share an inode but differ"


# -- random trees (Hypothesis) ------------------------------------------------------------

ODD_NAMES = [b"with space", b"a:b,c", b"\xff\xfe", b"-dash", b"new\nline", b"\\back", b"x" * 255,
             "ünï".encode(), b"*?[", b".hidden"]
names = st.one_of(
    st.sampled_from(ODD_NAMES),
    st.binary(min_size=1, max_size=12).filter(lambda n: b"/" not in n and b"\0" not in n
                                                and n not in (b".", b"..")),
)
modes = st.one_of(st.sampled_from([0o644, 0o755, 0o600, 0o4755, 0o2755, 0o1777, 0o000, 0o6711]),
                  st.integers(0, 0o7777))
owners = st.tuples(st.sampled_from([0, 1, 1000, 65534]), st.sampled_from([0, 2, 1000, 65534]))
xattr_sets = st.lists(st.tuples(st.sampled_from([b"user.a", b"user.\xffodd", b"trusted.t", b"security.s",
                                                 b"user.long" + b"n" * 40]),
                                st.binary(max_size=40)), max_size=3, unique_by=lambda kv: kv[0])
contents = st.one_of(st.just(b""), st.binary(max_size=300),
                     st.builds(lambda n, b: bytes([b]) * n, st.sampled_from([4095, 4096, 4097, 9000]),
                               st.integers(0, 255)))

files = st.builds(lambda c, m, o, x: ("file", c, m, o, x), contents, modes, owners, xattr_sets)
symlinks = st.builds(lambda t, o, x: ("symlink", t, o,
                                      [kv for kv in x if not kv[0].startswith(b"user.")]),
                     st.binary(min_size=1, max_size=30).filter(lambda t: b"\0" not in t), owners, xattr_sets)


def _with_dirs(children: st.SearchStrategy) -> st.SearchStrategy:
    dirs = st.builds(lambda c, m, o, x: ("dir", c, m, o, x), children, modes, owners, xattr_sets)
    return st.dictionaries(names, st.one_of(files, symlinks, dirs), max_size=4)


trees = st.recursive(st.dictionaries(names, st.one_of(files, symlinks), max_size=4), _with_dirs,
                     max_leaves=12)


#: Hardlinks to add to a generated tree (``materialise``'s ``hardlinks``): up to three new names
#: for files picked by index.
extra_links = st.lists(st.tuples(st.integers(0, 50), st.binary(min_size=1, max_size=8)
                                 .filter(lambda n: b"/" not in n and b"\0" not in n)), max_size=3)


def add_content_twins(tree: dict) -> dict:
    """``tree`` with three large files of one content: ``twin-a`` and ``twin-c`` with equal
    metadata (one inode), ``twin-b`` with other metadata (another inode, the same object)."""
    tree[b"twin-a"] = ("file", b"T" * 70000, 0o644, (0, 0), [])
    tree[b"twin-b"] = ("file", b"T" * 70000, 0o4711, (1000, 2), [(b"user.a", b"x")])
    tree[b"twin-c"] = ("file", b"T" * 70000, 0o644, (0, 0), [])
    return tree


def materialise(root: bytes, tree: dict, hardlinks: list[tuple[int, bytes]] = ()) -> None:
    """Write a generated tree under ``root`` (which exists); then add hardlinks at the root."""
    made: list[bytes] = []
    dirs: list[tuple[bytes, int, tuple[int, int], list]] = []

    def write(directory: bytes, spec: dict) -> None:
        for name, node in spec.items():
            path = os.path.join(directory, name)
            if node[0] == "file":
                _, data, mode, (uid, gid), xs = node
                with open(path, "wb") as handle:
                    handle.write(data)
                xattrs.write(path, tuple(xs))
                os.chown(path, uid, gid)
                os.chmod(path, mode)
                made.append(path)
            elif node[0] == "symlink":
                _, target, (uid, gid), xs = node
                os.symlink(target, path)
                xattrs.write(path, tuple(xs))
                os.chown(path, uid, gid, follow_symlinks=False)
            else:
                _, children, mode, owner, xs = node
                os.mkdir(path)
                write(path, children)
                dirs.append((path, mode, owner, xs))

    write(root, tree)
    for index, name in hardlinks:
        if made and not os.path.lexists(os.path.join(root, (b"hl-" + name)[:255])):
            os.link(made[index % len(made)], os.path.join(root, (b"hl-" + name)[:255]))
    for path, mode, (uid, gid), xs in dirs:  # last, so 0o000 dirs could still be filled
        xattrs.write(path, tuple(xs))
        os.chown(path, uid, gid)
        os.chmod(path, mode)
