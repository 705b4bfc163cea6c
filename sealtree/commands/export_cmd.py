"""export: write a revision's tree as a deterministic tar archive."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from store.atomic import atomic_file, check_destination
from store.errors import UsageError
from store.export_tar import DEFAULT_ZSTD_LEVEL, export_tar
from store.names import show

from .common import add_parser, open_repo


def register(sub: Any) -> None:
    p = add_parser(
        sub, "export", "write a revision's tree as a reproducible tar archive",
        "Write REV's tree as a POSIX pax tar archive that anyone can re-create byte for\n"
        "byte: the root first as ./, then every entry depth first in name-byte order,\n"
        "numeric owners only, every mtime set to the commit's timestamp, xattrs in\n"
        "SCHILY.xattr records, each file written in full (no hardlinks); a file with\n"
        "runs of zeros of 1 MiB or more is a PAX sparse 1.0 member (GNU tar's\n"
        "--sparse format), its runs holes, whatever its storage.  The same\n"
        "commit always gives the same bytes.  --zstd compresses single-threaded at a\n"
        "fixed level, which is as reproducible for one zstd version.  Each file is\n"
        "checked against its fs-verity digest on the way out.  With -o FILE the archive\n"
        "is written beside FILE and renamed into place, and its SHA-256 is printed as\n"
        "`sha256sum` does.",
        "examples:\n  sealtree --repo R export --tar os/main -o rootfs.tar\n"
        "  sealtree --repo R export --tar --zstd os/main -o - | ssh host 'zstd -d | tar x'")
    p.add_argument("--tar", action="store_true", help="tar format (the default and only format)")
    p.add_argument("--zstd", action="store_true", help="compress with zstd")
    p.add_argument("--zstd-level", type=int, default=DEFAULT_ZSTD_LEVEL, metavar="N",
                   help=f"zstd level, 1 to 19 (default {DEFAULT_ZSTD_LEVEL}); "
                        "the same level gives the same bytes")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the archive to write ('-': stdout)")
    p.add_argument("rev", metavar="REV")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> None:
    if not 1 <= args.zstd_level <= 19:
        raise UsageError(f"--zstd-level must be 1 to 19, got {args.zstd_level}")
    level = args.zstd_level if args.zstd else None
    if args.output != "-":
        check_destination(args.output, "-o")  # before the tree is read, not after
    repo = open_repo(args)
    _commit_id, commit = repo.commit_of(args.rev)
    if args.output == "-":
        if sys.stdout.isatty():
            raise UsageError("refusing to write an archive to a terminal; give -o FILE or redirect")
        sys.stdout.flush()
        export_tar(repo.objects, commit, sys.stdout.buffer, zstd_level=level)
        return
    with atomic_file(args.output, 0o644) as handle:
        stats = export_tar(repo.objects, commit, handle, zstd_level=level)
    print(f"{stats.sha256}  {show(args.output)}")
