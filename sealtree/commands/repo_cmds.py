"""init, refs, rev-parse: the repository and its refs."""

from __future__ import annotations

import argparse
from typing import Any

from store.errors import RefError, UsageError
from store.ids import to_hex
from store.names import show
from store.repo import Repository

from ..output import print_json
from .common import add_parser, open_repo


def register(sub: Any) -> None:
    p = add_parser(sub, "init", "create an empty repository",
                   "Create an empty repository at --repo (the directory may exist but must be empty).",
                   "example:\n  sealtree --repo /srv/repo init")
    p.set_defaults(func=cmd_init)

    p = add_parser(sub, "refs", "list refs and the commits they point at",
                   "List every ref with the commit it points at, sorted by name.  With --delete,\n"
                   "delete refs instead: their commits and objects stay until 'prune' (which\n"
                   "keeps whatever another ref or a deployment still needs).",
                   "examples:\n  sealtree --repo R refs\n  sealtree --repo R refs --delete os/old")
    p.add_argument("--json", action="store_true", help="print a JSON object {ref: commit id}")
    p.add_argument("--delete", metavar="REF", action="append", default=[],
                   help="delete REF (repeatable); an unknown ref is an error")
    p.set_defaults(func=cmd_refs)

    p = add_parser(sub, "rev-parse", "print the commit id a revision names",
                   "Resolve REV to a commit id.  REV is a ref name, a commit id, a unique\n"
                   "prefix of one (4 hex digits or more), each optionally followed by ^ (parent)\n"
                   "or ~N (N-th ancestor).",
                   "examples:\n  sealtree rev-parse main\n  sealtree rev-parse main^^\n"
                   "  sealtree rev-parse 6c16a3~1")
    p.add_argument("rev", metavar="REV")
    p.set_defaults(func=cmd_rev_parse)


def cmd_init(args: argparse.Namespace) -> None:
    if not args.repo:
        raise UsageError("no repository: give --repo PATH or set SEALTREE_REPO")
    repo = Repository.init(args.repo)
    print(f"initialised empty sealtree repository in {show(repo.path)}")


def cmd_refs(args: argparse.Namespace) -> None:
    if args.delete:
        _delete_refs(open_repo(args), args.delete, as_json=args.json)
        return
    refs = open_repo(args).refs.list()
    if args.json:
        print_json({name: to_hex(commit) for name, commit in refs.items()})
        return
    for name, commit in refs.items():
        print(f"{to_hex(commit)} {name}")


def cmd_rev_parse(args: argparse.Namespace) -> None:
    print(to_hex(open_repo(args).resolve(args.rev)))


def _delete_refs(repo: Repository, names: list[str], *, as_json: bool) -> None:
    """Delete each ref (compare-and-swap on the value read: a concurrent update wins)."""
    deleted = {}
    for name in names:
        current = repo.refs.read(name)
        if current is None:
            raise RefError("no such ref", path=name)
        repo.refs.update(name, None, current)
        deleted[name] = to_hex(current)
        if not as_json:
            print(f"deleted ref {name} (was {to_hex(current)})")
    if as_json:
        print_json({"deleted": deleted})
