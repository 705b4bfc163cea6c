"""The sealtree side of each measurement: argvs for the sealtree CLI.

sealtree is run as a separate process, as a user runs it: the ``sealtree``
console script of this checkout pip-installed into a virtual environment of its
own (``environment``), so its times include interpreter start-up and its peak
memory is its own.  ``$SEALTREE_BENCH_CMD`` overrides the command (e.g. another
venv's ``bin/sealtree``, to measure other code in turns; the bench scripts run as the
``python`` beside it, when there is one).

Commands that have not landed yet are detected with ``sealtree COMMAND --help``
(exit status 0 means present); measurements that need a missing command are
reported as "not available yet" rather than failing the suite.

This module is the only place that knows the CLI's syntax:

    sealtree --repo R init
    sealtree --repo R commit -b BRANCH [-s SUBJECT] [--timestamp T] [--skip-special] DIR
    sealtree --repo R commit -b BRANCH [-s SUBJECT] [--timestamp T] --tar FILE
    sealtree --repo R export --tar REF -o FILE
    sealtree --repo R checkout [--copy] REF DEST
    sealtree --repo R fsck [--json]
    sealtree digest FILE...
    sealtree keygen KEYFILE                      (writes KEYFILE and KEYFILE.pub)
    sealtree --repo R pack build REF -o PACK
    sealtree pack sign PACK --key KEYFILE        (writes PACK.sig)
    sealtree pack verify PACK --keys DIR         (DIR: a keyring of *.pub)
    sealtree --repo R pack import PACK --keys DIR
    sealtree --repo R deploy REF --keys DIR --verify userspace --no-default --json [--mount TARGET]
    sealtree --repo R mount DEPLOYMENT TARGET --keys DIR --verify userspace
    sealtree --repo R umount TARGET
    sealtree --repo R undeploy DEPLOYMENT
    sealtree --repo R publish SITE REF --key KEYFILE
    sealtree --repo R remote add NAME URL --keys DIR
    sealtree --repo R pull NAME [--json]

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
import hashlib
import json
import logging
import os
import shlex
import shutil
import sys
from pathlib import Path

from bench.corpora import locked
from bench.proc import CommandFailed, run

Argv = list[str]
log = logging.getLogger("bench")

REPO_ROOT = Path(__file__).resolve().parent.parent


PACKAGES = ("store", "pack", "overlay", "remote", "sealtree")
# The command that runs sealtree and the interpreter it is installed for; set by environment().
_installed: tuple[Argv, str] | None = None


def environment(cache: Path | None = None) -> None:
    """Once per run: install this checkout as a user would, and run that.

    ``pip install`` of the checkout into a virtual environment of its own under
    ``cache`` (the corpus cache), rebuilt when the sources change: the suite then
    runs its ``sealtree`` console script, byte-compiled by pip, with nothing
    else on its path.  A development checkout run as ``python3 -m sealtree``
    also pays for whatever the base interpreter's site-packages load at start-up
    (an editable install's import hook, other packages' ``.pth`` files: some
    70 ms on a cold cache here), which is not sealtree's.  Where installing
    fails (no package index), the checkout itself is run, byte-compiled, with
    its directory prepended to ``PYTHONPATH``.
    """
    global _installed  # noqa: PLW0603 - set once per run
    if _installed is not None:
        return
    override = os.environ.get("SEALTREE_BENCH_CMD")
    if override:  # a venv's console script: its interpreter runs the bench scripts too
        command = shlex.split(override)
        beside = Path(command[0]).with_name("python")
        _installed = (command, str(beside) if beside.exists() else sys.executable)
        return
    if cache is not None:
        venv = _venv(cache)
        if venv is not None:
            _installed = ([str(venv / "bin" / "sealtree")], str(venv / "bin" / "python"))
            return
    import compileall  # noqa: PLC0415 - only the benchmark needs it

    for package in PACKAGES:
        compileall.compile_dir(str(REPO_ROOT / package), quiet=1)
    current = os.environ.get("PYTHONPATH", "")
    parts = [p for p in current.split(os.pathsep) if p]
    if str(REPO_ROOT) not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *parts])
    _installed = ([sys.executable, "-m", "sealtree"], sys.executable)


def _source_digest() -> str:
    """SHA-256 over the checkout's packaged sources (names and bytes) and pyproject.toml."""
    digest = hashlib.sha256()
    files = [REPO_ROOT / "pyproject.toml"]
    for package in PACKAGES:
        files += sorted((REPO_ROOT / package).rglob("*.py"))
    for path in files:
        digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _venv(cache: Path) -> Path | None:
    """``cache/venv-<source digest>`` with this checkout installed, built if absent; None if
    it cannot be built.  Built in place (a venv's scripts name its path) and marked complete
    last; older ones are removed."""
    venv = cache / f"venv-{_source_digest()}"
    done = venv / "installed"
    with locked(cache / ".venv.lock"):
        if done.exists():
            return venv
        for old in cache.glob("venv-*"):
            shutil.rmtree(old, ignore_errors=True)
        log.info("installing this checkout into %s (pip install)", venv)
        try:
            run([sys.executable, "-m", "venv", str(venv)], measure=False)
            run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                 "--disable-pip-version-check", str(REPO_ROOT)], measure=False)
        except CommandFailed as err:
            log.warning("cannot install the checkout into a venv (%s); running it in place", err)
            shutil.rmtree(venv, ignore_errors=True)
            return None
        done.touch()
    return venv


def base() -> Argv:
    """The command that runs sealtree."""
    environment()
    assert _installed is not None
    return list(_installed[0])


def product_python() -> str:
    """The interpreter sealtree is installed for (the venv's, or this one)."""
    environment()
    return _installed[1] if _installed is not None else sys.executable


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


def commit_tar(repo: Path, branch: str, archive: Path, timestamp: int | None = None) -> Argv:
    """``sealtree --repo R commit -b BRANCH -s bench [--timestamp T] --tar FILE``."""
    argv = [*_repo(repo), "commit", "-b", branch, "-s", "bench"]
    if timestamp is not None:
        argv += ["--timestamp", str(timestamp)]
    return [*argv, "--tar", str(archive)]


def export_tar(repo: Path, ref: str, out: Path) -> Argv:
    """``sealtree --repo R export --tar REF -o FILE`` (uncompressed)."""
    return [*_repo(repo), "export", "--tar", ref, "-o", str(out)]


def publish(repo: Path, site: Path, ref: str, keyfile: Path) -> Argv:
    """``sealtree --repo R publish SITE REF --key KEYFILE``."""
    return [*_repo(repo), "publish", str(site), ref, "--key", str(keyfile)]


def remote_add(repo: Path, name: str, url: str, keydir: Path) -> Argv:
    """``sealtree --repo R remote add NAME URL --keys DIR``."""
    return [*_repo(repo), "remote", "add", name, url, "--keys", str(keydir)]


def pull(repo: Path, remote: str) -> Argv:
    """``sealtree --repo R pull NAME --json`` (every ref the index lists)."""
    return [*_repo(repo), "pull", remote, "--json"]


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


def deploy(repo: Path, ref: str, keydir: Path, target: Path | None = None,
           layout: str | None = None) -> Argv:
    """``sealtree --repo R deploy REF --keys DIR --verify userspace --no-default --json
    [--mount TARGET] [--layout LAYOUT]``."""
    argv = [*_repo(repo), "deploy", ref, "--keys", str(keydir), "--verify", "userspace",
            "--no-default", "--json"]
    argv += [] if layout is None else ["--layout", layout]
    return argv if target is None else [*argv, "--mount", str(target)]


def mount(repo: Path, deployment: str, target: Path, keydir: Path) -> Argv:
    """``sealtree --repo R mount DEPLOYMENT TARGET --keys DIR --verify userspace`` (the keyring
    is given, never taken from the repository: issue 14)."""
    return [*_repo(repo), "mount", deployment, str(target), "--keys", str(keydir), "--verify",
            "userspace"]


def umount(repo: Path, target: Path) -> Argv:
    """``sealtree --repo R umount TARGET`` (also forgets the mount in the deployment state)."""
    return [*_repo(repo), "umount", str(target)]


def undeploy(repo: Path, deployment: str) -> Argv:
    """``sealtree --repo R undeploy DEPLOYMENT`` (its farm and its state entry)."""
    return [*_repo(repo), "undeploy", deployment]


def kernel_estimate(repo: Path, ref: str, keydir: Path, target: Path,
                    layout: str | None = None, skip_objects: bool = False) -> Argv:
    """``deploy --mount [--layout LAYOUT]`` as it would run with kernel fs-verity (see
    ``bench.kernel_estimate``); ``skip_objects``: with the per-object step skipped."""
    script = Path(__file__).with_name("kernel_estimate.py")  # as a script: sealtree from the install
    argv = [product_python(), str(script), "--repo", str(repo), "--keys", str(keydir),
            "--mount", str(target), "--no-default"]
    argv += [] if layout is None else ["--layout", layout]
    return [*argv, *(["--objects", "skipped"] if skip_objects else []), ref]


def deploy_floor(pack: Path, keydir: Path) -> Argv:
    """The floor under any Python deploy (``bench.deploy_floor``): the product's interpreter
    started, its signature and zstd libraries imported, the pack's signature checked."""
    script = Path(__file__).with_name("deploy_floor.py")  # as a script: nothing of sealtree
    return [product_python(), str(script), str(pack), str(keydir)]


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
