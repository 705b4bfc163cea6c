"""keygen: make an Ed25519 signing key pair."""

from __future__ import annotations

import argparse
from typing import Any

from store.errors import UsageError
from store.names import show

from ..output import print_json
from .common import add_parser


def register(sub: Any) -> None:
    p = add_parser(
        sub, "keygen", "make an Ed25519 key pair for signing packs",
        "Write a new Ed25519 private key to KEYFILE (PEM PKCS#8, mode 0600) and its\n"
        "public key to KEYFILE.pub (PEM), and print the key id (the SHA-256 of the\n"
        "raw public key), which signatures and revocation lists name.  Existing files\n"
        "are never overwritten.  A verifier trusts the key once KEYFILE.pub is copied\n"
        "into its keyring directory (--keys DIR).",
        "example:\n  sealtree keygen vendor.key && cp vendor.key.pub /etc/sealtree/keys/")
    p.add_argument("keyfile", metavar="KEYFILE")
    p.add_argument("--json", action="store_true", help="print {key_id, private, public} as JSON")
    p.set_defaults(func=cmd_keygen)


def cmd_keygen(args: argparse.Namespace) -> None:
    from pack.keys import PUBLIC_SUFFIX, generate_key
    if not args.keyfile:
        raise UsageError("KEYFILE is an empty path; give a file name")
    kid = generate_key(args.keyfile)
    if args.json:
        print_json({"key_id": kid.hex(), "private": args.keyfile,
                    "public": args.keyfile + PUBLIC_SUFFIX})
        return
    print(f"key id {kid.hex()}")
    print(f"private key {show(args.keyfile)} (keep it secret), "
          f"public key {show(args.keyfile + PUBLIC_SUFFIX)}")
