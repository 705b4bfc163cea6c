"""What ``commit`` reads a tree from: a directory, a tar stream (--tar) or a git revision (--git)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import BinaryIO

from store.errors import UsageError
from store.ids import RawId
from store.model import Meta
from store.names import show
from store.record import Frozen
from store.transaction import Transaction

from .common import parse_owner, size_bytes

Report = Callable[[int, int], None]

SOURCES_HELP = "DIR, --tar FILE|-, --git REPO [--rev REV]"


class StoredSource(Frozen):
    """A source's tree in the repository: its root tree, the root's metadata, and what the
    commit records about where it came from (``tar.sha256``, ``git.commit``)."""

    __slots__ = ("tree", "root_meta", "metadata")
    _fields = __slots__
    tree: RawId
    root_meta: Meta
    metadata: tuple[tuple[str, str], ...]

    def __init__(self, tree: RawId, root_meta: Meta, metadata: tuple[tuple[str, str], ...] = ()
                 ) -> None:
        object.__setattr__(self, "tree", tree)
        object.__setattr__(self, "root_meta", root_meta)
        object.__setattr__(self, "metadata", metadata)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """DIR, and the options naming another source: --tar, --git, --rev, --owner."""
    parser.add_argument("source", metavar="DIR", nargs="?", help="the directory to commit")
    group = parser.add_argument_group(
        "other sources",
        "Instead of DIR: a tar stream (plain, gzip, xz or zstd; ustar, GNU or PAX with\n"
        "xattrs in SCHILY.xattr records) or the tree of a git revision, read without a\n"
        "checkout.  Unsafe tar members (absolute, '..', below a symlink, given twice)\n"
        "are refused with the member named.  A git tree is stored as a checkout with\n"
        "umask 022 owned by --owner would be: files 0644/0755, symlinks, dirs 0755;\n"
        "the commit records git.commit=<id>.  A tar commit records tar.sha256=<digest\n"
        "of the input>.")
    source = group.add_mutually_exclusive_group()
    source.add_argument("--tar", metavar="FILE", help="commit the tree in tar archive FILE ('-': stdin)")
    source.add_argument("--git", metavar="REPO", help="commit the tree of a revision of git repository REPO")
    group.add_argument("--rev", metavar="REV", help="the git revision (with --git; default HEAD)")
    group.add_argument("--owner", metavar="UID:GID",
                       help="owner of every entry (--git: default 0:0; --tar: default the "
                            "members' numeric owners, and 0:0 for directories not in the archive)")
    group.add_argument("--max-file-size", metavar="SIZE", type=size_bytes, default=None,
                       help="with --tar: refuse a member larger than SIZE bytes (K, M, G, T "
                            "suffixes), from its header, before its data is read; for "
                            "archives from untrusted sources (default: no limit)")
    group.add_argument("--max-total-size", metavar="SIZE", type=size_bytes, default=None,
                       help="with --tar: refuse the archive once its files add up to more than "
                            "SIZE bytes (default: no limit)")
    group.add_argument("--git-attributes", action="store_true",
                       help="with --git: apply the revision's .gitattributes as `git archive` "
                            "does (export-ignore paths left out, line endings converted; "
                            "export-subst is not applied); default: the blobs as committed")


def store_source(args: argparse.Namespace, tx: Transaction, report: Report) -> StoredSource:
    """Store the tree of the one source the command line names."""
    if args.tar is None and args.git is None:
        if args.rev is not None:
            raise UsageError("--rev goes with --git")
        if args.owner is not None:
            raise UsageError("--owner goes with --git or --tar")
        if args.git_attributes:
            raise UsageError("--git-attributes goes with --git")
        if args.max_file_size is not None or args.max_total_size is not None:
            raise UsageError("--max-file-size and --max-total-size go with --tar")
        if not args.source:
            raise UsageError(f"commit needs a source: {SOURCES_HELP}")
        return _store_directory(args, tx, report)
    if args.source:
        raise UsageError(f"give one source: DIR ({show(args.source)}) or --tar/--git, not both")
    owner = parse_owner(args.owner) if args.owner is not None else None
    if args.tar is not None:
        if args.rev is not None or args.git_attributes:
            raise UsageError("--rev and --git-attributes go with --git, not --tar")
        return _store_tar(args, owner, tx, report)
    if args.max_file_size is not None or args.max_total_size is not None:
        raise UsageError("--max-file-size and --max-total-size go with --tar, not --git")
    return _store_git(args, owner, tx, report)


def _store_directory(args: argparse.Namespace, tx: Transaction, report: Report) -> StoredSource:
    # Here, not at start-up: what it imports (mmap, the forked workers) no other command needs.
    from store.source_dir import DirSourceOptions, read_directory  # noqa: PLC0415

    tree, root_meta = read_directory(tx, args.source, DirSourceOptions(args.skip_special, report))
    return StoredSource(tree, root_meta)


def _store_tar(args: argparse.Namespace, owner: tuple[int, int] | None, tx: Transaction,
               report: Report) -> StoredSource:
    from store.source_tar import TarSourceOptions, read_tar  # noqa: PLC0415

    label = "standard input" if args.tar == "-" else args.tar
    with _open_input(args.tar) as stream:
        tar = read_tar(tx, stream, TarSourceOptions(owner, args.skip_special, report, label=label,
                                                    max_file_size=args.max_file_size,
                                                    max_total_size=args.max_total_size))
    _report_skipped(tar.skipped)
    return StoredSource(tar.tree, tar.root_meta, (("tar.sha256", tar.sha256),))


def _store_git(args: argparse.Namespace, owner: tuple[int, int] | None, tx: Transaction,
               report: Report) -> StoredSource:
    from store.source_git import GitSourceOptions, read_git  # noqa: PLC0415

    rev = args.rev if args.rev is not None else "HEAD"
    git = read_git(tx, args.git, rev, GitSourceOptions(owner or (0, 0), args.skip_special, report,
                                                       attributes=args.git_attributes))
    _report_skipped(git.skipped)
    return StoredSource(git.tree, git.root_meta, (("git.commit", git.commit),) if git.commit else ())


READ_AHEAD_BYTES = 64 << 20


def read_ahead_source(args: argparse.Namespace) -> None:
    """Ask the kernel to start reading a --tar FILE now (its first READ_AHEAD_BYTES), so
    that on a cold cache the disk works while the rest of the command loads; only a hint:
    the file is opened again, and any error reported, when it is read."""
    if args.tar in (None, "-"):
        return
    try:
        fd = os.open(args.tar, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, READ_AHEAD_BYTES, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _open_input(name: str) -> Iterator[BinaryIO]:
    if name == "-":
        if sys.stdin.isatty():
            raise UsageError("--tar -: standard input is a terminal, not a tar stream")
        yield sys.stdin.buffer
        return
    with open(name, "rb") as handle:
        yield handle


def _report_skipped(skipped: list[tuple[bytes, str]]) -> None:
    for path, why in skipped:
        print(f"sealtree: skipped {show(path)}: {why}", file=sys.stderr)
