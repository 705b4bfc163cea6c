"""fsck and prune: checking and cleaning the repository."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
from collections.abc import Iterator
from typing import Any

from store.atomic import process_gone
from store.errors import ObjectCorrupt, ObjectMissing
from store.fsck import fsck
from store.ids import RawId
from store.prune import prune
from store.remove import remove_tree
from store.repo import Repository

from ..output import Progress, human_size, print_json
from .common import add_parser, open_repo


def register(sub: Any) -> None:
    p = add_parser(
        sub, "fsck", "check every object and what every ref reaches",
        "Recompute the fs-verity digest of every file object and the SHA-256 of every\n"
        "tree and commit, check each file object's inode metadata (mode, owner, xattrs),\n"
        "check every bundle of objects whole and object by object,\n"
        "and check that every ref and deployment reaches only objects that are present.\n"
        "Each problem is reported with the object id and the path that uses it.\n"
        "Exit status 6 if anything is corrupt, 5 if only objects are missing.")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_fsck)

    p = add_parser(
        sub, "prune", "delete objects that no ref or deployment reaches",
        "Delete every object not reachable from a ref (with its history) or a deployment\n"
        "(and the EROFS images of their kept packs), and what killed operations left:\n"
        "staging directories, temporary files of atomic writes, copies of packs being\n"
        "imported.  A bundle of objects (written by a pack's import) is deleted when none\n"
        "of its objects is reachable, else kept whole.  Holds the repository exclusively.")
    p.add_argument("--dry-run", action="store_true", help="only count what would be deleted")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_prune)


def _deployment_roots(repo: Repository) -> list[tuple[str, RawId]]:
    """The commits that deployments use: fsck checks them and prune keeps them besides what
    refs reach (``store`` knows nothing of deployments; the overlay layer does)."""
    from overlay.deploy import deployment_roots  # noqa: PLC0415 - only when fsck or prune runs

    return list(deployment_roots(repo))


def cmd_fsck(args: argparse.Namespace) -> int:
    repo = open_repo(args)
    progress = Progress("fsck")
    report = fsck(repo, lambda done, total: progress.update(f"{done}/{total} objects"),
                  _deployment_roots(repo))
    progress.done()
    if args.json:
        print_json({"objects": report.objects, "bytes": report.bytes, "roots": report.refs,
                    "ok": not report.problems,
                    "problems": [vars(p) for p in report.problems]})
    else:
        for problem in report.problems:
            ident = f" {problem.object_id}" if problem.object_id else ""
            print(f"{problem.kind}{ident} at {problem.path}: {problem.message}")
        state = "ok" if not report.problems else f"{len(report.problems)} problems"
        print(f"checked {report.objects} objects ({human_size(report.bytes)}) and "
              f"{report.refs} roots: {state}")
    if any(p.kind in ("corrupt", "stray") for p in report.problems):
        return ObjectCorrupt.exit_code
    if report.problems:
        return ObjectMissing.exit_code
    return 0


def _remote_dirs(repo: Repository) -> Iterator[str]:
    """The directories the remote layer writes small files into atomically."""
    from remote.config import remotes_dir  # noqa: PLC0415 - only when prune runs

    top = remotes_dir(repo)
    if not os.path.isdir(top):
        return
    yield top
    for entry in os.scandir(top):
        if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
            yield entry.path


_REMOTE_TRASH = re.compile(r"\.trash-.+-(?P<pid>[0-9]+)")


def _remove_remote_trash(repo: Repository) -> int:
    """Remove what a killed ``remote remove`` left (``remotes/.trash-NAME-PID``)."""
    from remote.config import remotes_dir  # noqa: PLC0415 - only when prune runs

    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(remotes_dir(repo)):
            match = _REMOTE_TRASH.fullmatch(entry.name)
            if match and entry.is_dir(follow_symlinks=False) and process_gone(int(match["pid"])):
                remove_tree(entry.path)
                removed += 1
    return removed


def cmd_prune(args: argparse.Namespace) -> None:
    from pack.importer import clean_incoming, kept_images  # noqa: PLC0415 - only when prune runs

    repo = open_repo(args)
    report = prune(repo, lambda: [commit for _label, commit in _deployment_roots(repo)],
                   dry_run=args.dry_run, temporary_dirs=list(_remote_dirs(repo)),
                   images=lambda commits: kept_images(repo, commits))
    if not args.dry_run:
        report.leftovers += clean_incoming(repo) + _remove_remote_trash(repo)
    if args.json:
        print_json(vars(report) | {"dry_run": args.dry_run})
        return
    verb = "would delete" if args.dry_run else "deleted"
    leftovers = f"; removed {report.leftovers} leftover files" if report.leftovers else ""
    bundles = ""
    if report.bundles_removed or report.bundles_kept:
        bundles = (f"; bundles: {verb} {report.bundles_removed}, kept {report.bundles_kept} "
                   "(a bundle with any reachable object is kept whole)")
    print(f"{verb} {report.removed} objects ({human_size(report.freed)}), kept {report.kept}"
          f"{bundles}{leftovers}")
