"""pack delta, pack apply-delta: update artefacts for packs shipped outside the HTTP transport.

``register(packs)`` adds both commands to the ``pack`` group: it takes the group's
subparsers (``packs`` in ``pack_cmds.register``), not the top-level ones.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from store.atomic import check_destination

from ..output import human_size, print_json
from .common import add_parser


def register(packs: Any) -> None:
    p = add_parser(
        packs, "delta", "write a delta that turns pack OLD into pack NEW",
        "Write to FILE a delta that rebuilds NEW byte for byte from OLD: NEW's content\n"
        "compressed against OLD's (zstd with OLD's decompressed content as a\n"
        "dictionary).  The device runs `pack apply-delta` and then verifies the rebuilt\n"
        "pack with its signatures as for any pack (ship NEW.sig beside the delta): a\n"
        "delta needs no trust of its own.  The delta is checked here by applying it.",
        "example (the vendor's side):\n"
        "  sealtree pack delta os-41.pack os-42.pack -o os-41-42.pdelta")
    p.add_argument("old", metavar="OLD", help="the pack the device has")
    p.add_argument("new", metavar="NEW", help="the pack to ship")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the delta to write")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(func=cmd_delta)

    p = add_parser(
        packs, "apply-delta", "rebuild a pack from the pack it was made from and a delta",
        "Rebuild into NEW the pack DELTA describes, from OLD.  Refused (exit 11) when\n"
        "DELTA was made from another pack, is damaged, or the rebuilt pack is not the\n"
        "one DELTA names (size and SHA-256); NEW is written only when it is.  Then\n"
        "verify or import NEW with its signature file as any pack.",
        "example (a device's side):\n"
        "  sealtree pack apply-delta /var/lib/os/packs/41.pack os-41-42.pdelta -o os-42.pack\n"
        "  sealtree --repo R pack import os-42.pack --keys /etc/sealtree/keys")
    p.add_argument("old", metavar="OLD", help="the pack the delta was made from")
    p.add_argument("delta", metavar="DELTA", help="the delta file")
    p.add_argument("-o", "--output", required=True, metavar="NEW", help="the pack to write")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(func=cmd_apply_delta)


def cmd_delta(args: argparse.Namespace) -> None:
    from pack.delta import make_pack_delta
    check_destination(args.output, "-o")
    started = time.monotonic()
    result = make_pack_delta(args.old, args.new, args.output)
    seconds = time.monotonic() - started
    if args.json:
        print_json({"delta": result.path, "size": result.size, "sha256": result.sha256.hex(),
                    "old": args.old, "new": args.new, "seconds": round(seconds, 3)})
        return
    print(f"wrote {result.path}: {human_size(result.size)}, sha256 {result.sha256.hex()}")


def cmd_apply_delta(args: argparse.Namespace) -> None:
    from pack.delta import apply_pack_delta
    check_destination(args.output, "-o")
    started = time.monotonic()
    result = apply_pack_delta(args.old, args.delta, args.output)
    seconds = time.monotonic() - started
    if args.json:
        print_json({"pack": result.path, "size": result.size, "sha256": result.sha256.hex(),
                    "delta": args.delta, "seconds": round(seconds, 3)})
        return
    print(f"wrote {result.path}: {human_size(result.size)}, sha256 {result.sha256.hex()}; "
          f"verify it with its signatures before use")
