"""log, show, ls, cat, diff: reading history and trees."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from store.diff import Change, diff_trees
from store.errors import ObjectMissing, SealtreeError
from store.history import log
from store.ids import RawId, to_hex
from store.model import Entry, Kind
from store.names import show
from store.walk import require, walk

from ..output import json_path, json_text, print_json
from .common import add_parser, commit_json, commit_text, open_repo, positive_int


def register(sub: Any) -> None:
    p = add_parser(sub, "log", "show the history of a revision",
                   "Show REV's commit and its ancestors, newest first.  History imported\n"
                   "from a pack may stop at a commit whose parent is not in the repository.")
    p.add_argument("rev", metavar="REV")
    p.add_argument("-n", "--max-count", type=positive_int, default=None, metavar="N",
                   help="show at most N commits")
    p.add_argument("--json", action="store_true", help="print a JSON list of commits")
    p.set_defaults(func=cmd_log)

    p = add_parser(sub, "show", "show one commit",
                   "Show REV's commit: id, parent, date, version, metadata, root tree, subject, body.")
    p.add_argument("rev", metavar="REV")
    p.add_argument("--json", action="store_true", help="print the commit as a JSON object")
    p.set_defaults(func=cmd_show)

    p = add_parser(sub, "ls", "list a directory of a revision's tree",
                   "List PATH (default /) in REV's tree, ostree-style: type and mode, uid,\n"
                   "gid, size, path, and `-> target` for symlinks.",
                   "example:\n  sealtree ls -R main /etc")
    p.add_argument("rev", metavar="REV")
    p.add_argument("path", metavar="PATH", nargs="?", default="/")
    p.add_argument("-R", "--recursive", action="store_true", help="list subdirectories too")
    p.add_argument("-C", "--checksum", action="store_true",
                   help="show each file's fs-verity digest and each directory's tree id")
    p.add_argument("-X", "--xattrs", action="store_true", help="show xattrs")
    p.add_argument("--json", action="store_true", help="print a JSON list of entries")
    p.set_defaults(func=cmd_ls)

    p = add_parser(sub, "cat", "print a file of a revision's tree",
                   "Write the content of the regular file PATH in REV's tree to standard output.")
    p.add_argument("rev", metavar="REV")
    p.add_argument("path", metavar="PATH")
    p.set_defaults(func=cmd_cat)

    p = add_parser(sub, "diff", "list the paths that differ between two revisions",
                   "Compare the trees of revisions A and B.  Each line is a status (A added,\n"
                   "D deleted, M modified) and a path; -v adds what changed (content, type,\n"
                   "mode, owner, xattrs, target).  Equal subtrees are skipped unread.")
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    p.add_argument("-v", "--verbose", action="store_true", help="say what changed in each M")
    p.add_argument("--json", action="store_true", help="print a JSON list of changes")
    p.set_defaults(func=cmd_diff)


def cmd_log(args: argparse.Namespace) -> None:
    repo = open_repo(args)
    commits = list(log(repo, repo.resolve(args.rev), args.max_count))
    if args.json:
        print_json([commit_json(cid, c) for cid, c in commits])
        return
    print("\n\n".join(commit_text(cid, c) for cid, c in commits))


def cmd_show(args: argparse.Namespace) -> None:
    repo = open_repo(args)
    commit_id, commit = repo.commit_of(args.rev)
    if args.json:
        print_json(commit_json(commit_id, commit))
        return
    print(commit_text(commit_id, commit))
    print(f"\nRoot:    {to_hex(commit.root_tree)}")


def _tree_path(text: str) -> bytes:
    return os.fsencode(text).strip(b"/")


def _entry_json(path: bytes, entry: Entry) -> dict[str, Any]:
    out: dict[str, Any] = {**json_path(b"/" + path), "type": entry.kind.name.lower(),
                           "mode": entry.meta.mode, "uid": entry.meta.uid, "gid": entry.meta.gid}
    if entry.kind is Kind.FILE:
        out.update(size=entry.size, digest="sha256:" + to_hex(entry.digest))
    elif entry.kind is Kind.DIR:
        out["tree"] = to_hex(entry.tree)
    else:
        out["target"] = json_text(entry.target)
    if entry.meta.xattrs:
        out["xattrs"] = {json_text(k): v.hex() for k, v in entry.meta.xattrs}
    return out


def _entry_line(path: bytes, entry: Entry, args: argparse.Namespace) -> str:
    letter = {Kind.FILE: "-", Kind.DIR: "d", Kind.SYMLINK: "l"}[entry.kind]
    line = f"{letter}{entry.meta.mode:05o} {entry.meta.uid} {entry.meta.gid} {entry.size:>10} "
    if args.checksum:
        ident = entry.digest if entry.kind is Kind.FILE else entry.tree if entry.kind is Kind.DIR else b""
        line += f"{ident.hex():64} "
    line += show(b"/" + path)
    if entry.kind is Kind.SYMLINK:
        line += " -> " + show(entry.target)
    if args.xattrs and entry.meta.xattrs:
        line += " {" + ", ".join(f"{show(k)}={v!r}" for k, v in entry.meta.xattrs) + "}"
    return line


def cmd_ls(args: argparse.Namespace) -> None:
    repo = open_repo(args)
    _commit_id, commit = repo.commit_of(args.rev)
    path = _tree_path(args.path)
    if path:
        entry = require(repo.objects, commit.root_tree, path, args.path)
        listing = [(path, entry)]
        if entry.kind is Kind.DIR:
            listing = _children(repo, entry.tree, path + b"/", args.recursive)
    else:
        listing = _children(repo, commit.root_tree, b"", args.recursive)
    if args.json:
        print_json([_entry_json(p, e) for p, e in listing])
        return
    for p, e in listing:
        print(_entry_line(p, e, args))


def _children(repo: Any, tree: RawId, prefix: bytes, recursive: bool) -> list[tuple[bytes, Entry]]:
    if recursive:
        return list(walk(repo.objects, tree, prefix))
    return [(prefix + e.name, e) for e in repo.objects.read_tree(tree)]


def cmd_cat(args: argparse.Namespace) -> None:
    repo = open_repo(args)
    _commit_id, commit = repo.commit_of(args.rev)
    path = _tree_path(args.path)
    if not path:
        raise SealtreeError("is a directory", path=args.path)
    entry = require(repo.objects, commit.root_tree, path, args.path)
    if entry.kind is Kind.DIR:
        raise SealtreeError("is a directory", path=args.path)
    if entry.kind is not Kind.FILE:
        raise SealtreeError(f"is a {entry.kind.name.lower()}, not a regular file", path=args.path)
    source = repo.objects.file_path(entry.digest, entry.meta)
    try:
        handle = open(source, "rb")
    except FileNotFoundError:
        bundled = repo.objects.bundled_file(entry.digest, entry.meta)  # checked as it is read
        if bundled is None:
            raise ObjectMissing(f"object {to_hex(entry.digest)} is missing", object_id=to_hex(entry.digest),
                                path=args.path, file=source) from None
        sys.stdout.buffer.write(bundled)
        sys.stdout.buffer.flush()
        return
    with handle:
        while chunk := handle.read(1 << 20):
            sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()


def cmd_diff(args: argparse.Namespace) -> None:
    repo = open_repo(args)
    _a, old = repo.commit_of(args.a)
    _b, new = repo.commit_of(args.b)
    changes = list(diff_trees(repo.objects, old.root_tree, new.root_tree))
    if old.root_meta != new.root_meta:
        root = Entry(b"", Kind.DIR, old.root_meta, tree=old.root_tree)
        changes.insert(0, Change("M", b"", root, Entry(b"", Kind.DIR, new.root_meta, tree=new.root_tree)))
    if args.json:
        print_json([{"status": c.status, **json_path(b"/" + c.path), "changed": c.what()} for c in changes])
        return
    for change in changes:
        extra = f"  ({', '.join(change.what())})" if args.verbose and change.status == "M" else ""
        print(f"{change.status}    {show(b'/' + change.path)}{extra}")
