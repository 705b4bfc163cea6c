"""demo: the whole product on the built-in sample tree (vendor to device over HTTP), printing
each command as it runs."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import sealtree
from store.errors import UsageError

from ..sample import make_sample_tree
from .common import add_parser


def register(sub: Any) -> None:
    p = add_parser(
        sub, "demo", "the whole product on a built-in sample tree: commit to mount via HTTP",
        "Make a small sample root tree (large and small files, symlinks, a hardlink,\n"
        "a setuid binary, xattrs, a non-UTF-8 name) in a work directory and run the\n"
        "whole job on it, printing each command first.  Vendor side: init, commit,\n"
        "log, ls, checkout, fsck, key generation, pack build, sign, inspect and verify,\n"
        "publish (a site in the work directory) and serve it on 127.0.0.1 (a free port,\n"
        "in a background process).  Device side, in a second repository: init,\n"
        "remote add, pull over HTTP, fsck and, as root, deploy, mount, status and\n"
        "umount.  It makes its own repositories in the work directory: --repo and\n"
        "$SEALTREE_REPO are not used.  A step that fails ends the demo (after\n"
        "unmounting what it mounted and stopping the server) with that step's exit status.",
        "example:\n  sealtree demo --workdir /var/tmp/sealtree-demo")
    p.add_argument("--workdir", metavar="DIR", default=None,
                   help="where to put the sample tree, repositories and site "
                        "(default: a new temporary dir)")
    p.set_defaults(func=cmd_demo)


def _vendor_steps(work: str) -> list[list[str]]:
    repo = ["--repo", f"{work}/repo"]
    return [
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
        repo + ["publish", f"{work}/site", "sample/main", "--key", f"{work}/keys/vendor.key"],
    ]


def _device_steps(work: str, url: str) -> list[list[str]]:
    device = ["--repo", f"{work}/device"]
    steps = [
        device + ["init"],
        device + ["remote", "add", "vendor", url, "--keys", f"{work}/keys"],
        device + ["pull", "vendor"],
        device + ["fsck"],
    ]
    if os.geteuid() == 0:  # deploying mounts
        steps += [
            device + ["deploy", "sample/main", "--keys", f"{work}/keys", "--verify", "auto"],
            device + ["mount", "default", f"{work}/root", "--keys", f"{work}/keys"],
            device + ["status"],
            ["umount", f"{work}/root"],
        ]
    return steps


class _Server:
    """``sealtree serve`` of the demo's site, in a background process on a free port."""

    def __init__(self, site: str) -> None:
        self.argv = ["serve", site, "--listen", "127.0.0.1:0"]
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> int:
        """Start it and read the address it prints; 0, or the exit status it failed with."""
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(sealtree.__file__)))
        path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen([sys.executable, "-m", "sealtree", *self.argv],
                                     stdout=subprocess.PIPE, text=True,
                                     env=os.environ | {"PYTHONPATH": path})
        assert self.proc.stdout is not None  # noqa: S101 - stdout=PIPE above
        line = self.proc.stdout.readline()
        match = re.search(r" at (http://\S+)$", line.strip())
        if match is None:
            self.stop()
            return self.proc.returncode or 1
        self.url = match[1]
        print(line.strip(), flush=True)
        return 0

    def stop(self) -> None:
        """Stop it (as Ctrl-C would) and wait for it; kill it if it does not end."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _run_steps(run: Callable[[list[str]], int], steps: list[list[str]], work: str) -> int:
    """Run each step, printing it first; stop at the first that fails (unmounting then what
    an earlier step mounted) and return its exit status."""
    mounted = False
    for step in steps:
        print(f"\n$ sealtree {shlex.join(step)}", flush=True)
        code = run(step)
        if code:
            print(f"# step failed with exit status {code}")
            if mounted:
                run(["umount", f"{work}/root"])
            return code
        mounted = (mounted or "mount" in step) and "umount" not in step
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    run: Callable[[list[str]], int] = args.run_command  # the CLI's main (see cli.build_parser)
    work = args.workdir or tempfile.mkdtemp(prefix="sealtree-demo-", dir="/var/tmp")
    if os.path.exists(f"{work}/tree"):
        raise UsageError("already holds a demo; give a new --workdir", path=work)
    os.makedirs(f"{work}/keys", exist_ok=True)
    os.makedirs(f"{work}/root", exist_ok=True)
    make_sample_tree(f"{work}/tree")
    print(f"# sample tree written to {work}/tree")
    print("\n# the vendor: commit, pack, sign, publish")
    code = _run_steps(run, _vendor_steps(work), work)
    if code:
        return code
    server = _Server(f"{work}/site")
    print(f"\n$ sealtree {shlex.join(server.argv)} &", flush=True)
    try:
        code = server.start()
        if code:
            print(f"# step failed with exit status {code}")
            return code
        print("\n# the device: pull over HTTP, deploy, mount")
        code = _run_steps(run, _device_steps(work, server.url), work)
    finally:
        server.stop()
    if code:
        return code
    print(f"\n# server stopped; done: everything is in {work}")
    return 0
