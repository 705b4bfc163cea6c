"""digest: fs-verity digests of files, computed in userspace."""

from __future__ import annotations

import argparse
from typing import Any

from store.errors import SourceError, UsageError
from store.fsverity import ALGORITHMS, VerityParams, digest_file
from store.names import show

from .common import add_parser


def register(sub: Any) -> None:
    p = add_parser(sub, "digest", "print the fs-verity digest of files",
                   "Compute each FILE's fs-verity digest in userspace and print it as\n"
                   "`fsverity digest` does: `sha256:<hex> FILE`.  Needs no kernel support.",
                   "example:\n  sealtree digest /usr/bin/bash")
    p.add_argument("files", metavar="FILE", nargs="+")
    p.add_argument("--hash-alg", choices=sorted(ALGORITHMS), default="sha256",
                   help="hash algorithm (default sha256)")
    p.add_argument("--block-size", type=int, default=4096, help="Merkle tree block size (default 4096)")
    p.add_argument("--salt", default="", metavar="HEX", help="salt, in hex (default none)")
    p.set_defaults(func=cmd_digest)


def cmd_digest(args: argparse.Namespace) -> None:
    try:
        salt = bytes.fromhex(args.salt)
    except ValueError:
        raise UsageError(f"--salt is not hex: {args.salt!r}") from None
    params = VerityParams(ALGORITHMS[args.hash_alg], args.block_size, salt)
    for name in args.files:
        try:
            digest = digest_file(name, params, parallel=True)
        except IsADirectoryError:
            raise SourceError("is a directory", path=name) from None
        except OSError as err:
            raise SourceError(f"{err.strerror}", path=name) from err
        print(f"{args.hash_alg}:{digest.hex()} {show(name)}")
