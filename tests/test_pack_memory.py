"""The memory bound of reading a pack (docs/FORMAT.md, section 7, "Memory").

A pack of a few hundred KiB can declare a manifest of ``MAX_MANIFEST`` bytes.  Reading
it (inspect, verify, import) must stay within the documented bound whatever the
manifest holds: many small rows (a Python object per row would cost several times the
manifest), or a directory as large as a tree object may be (its tree is rebuilt in
memory).  Peak RSS is measured in a child process (its VmHWM), which is a size, not a
timing.
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
from collections.abc import Iterator

import pytest

from pack import format as fmt
from pack.reader import MEMORY_BOUND, ROW_CACHE_BYTES, ROW_CACHE_ROWS
from store.commits import Commit
from store.ids import RawId
from store.model import Entry, Kind, Meta, encode_entry
from store.objects import MAX_META_OBJECT
from store.tree import encode_tree
from tests.test_pack_support import ROOT_META, keyring_dir, make_keys

MIB = 1 << 20

_U16 = struct.Struct("<H")
_INLINE = struct.Struct("<BQ")


def _empty_digest() -> bytes:
    from store.fsverity import digest_bytes  # noqa: PLC0415

    return digest_bytes(b"")


def _row(parent: bytes, entry: Entry) -> bytes:
    out = _U16.pack(len(parent)) + parent + encode_entry(entry)
    if entry.kind is Kind.FILE:
        out += _INLINE.pack(1, 0)  # every file is empty: inline, at data offset 0
    return out


def write_wide_pack(path: str, dirs: int, files: int, *, xattr_size: int = 0,
                    name_width: int = 7) -> int:
    """Write a consistent pack: ``dirs`` directories of ``files`` empty files each (every file
    with a ``user.x`` xattr of ``xattr_size`` bytes when not 0, named ``f`` and
    ``name_width`` digits), streamed, with nothing held but one directory's entries.
    Returns the manifest's size."""
    digest = _empty_digest()
    meta = Meta(0o644, 0, 0, ((b"user.x", b"v" * xattr_size),) if xattr_size else ())

    def file(j: int) -> Entry:
        return Entry(b"f%0*d" % (name_width, j), Kind.FILE, meta, size=0, digest=RawId(digest))

    children = [file(j) for j in range(files)]
    subtree = hashlib.sha256(encode_tree(children)).digest()
    top = [Entry(b"d%06d" % i, Kind.DIR, ROOT_META, tree=subtree) for i in range(dirs)]

    def rows() -> Iterator[bytes]:
        for directory in top:
            yield _row(b"", directory)
            for child in children:
                yield _row(directory.name, child)

    cctx = fmt.compressor(1)
    frames: list[tuple[bytes, int]] = []
    pending = bytearray()
    size = 0
    for encoded in rows():
        pending += encoded
        size += len(encoded)
        while len(pending) >= fmt.FRAME_MAX:
            frames.append((cctx.compress(bytes(pending[:fmt.FRAME_MAX])), fmt.FRAME_MAX))
            del pending[:fmt.FRAME_MAX]
    if pending:
        frames.append((cctx.compress(bytes(pending)), len(pending)))
    commit = Commit(hashlib.sha256(encode_tree(top)).digest(), ROOT_META, 1_700_000_000,
                    version="1")
    commit_bytes = commit.encode()
    ref = b"os/main"
    header = fmt.Header(4096, commit.id(), len(commit_bytes), len(ref), dirs * (files + 1), size,
                        len(frames), 0, 0, version=1)  # no image identity: none is built
    with open(path, "wb") as out:
        out.write(header.encode() + commit_bytes + ref)
        out.write(fmt.encode_frame_table([(len(f), n) for f, n in frames]))
        for frame, _n in frames:
            out.write(frame)
    return size


_CHILD = r"""
import sys
sys.path.insert(0, sys.argv[1])
from pack.reader import PackReader

def high_water():
    # VmHWM: this process's peak RSS, in kB.  Not ru_maxrss, which keeps the parent's
    # size across fork and exec.
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

baseline = high_water()
mode, path = sys.argv[2], sys.argv[3]
if mode == "inspect":
    with PackReader(path) as reader:
        reader.check_data()
        paths = len(reader.manifest.entries)
elif mode == "import":
    from pack.importer import import_pack
    from pack.keys import Keyring
    from store.repo import Repository
    result = import_pack(Repository.open(sys.argv[4]), path, Keyring.load(sys.argv[5]))
    paths = result.trees
peak = high_water()
print(baseline * 1024, peak * 1024, paths)
"""


def peak_rss(*args: str) -> tuple[int, int, int]:
    """Run a read of a pack in a child; its baseline and peak RSS in bytes, and a count."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", _CHILD, root, *args], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    baseline, peak, count = (int(word) for word in done.stdout.split())
    return baseline, peak, count


# (directories, files in each, xattr bytes per file, digits in a file's name); None files:
# as many as bring the manifest to its limit.
CASES = {
    # The audit's attack: many small rows, the manifest at its limit (not kept as rows:
    # a Python object per row costs about four times the manifest).
    "many small rows": (1024, None, 0, 7),
    # One directory as large as a tree object may be: its tree is rebuilt in memory.
    "one tree-sized directory": (1, None, 65536, 7),
    # The largest manifest whose rows are kept: ROW_CACHE_ROWS rows, ~ROW_CACHE_BYTES bytes.
    "the most rows kept": (256, 1023, 0, 48),
}


def _limit(xattr_size: int) -> int:
    if xattr_size:  # one directory: its tree object must fit the store's limit too
        return min(fmt.MAX_MANIFEST, MAX_META_OBJECT - (1 << 16))
    return fmt.MAX_MANIFEST


def _files_for(dirs: int, xattr_size: int, width: int) -> int:
    """How many files per directory bring the manifest just under its limit."""
    meta = Meta(0o644, 0, 0, ((b"user.x", b"v" * xattr_size),) if xattr_size else ())
    probe = _row(b"d000000", Entry(b"f" + b"0" * width, Kind.FILE, meta, size=0,
                                   digest=b"\0" * 32))
    return max(1, (_limit(xattr_size) // dirs - 64) // len(probe))


@pytest.mark.parametrize("name", sorted(CASES))
def test_reading_a_worst_case_pack_stays_within_the_memory_bound(tmp_path, name):
    dirs, files, xattr_size, width = CASES[name]
    files = files or _files_for(dirs, xattr_size, width)
    pack = str(tmp_path / "wide.pack")
    size = write_wide_pack(pack, dirs, files, xattr_size=xattr_size, name_width=width)
    if name == "the most rows kept":
        assert dirs * (files + 1) == ROW_CACHE_ROWS and ROW_CACHE_BYTES - 2 * MIB < size <= ROW_CACHE_BYTES
    else:
        assert _limit(xattr_size) - 2 * MIB < size <= fmt.MAX_MANIFEST
    assert os.path.getsize(pack) < size // 20  # a small file that declares a large manifest
    baseline, peak, paths = peak_rss("inspect", pack)
    assert paths == dirs * (files + 1)
    assert peak - baseline <= MEMORY_BOUND, (peak - baseline) / MIB


def test_importing_a_worst_case_pack_stays_within_the_memory_bound(tmp_path):
    from pack.keys import load_private_key  # noqa: PLC0415
    from pack.signature import sign_pack  # noqa: PLC0415
    from store.repo import Repository  # noqa: PLC0415

    dirs, _files, _xattr_size, width = CASES["one tree-sized directory"]
    xattr_size = 2000  # what a filesystem's xattr block holds: import writes the file
    pack = str(tmp_path / "wide.pack")
    write_wide_pack(pack, dirs, _files_for(dirs, xattr_size, width), xattr_size=xattr_size,
                    name_width=width)
    keys = make_keys(str(tmp_path), "vendor")
    sign_pack(pack, load_private_key(keys["vendor"]))
    ring = keyring_dir(str(tmp_path), "ring", keys["vendor"])
    repo = Repository.init(str(tmp_path / "repo"))
    baseline, peak, trees = peak_rss("import", pack, repo.path, ring)
    assert trees == 2
    assert peak - baseline <= MEMORY_BOUND, (peak - baseline) / MIB



def test_rows_decoded_again_equal_the_kept_ones_and_a_changed_file_is_refused(tmp_path,
                                                                               monkeypatch):
    import pack.reader  # noqa: PLC0415
    from store.errors import PackError  # noqa: PLC0415
    from tests.test_pack_support import build_sample  # noqa: PLC0415

    built = build_sample(str(tmp_path))
    with pack.reader.PackReader(built.pack) as reader:
        kept = list(reader.manifest.entries)
        assert isinstance(reader.manifest.rows, list)  # a small manifest keeps its rows
    monkeypatch.setattr(pack.reader, "ROW_CACHE_ROWS", 0)
    with pack.reader.PackReader(built.pack) as reader:
        assert not isinstance(reader.manifest.rows, list)
        assert list(reader.manifest.entries) == kept == list(reader.manifest.entries)
        assert [row for row, _data in reader.entries()] == kept
        frame = reader._manifest_frames[0]  # noqa: SLF001 - where to tamper
        with open(built.pack, "r+b") as handle:  # the same length, other bytes
            handle.seek(frame.offset + frame.compressed - 1)
            last = handle.read(1)
            handle.seek(-1, os.SEEK_CUR)
            handle.write(bytes([last[0] ^ 1]))
        with pytest.raises(PackError, match="changed while it was read") as info:
            list(reader.manifest.entries)
        assert info.value.path == built.pack


if __name__ == "__main__":  # the figures for docs/FORMAT.md: python3 -m tests.test_pack_memory DIR
    import tempfile

    for case_name, (n_dirs, n_files, x_size, n_width) in sorted(CASES.items()):
        n_files = n_files or _files_for(n_dirs, x_size, n_width)
        with tempfile.TemporaryDirectory(dir=sys.argv[1] if len(sys.argv) > 1 else None) as work:
            crafted = os.path.join(work, "wide.pack")
            manifest = write_wide_pack(crafted, n_dirs, n_files, xattr_size=x_size,
                                       name_width=n_width)
            base, top, _count = peak_rss("inspect", crafted)
            print(f"{case_name}: manifest {manifest / MIB:.1f} MiB, pack "
                  f"{os.path.getsize(crafted) / 1024:.0f} KiB, peak RSS {top / MIB:.0f} MiB "
                  f"({(top - base) / MIB:.0f} MiB above the interpreter's {base / MIB:.0f})")
