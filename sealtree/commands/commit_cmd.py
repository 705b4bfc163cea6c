"""commit: record a directory tree on a branch."""

from __future__ import annotations

import argparse
from typing import Any

from store.commit_fields import check_text, requested_timestamp
from store.errors import UsageError
from store.history import finish_commit
from store.ids import to_hex
from store.refs import check_ref_name

from ..output import Progress, human_size, print_json
from .commit_sources import add_arguments, read_ahead_source, store_source
from .common import add_parser, open_repo


def register(sub: Any) -> None:
    p = add_parser(
        sub, "commit", "record a tree as a new commit on a branch",
        "Store every file, directory and symlink under DIR (with mode, owner and all\n"
        "xattrs; mtimes are not part of a tree) and record a commit on BRANCH whose\n"
        "parent is the branch's current commit.  Files are addressed by their fs-verity\n"
        "digest.  Device nodes, fifos and sockets are refused unless --skip-special.\n"
        "The objects are synced to disk before the branch moves: a crash leaves the\n"
        "branch where it was.",
        "examples:\n  sealtree --repo R commit -b os/main -s 'nightly' --version 42 rootfs/\n"
        "  SOURCE_DATE_EPOCH=0 sealtree --repo R commit -b test tree/")
    p.add_argument("-b", "--branch", required=True, help="the branch (ref) to commit on")
    p.add_argument("-s", "--subject", default="", help="one-line subject")
    p.add_argument("--body", default="", help="longer description")
    p.add_argument("--version", dest="commit_version", default="", metavar="VERSION",
                   help="a version string recorded in the commit (packs compare these)")
    p.add_argument("--timestamp", type=int, default=None, metavar="SECONDS",
                   help="commit time in seconds since the epoch, years 1 to 9999 "
                        "(default: $SOURCE_DATE_EPOCH, else now)")
    p.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE",
                   help="extra commit metadata (repeatable)")
    p.add_argument("--skip-special", action="store_true",
                   help="skip device nodes, fifos and sockets instead of refusing them")
    p.add_argument("--json", action="store_true", help="print {commit, tree, files, bytes} as JSON")
    add_arguments(p)
    p.set_defaults(func=cmd_commit)


def _metadata(pairs: list[str]) -> tuple[tuple[str, str], ...]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--metadata wants KEY=VALUE, got {pair!r}")
        check_text("--metadata key", key)
        out[key] = check_text(f"--metadata value of {key!r}", value)
    return tuple(sorted(out.items()))


def _check_texts(args: argparse.Namespace) -> None:
    """Refuse a subject, body or version that is not valid UTF-8 (undecodable argument bytes)."""
    for option, value in (("--subject", args.subject), ("--body", args.body),
                          ("--version", args.commit_version)):
        check_text(option, value)


def cmd_commit(args: argparse.Namespace) -> None:
    read_ahead_source(args)
    check_ref_name(args.branch)
    _check_texts(args)
    metadata = list(_metadata(args.metadata))
    timestamp = requested_timestamp(args.timestamp, "--timestamp")
    repo = open_repo(args)
    repo.refs.check_free(args.branch)
    progress = Progress("commit")
    counts = {"files": 0, "bytes": 0}

    def report(files: int, size: int) -> None:
        counts.update(files=files, bytes=size)
        progress.update(f"{files} files, {human_size(size)}")

    with repo.writing() as tx:
        source = store_source(args, tx, report)
        metadata.extend(source.metadata)
        commit_id = finish_commit(repo, tx, args.branch, source.tree, source.root_meta, subject=args.subject,
                                  body=args.body, version=args.commit_version,
                                  timestamp=timestamp, metadata=tuple(sorted(dict(metadata).items())))
    progress.done()
    if args.json:
        print_json({"commit": to_hex(commit_id), "tree": to_hex(source.tree), **counts})
    else:
        print(to_hex(commit_id))
