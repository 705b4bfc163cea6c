"""commit --tar / --git: sources other than a directory, plugged into commit's SOURCE_ADAPTERS."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from store.errors import UsageError
from store.ids import RawId
from store.model import Meta
from store.transaction import Transaction

from ..output import show_path
from . import commit_cmd
from .common import parse_owner

Report = Callable[[int, int], None]


def add_args(parser: argparse.ArgumentParser) -> None:
    """--tar FILE|-, --git REPO [--rev REV]"""
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


def applies(args: argparse.Namespace) -> bool:
    return any(getattr(args, name, None) is not None for name in ("tar", "git", "rev", "owner"))


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
        print(f"sealtree: skipped {show_path(path)}: {why}", file=sys.stderr)


def read(args: argparse.Namespace, tx: Transaction, report: Report
         ) -> tuple[RawId, Meta, list[tuple[str, str]]]:
    """Store the tree of --tar or --git; return (root tree, root metadata, commit metadata)."""
    from store.source_git import GitSourceOptions, read_git
    from store.source_tar import TarSourceOptions, read_tar
    if args.source:
        raise UsageError(f"give one source: DIR ({args.source}) or --tar/--git, not both")
    owner = parse_owner(args.owner) if args.owner is not None else None
    if args.tar is not None:
        if args.rev is not None:
            raise UsageError("--rev goes with --git, not --tar")
        label = "standard input" if args.tar == "-" else args.tar
        with _open_input(args.tar) as stream:
            tar = read_tar(tx, stream, TarSourceOptions(owner, args.skip_special, report, label=label))
        _report_skipped(tar.skipped)
        return tar.tree, tar.root_meta, [("tar.sha256", tar.sha256)]
    if args.git is not None:
        rev = args.rev if args.rev is not None else "HEAD"
        git = read_git(tx, args.git, rev, GitSourceOptions(owner or (0, 0), args.skip_special, report))
        _report_skipped(git.skipped)
        return git.tree, git.root_meta, [("git.commit", git.commit)] if git.commit else []
    if args.rev is not None:
        raise UsageError("--rev goes with --git")
    raise UsageError("--owner goes with --git or --tar")


def _register() -> None:
    if not any(adapter[0] is add_args for adapter in commit_cmd.SOURCE_ADAPTERS):
        commit_cmd.SOURCE_ADAPTERS.append((add_args, applies, read))


_register()


def register(sub: Any) -> None:
    """Nothing of its own: the options are added to ``commit`` when this module is imported."""
