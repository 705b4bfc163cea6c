"""index sign: sign a site's staged index on a machine that holds the keys (offline signing)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from store.errors import UsageError
from store.names import show

from ..output import print_json
from .common import add_parser, iso_time


def register(sub: Any) -> None:
    group = add_parser(
        sub, "index", "sign a published site's index offline",
        "A vendor that keeps its signing keys off the publishing server runs\n"
        "`publish DIR --unsigned` there (everything is written, the next index is\n"
        "staged unsigned in DIR/.index.unsigned), copies that file to the machine with\n"
        "the keys, runs `index sign` there, and brings the signature bundle back to\n"
        "`publish DIR --activate BUNDLE`, which checks it and makes the index live.",
        "example:\n"
        "  server$  sealtree --repo R publish /srv/www/os --unsigned os/main\n"
        "  offline$ sealtree index sign .index.unsigned --key vendor.key -o os.sigs\n"
        "  server$  sealtree publish /srv/www/os --activate os.sigs --keys /etc/sealtree/keys")
    commands = group.add_subparsers(dest="index_command", metavar="COMMAND", title="commands")
    commands.required = True
    p = add_parser(
        commands, "sign", "sign a staged index and the packs it names into a bundle",
        "Check that FILE is a canonical site index, print what it lists (review it:\n"
        "this is what devices will trust), and sign it and every pack it names (a\n"
        "pack's signature covers its SHA-256, which the index states) with each --key,\n"
        "into the signature bundle OUT (default FILE.sigs).  An existing OUT for the\n"
        "same index gets the new signatures added (several signers, one file).")
    p.add_argument("file", metavar="FILE", help="the staged index (the site's .index.unsigned)")
    p.add_argument("--key", action="append", required=True, metavar="KEYFILE",
                   help="a private key to sign with (repeat for several)")
    p.add_argument("-o", "--output", metavar="OUT", help="the signature bundle (default FILE.sigs)")
    p.add_argument("--json", action="store_true", help="print what was signed as JSON")
    p.set_defaults(func=cmd_index_sign)


def cmd_index_sign(args: argparse.Namespace) -> int:
    from pack.keys import key_id, load_private_key
    from remote.index import MAX_INDEX
    from remote.offline import BUNDLE_SUFFIX, encode_bundle, read_bundle, sign_offline
    from store.atomic import atomic_write

    keys = [load_private_key(path) for path in args.key]
    try:
        with open(args.file, "rb") as handle:
            data = handle.read(MAX_INDEX + 1)
    except OSError as err:
        raise UsageError(f"cannot read the index: {err.strerror}", path=args.file) from None
    out = args.output or args.file + BUNDLE_SUFFIX
    existing = read_bundle(out) if os.path.exists(out) else None
    index, bundle = sign_offline(data, args.file, keys, existing)
    atomic_write(out, encode_bundle(bundle), 0o644)
    signers = [key_id(k.public_key()).hex() for k in keys]
    if args.json:
        print_json({"index_sha256": bundle.index.hex(), "serial": index.serial,
                    "timestamp": index.timestamp, "expires": index.expires, "signed_by": signers,
                    "refs": {ref: {"commit": e.commit, "version": e.version, "pack": e.sha256.hex()}
                             for ref, e in index.refs.items()},
                    "bundle": out, "bundle_signers": [s.key_id.hex() for s in bundle.index_signatures]})
        return 0
    print(f"index sha256 {bundle.index.hex()}: serial {index.serial}, published "
          f"{iso_time(index.timestamp)}, expires {iso_time(index.expires)}")
    for ref, e in index.refs.items():
        print(f"  {ref}: commit {e.commit} version {e.version or '(none)'} pack {e.sha256.hex()}")
    print(f"signed the index and {len(bundle.packs)} pack(s) with key(s) {', '.join(signers)} "
          f"into {show(out)} ({len(bundle.index_signatures)} key(s) in it)")
    return 0
