"""checkout: materialise a revision's tree in a directory."""

from __future__ import annotations

import argparse
from typing import Any

from store.checkout import checkout
from store.errors import UsageError

from .common import add_parser, open_repo


def register(sub: Any) -> None:
    p = add_parser(
        sub, "checkout", "write a revision's tree into a new directory",
        "Create DEST (which must not exist) holding REV's tree.  By default files are\n"
        "hardlinks into the repository (DEST must be on the same filesystem): each file\n"
        "then has exactly the stored object's mode, owner and xattrs, and must not be\n"
        "modified in place.  --copy makes independent files.  The tree is built beside\n"
        "DEST and renamed into place, so DEST never holds half a checkout.",
        "example:\n  sealtree --repo R checkout os/main /srv/roots/v42")
    p.add_argument("rev", metavar="REV")
    p.add_argument("dest", metavar="DEST")
    p.add_argument("--copy", action="store_true", help="copy files instead of hardlinking")
    p.set_defaults(func=cmd_checkout)


def cmd_checkout(args: argparse.Namespace) -> None:
    if not args.dest:
        raise UsageError("DEST is an empty path; give the name of a directory to create")
    repo = open_repo(args)
    _commit_id, commit = repo.commit_of(args.rev)
    stats = checkout(repo.objects, commit.root_tree, commit.root_meta, args.dest, copy=args.copy)
    print(f"checked out {stats.files} files, {stats.dirs} directories, {stats.symlinks} symlinks "
          f"into {args.dest}")
