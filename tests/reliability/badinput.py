"""Bad tar streams into ``commit --tar``: the sample tree as tar, gzip, xz and zstd, then
bit flips, truncations, zeroed checksums, appended junk.  Checked: no traceback,
documented exit statuses, a clean error line for every refusal, and (counted, not failed)
streams accepted although the compression format's own check (gzip -t / xz -t / zstd -t)
says they are corrupt."""

from __future__ import annotations

import gzip
import lzma
import os
import random
import subprocess
from dataclasses import dataclass, field

import zstandard

from .cli import DOCUMENTED_EXITS, Cli
from .env import Env, copy_tree


@dataclass
class BadInputStats:
    tried: int = 0
    refused: int = 0
    accepted: int = 0
    accepted_corrupt_stream: int = 0
    accepted_trailing_junk: int = 0
    crashes: int = 0
    unclean: int = 0
    failures: list[str] = field(default_factory=list)


def _streams(src: str) -> dict[str, bytes]:
    raw = subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "-C", src, "-cf", "-", "."],
                         check=True, capture_output=True).stdout
    return {"tar": raw, "gz": gzip.compress(raw, mtime=0), "xz": lzma.compress(raw),
            "zst": zstandard.ZstdCompressor(write_checksum=True).compress(raw)}


def _tool_says_corrupt(kind: str, path: str) -> bool:
    tool = {"gz": ["gzip", "-t"], "xz": ["xz", "-t"], "zst": ["zstd", "-t", "-q"]}.get(kind)
    if tool is None:
        return False
    try:
        return subprocess.run([*tool, path], capture_output=True).returncode != 0
    except FileNotFoundError:
        return False


def run_bad_inputs(env: Env, work: str, *, cases: int, seed: int) -> BadInputStats:
    stats = BadInputStats()
    os.makedirs(work, exist_ok=True)
    repo = os.path.join(work, "repo")
    copy_tree(env.template, repo)
    streams = _streams(os.path.join(env.base, "src"))
    cli = Cli(repo)
    for index in range(cases):
        rng = random.Random(f"{seed}:tar:{index}")
        kind = rng.choice(list(streams))
        data = bytearray(streams[kind])
        how = rng.randrange(5)
        if how == 0:
            for _ in range(rng.choice([1, 1, 3])):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif how == 1:
            del data[rng.randrange(1, len(data)):]
        elif how == 2:  # zero the last 8 bytes (gzip CRC+ISIZE, xz footer, zstd checksum)
            data[-8:] = bytes(8)
        elif how == 3:
            data += rng.randbytes(rng.choice([1, 100, 600]))
        else:  # a header field of the first tar member changed, then recompressed
            raw = bytearray(streams["tar"])
            at = rng.choice([124, 100, 108, 116, 148, 156, 345])  # size, mode, uid, gid, chksum, type, prefix
            raw[at:at + 8] = rng.choice([b"-0000001", b"abcdefg\0", b"77777777", b"\0" * 8, b"1e3\0\0\0\0\0"])
            data = bytearray(raw)
            kind = "tar"
        path = os.path.join(work, f"case-{index}.{kind}")
        with open(path, "wb") as handle:
            handle.write(data)
        result = cli("commit", "-b", f"bad/{index}", "--timestamp", "1700000000", "--tar", path)
        stats.tried += 1
        if result.traceback:
            stats.crashes += 1
            stats.failures.append(f"tar case {index} ({kind}, mutation {how}): {result.describe()}")
        elif result.code not in DOCUMENTED_EXITS or (result.code and not result.clean_error()):
            stats.unclean += 1
            stats.failures.append(f"tar case {index} ({kind}, mutation {how}): unclean: {result.describe()}")
        elif result.code:
            stats.refused += 1
        else:
            stats.accepted += 1
            if how == 3:  # junk after the stream: GNU tar ignores it for gzip, so counted apart
                stats.accepted_trailing_junk += 1
            elif _tool_says_corrupt(kind, path):
                stats.accepted_corrupt_stream += 1
                stats.failures.append(f"tar case {index} ({kind}, mutation {how}): a corrupt "
                                      f"{kind} stream was committed (exit 0)")
        os.unlink(path)
    return stats
