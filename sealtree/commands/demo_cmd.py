"""demo: run the main job on the built-in sample tree, printing each command as it runs."""

from __future__ import annotations

import argparse
import os
import shlex
import tempfile
from collections.abc import Callable
from typing import Any

from store.errors import UsageError

from ..sample import make_sample_tree
from .common import add_parser


def register(sub: Any) -> None:
    p = add_parser(
        sub, "demo", "commit, inspect, check out and verify a built-in sample tree",
        "Make a small sample root tree (large and small files, symlinks, a hardlink,\n"
        "a setuid binary, xattrs, a non-UTF-8 name) in a work directory and run the\n"
        "main job on it, printing each command first: init, commit, log, ls, checkout,\n"
        "fsck, key generation, pack build, sign, verify and import, and, as root,\n"
        "deploy, mount, status and umount.  It makes its own repositories in\n"
        "the work directory: --repo and $SEALTREE_REPO are not used.  A step that fails\n"
        "ends the demo (after unmounting what it mounted) with that step's exit status.",
        "example:\n  sealtree demo --workdir /var/tmp/sealtree-demo")
    p.add_argument("--workdir", metavar="DIR", default=None,
                   help="where to put the sample tree and repositories (default: a new temporary dir)")
    p.set_defaults(func=cmd_demo)


def _steps(work: str) -> list[list[str]]:
    repo = ["--repo", f"{work}/repo"]
    steps = [
        repo + ["init"],
        repo + ["commit", "-b", "sample/main", "-s", "sample tree", "--version", "1",
                "--timestamp", "1700000000", f"{work}/tree"],
        repo + ["log", "sample/main"],
        repo + ["ls", "-R", "sample/main"],
        repo + ["checkout", "sample/main", f"{work}/checkout"],
        repo + ["fsck"],
        ["keygen", f"{work}/keys/vendor.key"],
        repo + ["pack", "build", "sample/main", "-o", f"{work}/sample.pack"],
        ["pack", "sign", f"{work}/sample.pack", "--key", f"{work}/keys/vendor.key"],
        ["pack", "inspect", f"{work}/sample.pack"],
        ["pack", "verify", f"{work}/sample.pack", "--keys", f"{work}/keys"],
        ["--repo", f"{work}/device", "init"],
        ["--repo", f"{work}/device", "pack", "import", f"{work}/sample.pack", "--keys", f"{work}/keys"],
    ]
    if os.geteuid() == 0:  # deploying mounts
        steps += [
            repo + ["pack", "import", f"{work}/sample.pack", "--keys", f"{work}/keys"],
            repo + ["deploy", "sample/main", "--keys", f"{work}/keys", "--verify", "auto"],
            repo + ["mount", "default", f"{work}/root", "--keys", f"{work}/keys"],
            repo + ["status"],
            ["umount", f"{work}/root"],
        ]
    return steps


def cmd_demo(args: argparse.Namespace) -> int:
    run: Callable[[list[str]], int] = args.run_command  # the CLI's main (see cli.build_parser)
    work = args.workdir or tempfile.mkdtemp(prefix="sealtree-demo-", dir="/var/tmp")
    if os.path.exists(f"{work}/tree"):
        raise UsageError("already holds a demo; give a new --workdir", path=work)
    os.makedirs(f"{work}/keys", exist_ok=True)
    os.makedirs(f"{work}/root", exist_ok=True)
    make_sample_tree(f"{work}/tree")
    print(f"# sample tree written to {work}/tree")
    mounted = False
    for step in _steps(work):
        print(f"\n$ sealtree {shlex.join(step)}", flush=True)
        code = run(step)
        if code:
            print(f"# step failed with exit status {code}")
            if mounted:
                run(["umount", f"{work}/root"])
            return code
        mounted = (mounted or "mount" in step) and "umount" not in step
    print(f"\n# done: everything is in {work}")
    return 0
