"""boot-check: is this boot healthy (no kernel verity errors, no required unit failed)?

Run by ``integration/systemd/sealtree-mark-good.service`` with ``--mark-good``: the
booted deployment is marked good only when the boot is healthy.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from store.errors import UsageError

from .. import boot_health
from ..output import print_json
from .common import add_parser, open_repo

PREFIX = "sealtree boot-check: "


def register(sub: Any) -> None:
    p = add_parser(
        sub, "boot-check", "check this boot's health; with --mark-good, end its boot counting",
        "Check the boot of the deployment named in /run/sealtree/booted: no fs-verity or\n"
        "overlayfs verity error in the kernel log of this boot (a sealed file's bytes refused:\n"
        "the report names the object and the path in the tree where it can), and no unit\n"
        "listed in /etc/sealtree/required-units failed.  Prints one line naming the deployment\n"
        "and what was found.  Exit status 0 when healthy, 15 when not.  --mark-good then runs\n"
        "mark-good for that deployment (never when unhealthy).",
        "example (what sealtree-mark-good.service runs):\n"
        "  sealtree --repo /sysroot/sealtree/repo boot-check --mark-good")
    p.add_argument("--mark-good", action="store_true", help="mark the booted deployment good if healthy")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.add_argument("--kmsg", default=boot_health.KMSG, metavar="FILE",
                   help=f"the kernel log to read ({boot_health.KMSG})")
    p.add_argument("--required-units", default=boot_health.REQUIRED_UNITS, metavar="FILE",
                   help=f"the units that must not have failed ({boot_health.REQUIRED_UNITS})")
    p.add_argument("--booted", default=boot_health.BOOTED, metavar="FILE",
                   help=f"names the booted deployment ({boot_health.BOOTED})")
    p.set_defaults(func=cmd_boot_check)


def cmd_boot_check(args: argparse.Namespace) -> int:
    from overlay.layout import deploy_layout
    from overlay.state import mark_good, state_file

    repo = open_repo(args)
    deployment = boot_health.booted_deployment(args.booted)
    if deployment is None and args.mark_good:
        raise UsageError("not booted through sealtree: nothing names the booted deployment",
                         path=args.booted)
    required = boot_health.read_required_units(args.required_units)
    try:
        lines = boot_health.read_kmsg(args.kmsg)
    except OSError as err:
        raise UsageError(f"cannot read the kernel log: {err.strerror}", path=args.kmsg) from None
    farm = deploy_layout(repo).farm(deployment) if deployment is not None else None
    health = boot_health.assess(
        deployment=deployment, kernel_lines=lines, objects_dir=repo.layout.objects,
        farm=farm if farm is not None and os.path.isdir(farm) else None,
        required=required, states=boot_health.unit_states(required))
    marked = False
    if health.healthy and args.mark_good:
        with state_file(repo).update() as state:
            mark_good(state, deployment)
        marked = True
    if args.json:
        print_json({**health.to_json(), "marked_good": marked})
    else:
        name = deployment or "(not booted through sealtree)"
        if health.healthy:
            done = "marked good" if marked else "healthy"
            print(f"{PREFIX}{name}: {done} (no kernel verity errors; "
                  f"{len(required)} required units ok)", flush=True)
        else:
            print(f"{PREFIX}{name}: NOT marked good: {'; '.join(health.reasons())}", flush=True)
    return 0 if health.healthy else 15
