"""The sealtree side of each measurement: argvs for the sealtree CLI.

sealtree is run as a separate process (``python3 -m sealtree``, from this
checkout), exactly as a user runs it, so its times include interpreter start-up
and its peak memory is its own.  ``$SEALTREE_BENCH_CMD`` overrides the command
(for instance ``sealtree`` for an installed console script).

Commands that have not landed yet are detected with ``sealtree COMMAND --help``
(exit status 0 means present); measurements that need a missing command are
reported as "not available yet" rather than failing the suite.

This module is the only place that knows the CLI's syntax:

    sealtree --repo R init
    sealtree --repo R commit -b BRANCH [-s SUBJECT] [--timestamp T] [--skip-special] DIR
    sealtree --repo R checkout [--copy] REF DEST
    sealtree --repo R fsck [--json]
    sealtree digest FILE...
    sealtree keygen KEYFILE                      (writes KEYFILE and KEYFILE.pub)
    sealtree --repo R pack build REF -o PACK
    sealtree pack sign PACK --key KEYFILE        (writes PACK.sig)
    sealtree pack verify PACK --keys DIR         (DIR: a keyring of *.pub)
    sealtree --repo R pack import PACK --keys DIR
    sealtree --repo R deploy REF --keys DIR --verify userspace --no-default --json [--mount TARGET]
    sealtree --repo R mount DEPLOYMENT TARGET --verify userspace
    sealtree --repo R umount TARGET
    sealtree --repo R undeploy DEPLOYMENT

``deploy`` reads the kept pack ``R/packs/<commit>.pack``, so the suite imports
the signed pack into the same repository first (untimed), as a device does.
Its ``--json`` object's ``id`` is the deployment (without ``--json`` it is the
last word printed).  ``--verify userspace`` says what is measured: this host's
kernel has no fs-verity, so every object's digest is computed in userspace
(``bench.kernel_estimate`` estimates the kernel path).  ``--no-default`` lets
the teardown ``undeploy`` each run's deployment (the default cannot be
removed); making it the default would only change fields of the same state
file write.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import sys
from pathlib import Path

from bench.proc import CommandFailed, run

Argv = list[str]

REPO_ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def environment() -> None:
    """Once per run: make ``python3 -m sealtree`` import this checkout (prepend it to PYTHONPATH), compiled.

    The packages are byte-compiled first, as an installed package is: with
    ``PYTHONDONTWRITEBYTECODE`` set (some environments do), every run would
    otherwise compile every module again, some 40 ms of each start-up.
    """
    import compileall  # noqa: PLC0415 - only the benchmark needs it

    for package in ("store", "pack", "overlay", "sealtree"):
        compileall.compile_dir(str(REPO_ROOT / package), quiet=1)
    current = os.environ.get("PYTHONPATH", "")
    parts = [p for p in current.split(os.pathsep) if p]
    if str(REPO_ROOT) not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *parts])


def base() -> Argv:
    """The command that runs sealtree."""
    override = os.environ.get("SEALTREE_BENCH_CMD")
    return shlex.split(override) if override else [sys.executable, "-m", "sealtree"]


@functools.cache
def help_text(command: str) -> str | None:
    """``sealtree COMMAND --help``'s output, or None when it does not exit 0."""
    environment()
    try:
        done = run([*base(), *command.split(), "--help"], check=False, measure=False)
    except CommandFailed:
        return None
    return done.stdout if done.returncode == 0 else None


def available(command: str) -> bool:
    """True when ``sealtree COMMAND --help`` exits 0 (``command`` may be two words)."""
    return help_text(command) is not None


def has_option(command: str, option: str) -> bool:
    """True when ``command``'s help mentions ``option`` (for options that came later)."""
    text = help_text(command)
    return text is not None and option in text.split()


def cli_works() -> bool:
    """True when ``sealtree --help`` exits 0: the CLI itself imports and runs."""
    return available("")


def missing(*commands: str) -> list[str]:
    """The commands among ``commands`` that sealtree does not have yet."""
    return [c for c in commands if not available(c)]


def _repo(repo: Path) -> Argv:
    return [*base(), "--repo", str(repo)]


def init(repo: Path) -> Argv:
    """``sealtree --repo R init``."""
    return [*_repo(repo), "init"]


def commit(repo: Path, branch: str, tree: Path, timestamp: int | None = None) -> Argv:
    """``sealtree --repo R commit -b BRANCH -s bench [--timestamp T] --skip-special DIR``."""
    argv = [*_repo(repo), "commit", "-b", branch, "-s", "bench", "--skip-special"]
    if timestamp is not None:
        argv += ["--timestamp", str(timestamp)]
    return [*argv, str(tree)]


def checkout(repo: Path, ref: str, dest: Path) -> Argv:
    """``sealtree --repo R checkout REF DEST`` (hardlinks, the default)."""
    return [*_repo(repo), "checkout", ref, str(dest)]


def fsck(repo: Path) -> Argv:
    """``sealtree --repo R fsck``."""
    return [*_repo(repo), "fsck"]


def digest(*files: Path) -> Argv:
    """``sealtree digest FILE...`` (output like ``fsverity digest``)."""
    return [*base(), "digest", *map(str, files)]


def keygen(keyfile: Path) -> Argv:
    """``sealtree keygen KEYFILE``: KEYFILE (private) and KEYFILE.pub (public)."""
    return [*base(), "keygen", str(keyfile)]


def pack_build(repo: Path, ref: str, pack: Path) -> Argv:
    """``sealtree --repo R pack build REF -o PACK`` (unsigned)."""
    return [*_repo(repo), "pack", "build", ref, "-o", str(pack)]


def pack_sign(pack: Path, keyfile: Path) -> Argv:
    """``sealtree pack sign PACK --key KEYFILE`` (adds to PACK.sig)."""
    return [*base(), "pack", "sign", str(pack), "--key", str(keyfile)]


def pack_verify(pack: Path, keydir: Path) -> Argv:
    """``sealtree pack verify PACK --keys DIR``."""
    return [*base(), "pack", "verify", str(pack), "--keys", str(keydir)]


def pack_import(repo: Path, pack: Path, keydir: Path) -> Argv:
    """``sealtree --repo R pack import PACK --keys DIR`` (what a device does before deploying)."""
    return [*_repo(repo), "pack", "import", str(pack), "--keys", str(keydir)]


def deploy(repo: Path, ref: str, keydir: Path, target: Path | None = None) -> Argv:
    """``sealtree --repo R deploy REF --keys DIR --verify userspace --no-default --json
    [--mount TARGET]``."""
    argv = [*_repo(repo), "deploy", ref, "--keys", str(keydir), "--verify", "userspace",
            "--no-default", "--json"]
    return argv if target is None else [*argv, "--mount", str(target)]


def mount(repo: Path, deployment: str, target: Path) -> Argv:
    """``sealtree --repo R mount DEPLOYMENT TARGET --verify userspace``."""
    return [*_repo(repo), "mount", deployment, str(target), "--verify", "userspace"]


def umount(repo: Path, target: Path) -> Argv:
    """``sealtree --repo R umount TARGET`` (also forgets the mount in the deployment state)."""
    return [*_repo(repo), "umount", str(target)]


def undeploy(repo: Path, deployment: str) -> Argv:
    """``sealtree --repo R undeploy DEPLOYMENT`` (its farm and its state entry)."""
    return [*_repo(repo), "undeploy", deployment]


def kernel_estimate(repo: Path, ref: str, keydir: Path, target: Path) -> Argv:
    """``deploy --mount`` as it would run with kernel fs-verity (see ``bench.kernel_estimate``)."""
    return [sys.executable, "-m", "bench.kernel_estimate", "--repo", str(repo), "--keys", str(keydir),
            "--mount", str(target), "--no-default", ref]


def deployment_from_output(stdout: str) -> str:
    """The deployment that ``deploy`` printed (see the module docstring)."""
    try:
        doc = json.loads(stdout)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("id"), str):
        return str(doc["id"])
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise ValueError("sealtree deploy printed nothing; cannot tell which deployment it made")
    return lines[-1].split()[-1]
