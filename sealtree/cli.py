"""The ``sealtree`` command: argument parsing and the one place errors become exit codes."""

from __future__ import annotations

import argparse
import errno
import io
import os
import sys
from collections.abc import Sequence

from remote.errors import IndexExpired
from store.errors import (
    CrossDevice,
    DowngradeError,
    NoKeyring,
    NotARepository,
    PackNotKept,
    SealtreeError,
    SpecialFile,
)
from store.names import show

from .cli_format import Formatter
from .commands import command_modules
from .output import json_error

DESCRIPTION = """\
sealtree keeps operating-system trees in a content-addressed store, like
ostree: files are addressed by their fs-verity digest, trees and commits by
the SHA-256 of canonical encodings.  Signed packs carry a whole tree under one
vendor signature; deployments join the pack, unpacked into a tmpfs, with
hardlinked large objects in a read-only overlayfs.
"""

EPILOG = """\
environment:
  SEALTREE_REPO       repository used when --repo is not given
  SOURCE_DATE_EPOCH   commit timestamp when --timestamp is not given

exit status:
  0 success; 1 other error; 2 usage; 3 repository; 4 ref; 5 missing object;
  6 corrupt object; 7 format; 8 source tree; 9-10 fs-verity; 11 pack;
  12 signature; 13 downgrade; 14 deploy; 15 verification; 16 mount;
  17 remote (a server or mirror); 18 image; 130 interrupted.  `sealtree COMMAND --help`
  describes each command.
"""

# What to do about an error, in the CLI's own terms: library layers raise a class and never
# name a command-line option; the hint is printed on a line of its own after the error.
HINTS: dict[type[SealtreeError], str] = {
    SpecialFile: "use --skip-special to leave devices, FIFOs and sockets out",
    CrossDevice: "use --copy to copy the files instead of hardlinking them",
    NotARepository: "create one with 'sealtree --repo PATH init'",
    PackNotKept: "import a signed pack of it first (sealtree pack import PACK --keys DIR)",
    DowngradeError: "use --allow-downgrade to accept it anyway",
    NoKeyring: "name the trusted keys with --keys DIR",
    IndexExpired: "use --allow-expired to accept it anyway (the index may be frozen by an attacker)",
}


def hint_for(err: SealtreeError) -> str | None:
    """The hint for ``err``'s class, or for the nearest class it derives from that has one."""
    return next((HINTS[cls] for cls in type(err).__mro__ if cls in HINTS), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command``, only that command's (see ``commands.COMMANDS``)."""
    parser = argparse.ArgumentParser(prog="sealtree", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=Formatter)
    parser.add_argument("--repo", metavar="PATH", default=os.environ.get("SEALTREE_REPO"),
                        help="the repository (default: $SEALTREE_REPO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    sub.required = True
    for module in command_modules(command):
        module.register(sub)
    # A command that runs other command lines (demo) is given this function, rather than
    # importing this module: the commands stay below the CLI.
    parser.set_defaults(run_command=main)
    return parser


def command_word(argv: Sequence[str]) -> str | None:
    """The command named in ``argv`` (after the global options), or None before a --help."""
    words = iter(argv)
    for word in words:
        if word == "--repo":
            next(words, None)
        elif not word.startswith("-"):
            return word
        elif word in ("-h", "--help"):
            return None
    return None


def tolerant_output() -> None:
    """Let stdout and stderr show what their encoding cannot (a subject with "é" in an
    ASCII locale) as backslash escapes instead of failing with UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    tolerant_output()
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(command_word(argv))
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse gives a list positional (`publish DIR ... REF...`) only the words before
        # the first option; a command names such a list in `intermixed` to take the rest.
        spill = getattr(args, "intermixed", None)
        if spill is None or any(word.startswith("-") for word in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        setattr(args, spill, [*getattr(args, spill), *extra])
    try:
        result = args.func(args)
        return int(result or 0)
    except SealtreeError as err:
        return _failed(args, str(err), err.exit_code, hint_for(err))
    except KeyboardInterrupt:
        print("sealtree: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`sealtree log | head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as err:
        # An operating-system refusal on a path the user gave us: say which, no traceback.
        where = f"{show(err.filename)}: " if err.filename else ""
        return _failed(args, f"{where}{err.strerror or errno.errorcode.get(err.errno or 0, err)}", 1)


def _failed(args: argparse.Namespace, message: str, exit_status: int, hint: str | None = None) -> int:
    """Report an error (and what to do about it): on stderr, and with --json as a JSON
    document on stdout too."""
    print(f"sealtree: error: {message}", file=sys.stderr)
    if hint is not None:
        print(f"sealtree: hint: {hint}", file=sys.stderr)
    if getattr(args, "json", False):
        json_error(message, exit_status, hint)
    return exit_status
