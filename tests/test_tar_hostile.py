"""Hostile and damaged tar input (issue 14): every checksum of the compression checked,
numbers parsed as strictly as GNU tar parses them, size limits for untrusted archives.

The damaged inputs are made here, with Python's gzip, lzma and zstandard modules
and byte surgery; the sparse archives with GNU tar.
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import time

import pytest
import zstandard

from store.errors import SourceError, SpecialFile
from store.repo import Repository
from store.source_tar import TarSourceOptions, TarSourceResult, read_tar
from store.tar_numbers import header_number
from tests.helpers import ROOT

pytestmark = pytest.mark.usefixtures("needs_root")

GNU_TAR = shutil.which("tar")
needs_gnu_tar = pytest.mark.skipif(
    GNU_TAR is None or b"GNU tar" not in subprocess.run([GNU_TAR, "--version"], capture_output=True).stdout,
    reason="GNU tar is not installed")
LABEL = "in.tar"


def plain_tar(*files: tuple[str, bytes], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8",
                      errors="surrogateescape") as archive:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1
            archive.addfile(info, io.BytesIO(data))
    return buf.getvalue()


TAR = plain_tar(("etc/motd", b"hello\n" * 500), ("bin/tool", bytes(range(256)) * 64))


def commit(repo: Repository, data: bytes, **options: object) -> TarSourceResult:
    with repo.writing() as tx:
        result = read_tar(tx, io.BytesIO(data), TarSourceOptions(label=LABEL, **options))  # type: ignore[arg-type]
        tx.publish()
    return result


def refused(repo: Repository, data: bytes, match: str, **options: object) -> SourceError:
    with pytest.raises(SourceError, match=match) as caught:
        commit(repo, data, **options)
    return caught.value


def content(repo: Repository, data: bytes) -> dict[bytes, bytes]:
    """The files of the tree that ``data`` commits to, by path."""
    from store.walk import walk  # noqa: PLC0415
    result = commit(repo, data)
    out = {}
    for path, entry in walk(repo.objects, result.tree):
        if entry.digest:
            with open(repo.objects.file_path(entry.digest, entry.meta), "rb") as handle:
                out[path] = handle.read()
    return out


# -- compression: every checksum, the real end ----------------------------------------------

def gzip_member(data: bytes, level: int = 9) -> bytes:
    return gzip.compress(data, compresslevel=level, mtime=0)


def flip_bit(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1:]


def damaged() -> dict[str, tuple[bytes, str]]:
    """name -> (input, what the refusal says)."""
    gz = gzip_member(TAR)
    stored = gzip_member(TAR, level=0)  # stored blocks: a flipped bit is content, not structure
    at = stored.index(b"hello\nhello")
    xz = lzma.compress(TAR)
    zst = zstandard.ZstdCompressor(write_checksum=True).compress(TAR)
    return {
        "gzip-crc-zeroed": (gz[:-8] + bytes(4) + gz[-4:], "corrupt gzip data: .*incorrect data check"),
        "gzip-wrong-isize": (gz[:-4] + struct.pack("<I", len(TAR) + 1),
                             "corrupt gzip data: .*incorrect length check"),
        "gzip-no-trailer": (gz[:-8], "corrupt gzip data: the input ends inside"),
        "gzip-one-bit-in-content": (flip_bit(stored, at), "corrupt gzip data: .*incorrect data check"),
        "gzip-garbage-after": (gz + b"garbage!", "corrupt gzip data: data after the end"),
        "gzip-garbage-after-padding": (gz + bytes(100) + b"x", "data after the end of the gzip stream"),
        "xz-no-footer": (xz[:-12], "corrupt xz data: the input ends inside"),
        "xz-flipped-check": (flip_bit(xz, len(xz) - 40), "corrupt xz data"),
        "zstd-checksum-cut": (zst[:-4], "corrupt zstd data: the input ends inside a zstd frame"),
        "zstd-checksum-wrong": (zst[:-1] + bytes([zst[-1] ^ 1]), "corrupt zstd data: .*checksum"),
        "zstd-trailing-zeros": (zst + bytes(8), "corrupt zstd data: data after the end"),
    }


DAMAGED = sorted(damaged())


@pytest.mark.parametrize("case", DAMAGED)
def test_damaged_compressed_streams_are_refused(repo, case):
    data, message = damaged()[case]
    err = refused(repo, data, message)
    assert err.path == LABEL and str(err).startswith(f"{LABEL}: ")


def test_one_flipped_bit_in_gzip_content_fails_the_cli_and_makes_no_commit(tmp_path, repo):
    stored = gzip_member(TAR, level=0)
    (tmp_path / "bad.tar.gz").write_bytes(flip_bit(stored, stored.index(b"hello\nhello")))
    cmd = [sys.executable, "-m", "sealtree", "--repo", repo.path, "commit", "-b", "t",
           "--tar", str(tmp_path / "bad.tar.gz")]
    proc = subprocess.run(cmd, capture_output=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 8, proc.stderr
    assert b"bad.tar.gz: corrupt gzip data" in proc.stderr and b"Traceback" not in proc.stderr
    assert Repository.open(repo.path).refs.read("t") is None


def test_concatenated_members_streams_and_frames_are_whole_archives(repo):
    half = len(TAR) // 2
    expected = content(repo, TAR)
    gz = gzip_member(TAR[:half]) + gzip_member(TAR[half:])
    xz = lzma.compress(TAR[:half]) + bytes(4) + lzma.compress(TAR[half:]) + bytes(8)  # stream padding
    compressor = zstandard.ZstdCompressor(write_checksum=True)
    skippable = struct.pack("<II", 0x184D2A50, 3) + b"abc"
    zst = compressor.compress(TAR[:half]) + skippable + compressor.compress(TAR[half:])
    for data in (gz, gzip_member(TAR) + bytes(512), xz, zst, TAR + bytes(10240)):
        assert content(repo, data) == expected


def test_a_stream_read_to_its_end_after_the_archive(repo):
    """The checksum at the very end is checked even when the tar data before it is whole."""
    zst = zstandard.ZstdCompressor(write_checksum=True).compress(TAR + bytes(1 << 16))
    refused(repo, zst[:-1] + bytes([zst[-1] ^ 1]), "checksum")
    refused(repo, TAR + b"\x01", "data after the end-of-archive block")
    refused(repo, gzip_member(TAR + b"junk" + bytes(600)), "not zero padding")


def test_a_bomb_is_decompressed_in_bounded_memory(repo):
    """A zstd frame of 512 MiB of zeros (a few KiB) is read through without holding it."""
    import resource  # noqa: PLC0415
    info = tarfile.TarInfo("zeros")
    info.size = 512 << 20
    header = info.tobuf(tarfile.USTAR_FORMAT)
    compressor = zstandard.ZstdCompressor().compressobj()
    chunk = bytes(1 << 20)
    parts = [compressor.compress(header)]
    parts += [compressor.compress(chunk) for _ in range(512)]
    parts.append(compressor.compress(bytes(1024)))
    parts.append(compressor.flush())
    bomb = b"".join(parts)
    assert len(bomb) < 1 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    err = refused(repo, bomb, "more than the limit", max_file_size=1 << 20)
    assert err.path == "zeros"
    from store.decompress import Decompressed  # noqa: PLC0415
    reader = Decompressed(io.BytesIO(bomb), "zstd", LABEL)
    total = 0
    while chunk := reader.read(1 << 20):
        total += len(chunk)
    assert total == 512 + (512 << 20) + 1024
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 << 10  # KiB


# -- numbers --------------------------------------------------------------------------------

def pax_tar(records: dict[bytes, bytes], data: bytes = b"data", size: int | None = None) -> bytes:
    """One ``x`` header with ``records`` (written by hand: tarfile would check them), then "f"."""
    def record(key: bytes, value: bytes) -> bytes:
        body = b" " + key + b"=" + value + b"\n"
        n = len(body) + 1
        while len(body) + len(str(n)) != n:
            n = len(body) + len(str(n))
        return str(n).encode() + body

    def pad(b: bytes) -> bytes:
        return b + bytes(-len(b) % 512)

    payload = b"".join(record(k, v) for k, v in records.items())
    head = tarfile.TarInfo("PaxHeader")
    head.type, head.size = tarfile.XHDTYPE, len(payload)
    file = tarfile.TarInfo("f")
    file.size, file.mode = len(data) if size is None else size, 0o640
    return (head.tobuf(tarfile.USTAR_FORMAT) + pad(payload) + file.tobuf(tarfile.USTAR_FORMAT)
            + pad(data) + bytes(1024))


@pytest.mark.parametrize(("records", "message"), [
    ({b"size": b"-5"}, "PAX record size is not a non-negative decimal number"),
    ({b"uid": b"abc"}, "PAX record uid is not a non-negative decimal number"),
    ({b"gid": b"1e3"}, "PAX record gid is not a non-negative decimal number"),
    ({b"uid": b" 7"}, "PAX record uid"),
    ({b"gid": "\u0663".encode()}, "PAX record gid"),  # an Arabic-Indic 3: int() takes it, tar not
    ({b"size": b"9" * 30}, "PAX record size is out of range"),
    ({b"uid": b"9" * 5000}, "PAX record uid is out of range"),  # past int()'s digit limit
    ({b"mtime": b"soon"}, "PAX record mtime is not a decimal time"),
    ({b"GNU.sparse.map": b"0,x", b"GNU.sparse.size": b"4"}, "not a valid tar stream"),
])
def test_bad_pax_numbers_are_refused(repo, records, message):
    err = refused(repo, pax_tar(records), message)
    assert err.path in ("f", LABEL)


def test_good_pax_numbers_are_taken(repo):
    result = commit(repo, pax_tar({b"uid": b"4000000000", b"gid": b"0", b"mtime": b"1700000000.25",
                                   b"atime": b"-3.5"}))
    from store.walk import lookup  # noqa: PLC0415
    entry = lookup(repo.objects, result.tree, b"f")
    assert entry is not None and (entry.meta.uid, entry.meta.gid) == (4_000_000_000, 0)


def with_field(block: bytes, start: int, value: bytes) -> bytes:
    """A header block with one field replaced and its checksum made right again."""
    block = block[:start] + value + block[start + len(value):]
    block = block[:148] + b" " * 8 + block[156:]
    checksum = sum(block)
    return block[:148] + b"%06o\0 " % checksum + block[156:]


def ustar_with(start: int, value: bytes) -> bytes:
    info = tarfile.TarInfo("f")
    info.size, info.mode, info.uid = 4, 0o644, 5
    header = with_field(info.tobuf(tarfile.USTAR_FORMAT), start, value)
    return header + b"data" + bytes(508) + bytes(1024)


@pytest.mark.parametrize(("start", "value", "message"), [
    (108, b"-000001\0", "the uid field is not an octal number"),
    (108, b"0o00005\0", "the uid field is not an octal number"),
    (116, b"0_00005\0", "the gid field is not an octal number"),
    (116, b" " * 8, "the gid field is blank"),
    (108, b" -00001\0", "the uid field is not an octal number"),
    (108, b"\xff" * 8, "the uid field holds a negative number"),
    (124, b"\xff" * 12, "the size field holds a negative number"),
])
def test_bad_header_numbers_are_refused(repo, start, value, message):
    tarfile.TarInfo.frombuf(ustar_with(start, value)[:512], "utf-8", "strict")  # tarfile takes it
    err = refused(repo, ustar_with(start, value), message)
    assert err.path == LABEL and "header of f" in str(err)


def test_header_numbers_as_gnu_tar_writes_them():
    assert header_number(b"0000644\0", "mode") == 0o644
    assert header_number(b"   644 \0", "mode") == 0o644  # old tars: leading spaces
    assert header_number(b"\0" * 8, "mode") == 0
    assert header_number(b"\x80" + bytes(6) + b"\x01", "uid") == 1
    assert header_number(b"\xff" * 12, "mtime", signed=True) == -1


# -- limits for untrusted archives, sparse members ------------------------------------------

def objects_size(repo: Repository) -> int:
    total = 0
    for directory, _dirs, files in os.walk(repo.path):
        total += sum(os.lstat(os.path.join(directory, name)).st_blocks * 512 for name in files)
    return total


@needs_gnu_tar
@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_sparse_bomb_is_refused_by_the_limit_before_its_data(tmp_path, repo, fmt):
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "huge", "wb") as handle:
        handle.truncate(10 << 30)
        handle.seek(5 << 30)
        handle.write(b"x")
    (src / "small").write_bytes(b"fine")
    archive = subprocess.run([GNU_TAR, f"--format={fmt}", "--sparse", "-C", str(src), "-cf", "-",
                              "small", "huge"], check=True, capture_output=True).stdout
    assert len(archive) < 64 << 10
    started = time.monotonic()
    err = refused(repo, archive, "huge: is 10737418240 bytes, more than the limit of 1073741824 "
                  "bytes for one file", max_file_size=1 << 30)
    assert err.path == "huge"
    assert time.monotonic() - started < 5
    assert objects_size(repo) < 16 << 20


def test_total_limit_counts_every_file(repo):
    data = plain_tar(("a", b"x" * 600), ("b", b"y" * 600), ("c", b"z" * 600))
    assert commit(repo, data, max_total_size=1800, max_file_size=600).files == 3
    err = refused(repo, data, "more than the limit of 1500 bytes for all of them", max_total_size=1500)
    assert err.path == "c" and "takes the files to 1800 bytes" in str(err)
    refused(repo, data, "is 600 bytes, more than the limit of 599 bytes for one file", max_file_size=599)


@needs_gnu_tar
def test_sparse_member_within_limits_keeps_its_content(tmp_path, repo):
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as handle:
        handle.truncate(8 << 20)
        handle.seek(3 << 20)
        handle.write(b"middle")
    archive = subprocess.run([GNU_TAR, "--format=pax", "--sparse", "-C", str(src), "-cf", "-", "sparse"],
                             check=True, capture_output=True).stdout
    files = content(repo, archive)
    assert files[b"sparse"] == (src / "sparse").read_bytes()


# -- specials carry their class, not a CLI hint ---------------------------------------------

def test_special_member_is_a_special_file_error_without_a_cli_hint(repo):
    info = tarfile.TarInfo("dev/null")
    info.type = tarfile.CHRTYPE
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as archive:
        archive.addfile(info)
    with pytest.raises(SpecialFile) as caught:
        commit(repo, buf.getvalue())
    assert caught.value.path == "dev/null" and "--" not in str(caught.value)


def test_member_names_are_shown_escaped_once(repo):
    name = "evil\n\udcffsealtree: verified ok"
    data = plain_tar(("/" + name, b"x"))
    err = refused(repo, data, "absolute path refused")
    assert str(err) == "/evil\\x0a\\xffsealtree: verified ok: absolute path refused"
