"""What every command shares: opening the repository, parsing numbers, describing commits."""

from __future__ import annotations

import argparse
from typing import Any

from store.commits import Commit
from store.errors import UsageError
from store.ids import RawId, to_hex
from store.repo import Repository

from ..cli_format import Formatter


def add_parser(sub: Any, name: str, summary: str, description: str, epilog: str = ""
               ) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, description=description, epilog=epilog, formatter_class=Formatter)
    # As ostree takes it: `sealtree refs --repo R` as well as `sealtree --repo R refs`.  No
    # default here, so that a --repo (or $SEALTREE_REPO) before the command is kept.
    parser.add_argument("--repo", metavar="PATH", default=argparse.SUPPRESS,
                        help="the repository (the same as --repo before the command)")
    return parser


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


_SIZE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def size_bytes(text: str) -> int:
    """argparse type: a size in bytes, with an optional K, M, G or T suffix (powers of 1024)."""
    number, suffix = (text[:-1], text[-1].upper()) if text[-1:].isalpha() else (text, "")
    if suffix not in _SIZE_SUFFIXES or not number.isdigit():
        raise argparse.ArgumentTypeError(f"not a size (digits with an optional K, M, G or T): {text!r}")
    return int(number) * _SIZE_SUFFIXES[suffix]


def open_repo(args: argparse.Namespace) -> Repository:
    if not args.repo:
        raise UsageError("no repository: give --repo PATH or set SEALTREE_REPO")
    return Repository.open(args.repo)


def iso_time(timestamp: int) -> str:
    """``timestamp`` as ``YYYY-MM-DDTHH:MM:SSZ``; as the plain number when no date can show it
    (outside years 1 to 9999: old repositories and hand-edited state files may hold such)."""
    import datetime  # noqa: PLC0415 - only commands that show dates need it

    try:
        import datetime  # noqa: PLC0415 - only where a time is shown

        moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    except (ValueError, OverflowError, OSError):
        return str(timestamp)
    return moment.replace(tzinfo=None).isoformat() + "Z"  # strftime's %Y drops year 1's zeros


def commit_json(commit_id: RawId, commit: Commit) -> dict[str, Any]:
    return {
        "id": to_hex(commit_id),
        "parent": to_hex(commit.parent) if commit.parent else None,
        "root_tree": to_hex(commit.root_tree),
        "timestamp": commit.timestamp,
        "date": iso_time(commit.timestamp),
        "subject": commit.subject,
        "body": commit.body,
        "version": commit.version,
        "metadata": dict(commit.metadata),
    }


def commit_text(commit_id: RawId, commit: Commit) -> str:
    lines = [f"commit {to_hex(commit_id)}"]
    if commit.parent:
        lines.append(f"Parent:  {to_hex(commit.parent)}")
    lines.append(f"Date:    {iso_time(commit.timestamp)}")
    if commit.version:
        lines.append(f"Version: {commit.version}")
    for key, value in commit.metadata:
        lines.append(f"{key}: {value}")
    lines.append("")
    lines.append(f"    {commit.subject}" if commit.subject else "    (no subject)")
    if commit.body:
        lines.append("")
        lines.extend(f"    {line}" for line in commit.body.splitlines())
    return "\n".join(lines)


def parse_owner(text: str) -> tuple[int, int]:
    try:
        uid, gid = (int(x) for x in text.split(":"))
    except ValueError:
        raise UsageError(f"--owner wants UID:GID (numbers), got {text!r}") from None
    return uid, gid
