"""Shared by the pack tests: real repositories, commits, keys, and hand-made packs.

``craft`` writes pack bytes from raw manifest rows with nothing validated, so
that each hostile-pack test can break exactly one rule while everything the
reader checks before that rule holds.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
from dataclasses import dataclass

import zstandard

from pack import format as fmt
from pack.build import build_pack
from pack.keys import Keyring, generate_key, load_private_key
from store.commits import Commit
from store.history import finish_commit
from store.ids import RawId
from store.model import Entry, Kind, Meta, encode_entry
from store.repo import Repository
from store.source_dir import read_directory
from store.tree import encode_tree

ROOT_META = Meta(0o755, 0, 0)
FILE_META = Meta(0o644, 0, 0)


def commit_dir(repo: Repository, path: str, branch: str = "main", *, version: str = "",
               timestamp: int = 1_700_000_000) -> RawId:
    """Commit directory ``path`` on ``branch`` the way the CLI's commit command does."""
    with repo.writing() as tx:
        tree, meta = read_directory(tx, path)
        return finish_commit(repo, tx, branch, tree, meta, subject="test", version=version,
                             timestamp=timestamp)


def sample_tree(root: str, *, big: int = 20000) -> None:
    """A small tree with every kind of path: nested dirs, odd names, symlinks, xattrs,
    empty, inline and large files, one at exactly the default inline limit."""
    os.makedirs(os.path.join(root, "etc", "deep", "er"))
    os.makedirs(os.path.join(root, "usr", "bin"))
    with open(os.path.join(root, "etc", "hostname"), "w") as handle:
        handle.write("device\n")
    with open(os.path.join(root, "etc", "deep", "er", "x"), "wb") as handle:
        handle.write(b"x" * 4096)
    with open(os.path.join(root, "etc", "empty"), "wb"):
        pass
    with open(os.path.join(root, "usr", "bin", "tool"), "wb") as handle:
        handle.write(bytes(range(256)) * (big // 256))
    os.chmod(os.path.join(root, "usr", "bin", "tool"), 0o4755)
    with open(os.fsencode(os.path.join(root, "etc")) + b"/\xffodd name", "wb") as handle:
        handle.write(b"odd")
    os.symlink("../etc/hostname", os.path.join(root, "usr", "hostname-link"))
    os.symlink("/etc/shadow", os.path.join(root, "escape"))
    os.setxattr(os.path.join(root, "etc", "hostname"), "user.label", b"v")
    os.chmod(os.path.join(root, "etc", "deep"), 0o500)


@dataclass
class Built:
    repo: Repository
    commit_id: RawId
    pack: str
    src: str


def build_sample(base: str, *, version: str = "1", timestamp: int = 1_700_000_000,
                 name: str = "sample", branch: str = "os/main", **build_args: int) -> Built:
    """A repository under ``base`` with the sample tree committed, and its pack built."""
    src = os.path.join(base, f"{name}-src")
    if not os.path.exists(src):
        os.makedirs(src)
        sample_tree(src)
    repo_path = os.path.join(base, f"{name}-repo")
    repo = Repository.open(repo_path) if os.path.exists(repo_path) else Repository.init(repo_path)
    with open(os.path.join(src, "version"), "w") as handle:
        handle.write(f"{version} {timestamp}\n")  # each version is a distinct commit
    commit_id = commit_dir(repo, src, branch, version=version, timestamp=timestamp)
    pack = os.path.join(base, f"{name}-{version}-{timestamp}.pack")
    build_pack(repo, commit_id, branch, pack, **build_args)
    return Built(repo, commit_id, pack, src)


def make_keys(base: str, *names: str) -> dict[str, str]:
    """Key pairs ``base/<name>`` (+ ``.pub``); returns name -> private key path."""
    out = {}
    for name in names:
        path = os.path.join(base, name)
        generate_key(path)
        out[name] = path
    return out


def keyring_dir(base: str, name: str, *keys: str, revoked: tuple[str, ...] = ()) -> str:
    """A keyring directory trusting the public halves of ``keys`` and revoking ``revoked``."""
    directory = os.path.join(base, name)
    os.makedirs(directory)
    for key in keys:
        shutil.copy(key + ".pub", os.path.join(directory, os.path.basename(key) + ".pub"))
    if revoked:
        from pack.keys import key_id
        with open(os.path.join(directory, "revoked"), "w") as handle:
            handle.write("# revoked keys\n")
            for key in revoked:
                handle.write(key_id(load_private_key(key).public_key()).hex() + "\n")
    return directory


def load_keyring(directory: str) -> Keyring:
    return Keyring.load(directory)


# -- hand-made packs ----------------------------------------------------------------------

_U16 = struct.Struct("<H")
_INLINE = struct.Struct("<BQ")


def tree_id(entries: list[Entry]) -> RawId:
    return RawId(hashlib.sha256(encode_tree(entries)).digest())


def file_entry(name: bytes, data: bytes, meta: Meta = FILE_META) -> Entry:
    from store.fsverity import digest_bytes
    return Entry(name, Kind.FILE, meta, size=len(data), digest=RawId(digest_bytes(data)))


def dir_entry(name: bytes, children: list[Entry], meta: Meta = ROOT_META) -> Entry:
    return Entry(name, Kind.DIR, meta, tree=tree_id(children))


def symlink_entry(name: bytes, target: bytes) -> Entry:
    return Entry(name, Kind.SYMLINK, Meta(0o777, 0, 0), target=target)


def row(parent: bytes, entry: Entry, *, inline: int | None = None, offset: int = 0,
        inline_max: int = 4096) -> bytes:
    """One manifest row, encoded with nothing checked."""
    out = _U16.pack(len(parent)) + parent + encode_entry(entry)
    if entry.kind is Kind.FILE:
        flag = (entry.size <= inline_max) if inline is None else inline
        out += _INLINE.pack(flag, offset)
    return out


def frames_of(data: bytes, cuts: list[int] | None = None, level: int = 3) -> list[tuple[bytes, int]]:
    """``data`` cut at ``cuts`` (default: every FRAME_MAX) into (zstd frame, size) pairs."""
    if cuts is None:
        cuts = list(range(fmt.FRAME_MAX, len(data), fmt.FRAME_MAX))
    bounds = [0, *cuts, len(data)]
    cctx = fmt.compressor(level)
    return [(cctx.compress(data[a:b]), b - a) for a, b in zip(bounds, bounds[1:], strict=False)
            if b > a]


def craft(rows: list[bytes], *, root: list[Entry] | None = None, data: bytes = b"",
          inline_max: int = 4096, ref: bytes = b"main", commit: Commit | None = None,
          manifest_frames: list[tuple[bytes, int]] | None = None,
          data_frames: list[tuple[bytes, int]] | None = None, header: dict | None = None,
          commit_bytes: bytes | None = None, image: bytes | None = None,
          image_objects: bytes | None = None) -> bytes:
    """Pack bytes for raw ``rows``; ``root`` (the top-level entries) gives the commit's root
    tree.  Any header field can be overridden through ``header``.  Format version 1, or with
    ``image`` (the raw image identity, put after the ref) version 2, or with ``image_objects``
    too (the raw section, count first, after the identity) version 3."""
    manifest = b"".join(rows)
    if commit is None:
        commit = Commit(tree_id(root or []), ROOT_META, 1_700_000_000, version="1")
    cbytes = commit.encode() if commit_bytes is None else commit_bytes
    mframes = frames_of(manifest) if manifest_frames is None else manifest_frames
    dframes = frames_of(data) if data_frames is None else data_frames
    fields = dict(inline_max=inline_max, commit_id=hashlib.sha256(commit.encode()).digest(),
                  commit_len=len(cbytes), ref_len=len(ref), entry_count=len(rows),
                  manifest_size=len(manifest), manifest_frames=len(mframes), data_size=len(data),
                  data_frames=len(dframes))
    fields.update(header or {})
    version = fields.pop("version", 1 if image is None else 2 if image_objects is None else 3)
    head = struct.pack("<8sHHI32sIHIQIQI", fields.pop("magic", fmt.MAGIC), version,
                       fields.pop("flags", 0), fields["inline_max"], fields["commit_id"],
                       fields["commit_len"], fields["ref_len"], fields["entry_count"],
                       fields["manifest_size"], fields["manifest_frames"], fields["data_size"],
                       fields["data_frames"])
    tables = b"".join(struct.pack("<II", len(f), n) for f, n in mframes + dframes)
    return (head + cbytes + ref + (image or b"") + (image_objects or b"") + tables
            + b"".join(f for f, _ in mframes + dframes))


def downgrade(data: bytes, version: int) -> bytes:
    """The pack ``data`` (version 2 or 3) in format ``version``: 1 has no image identity,
    2 no image objects; the rest is the same bytes (to be signed again)."""
    header = fmt.parse_header(data[:fmt.HEADER_SIZE], len(data))
    if header.has_image_objects:
        at = header.image_objects_offset
        header = fmt.parse_image_count(data[at:at + fmt.IMAGE_COUNT_SIZE], header, len(data))
    old = header.replace(version=version, image_count=0)
    keep = header.image_offset + (fmt.IMAGE_SIZE if version >= fmt.IMAGE_VERSION else 0)
    return old.encode() + data[fmt.HEADER_SIZE:keep] + data[header.tables_offset:]


def zstd_frame(data: bytes, *, content_size: bool = True) -> bytes:
    return zstandard.ZstdCompressor(level=3, write_content_size=content_size,
                                    write_checksum=False).compress(data)
