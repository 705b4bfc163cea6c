"""The boot-time verifier: pick a deployment, verify it, mount it at the new root.

Run from an initramfs (``sealtree-boot`` or ``python3 -m overlay.boot``) with
only the standard library, ``cryptography`` and ``zstandard`` besides
``store``, ``pack`` and ``overlay``.  In order:

1. the configuration: built-in defaults, then the initramfs's config file
   (``/etc/sealtree/boot.conf``), then the kernel command line
   (``sealtree.root=``, ``sealtree.repo=``, ``sealtree.deployment=``, ...),
   then this program's options.  The keyring, the freshness floor and whether
   boots are counted come only from the initramfs (the config file or the
   options its scripts pass): a kernel command line can be edited at the boot
   loader, so it may only *tighten* the verification policy unless the
   config says ``cmdline_verify = yes``;
2. the sysroot (the filesystem holding the repository) is mounted
   read-write when a root device is given and it is not mounted yet (boot
   counting writes the deployment state);
3. the deployment: ``sealtree.deployment=`` if given, else the default one,
   or the previous one when the default has no boot tries left
   (``overlay.state``).  One try is spent *before* anything is verified, so a
   deployment that fails for any reason, here or later in the boot, uses up
   its tries;
4. its kept pack's signatures against the baked keyring, that the pack is of
   the deployment's commit, and that it is not older than the freshness floor
   baked into the initramfs for its ref;
5. the deploy directory (exactly the expected hardlinks) and every large
   object: inode metadata, and the kernel-measured fs-verity digest (policy
   ``kernel``, fail closed; ``userspace``/``auto`` only where the config says
   so);
6. a tmpfs sized from the manifest, the pack unpacked into it (whose last
   read re-checks the pack's signed SHA-256), and overlayfs mounted read-only
   at the target.

Every outcome is one line on the console: ``sealtree-boot: booting <id> ...``
or ``sealtree-boot: REFUSED <id>: <stage> failed at <path>: <detail>``.  When
the default deployment is refused, the previous one is tried (and said so);
when nothing can be verified the program exits non-zero with nothing mounted.

Rollback protection at boot cannot trust the disk: ``packs/freshness.json`` on
it is as writable as the packs are, and the previous deployment, which boot
counting must be able to fall back to, is by design older than the newest
pack.  So the floor is a file in the initramfs (``pack.freshness`` format),
which ``sealtree-boot write-floor REPO FILE`` writes when the initramfs is
built: per ref, the oldest of the default and previous deployments.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace

from pack import freshness
from pack.importer import kept_pack_path
from pack.keys import Keyring
from store.errors import (
    DeployError,
    DowngradeError,
    MountError,
    PackError,
    SealtreeError,
    SignatureError,
    UsageError,
    VerificationError,
)
from store.ids import RawId
from store.repo import Repository

from . import mounts
from .deploy import deploy_root, large_files, open_deployment_pack, state_file
from .mount_deployment import MountResult, mount_verified
from .objcheck import Policy
from .state import Deployment, State, choose_deployment_for_boot, count_try

PREFIX = "sealtree-boot: "
CONFIG_PATH = "/etc/sealtree/boot.conf"
CMDLINE_PATH = "/proc/cmdline"
BOOTED_FILE = "booted"  # in the scratch directory: the id of the deployment mounted

EXIT_BOOTED = 0
EXIT_REFUSED = 1  # no deployment could be verified and mounted
EXIT_CONFIG = 2  # the configuration or the command line is wrong

Say = Callable[[str], None]


class BootConfigError(UsageError):
    """The boot configuration (file, kernel command line or options) is wrong."""


@dataclass(frozen=True)
class BootConfig:
    """Everything the verifier needs to know; see ``FORMAT-boot.md`` for each key."""

    root: str | None = None  # block device of the sysroot; None: the sysroot is mounted already
    rootfstype: str = "ext4"
    rootwait: float = 10.0  # seconds to wait for the root device to appear
    sysroot: str = "/sysroot"  # where the sysroot is (or gets) mounted
    repo: str = "/sealtree/repo"  # the repository, inside the sysroot
    keys: str = "/etc/sealtree/keys"  # the trusted keyring, inside the initramfs
    target: str = "/newroot"  # where the deployment is mounted for the handover
    verify: Policy = Policy.KERNEL
    cmdline_verify: bool = False  # may sealtree.verify= choose a policy other than kernel?
    freshness: str | None = None  # the floor file inside the initramfs; None: no floor
    count: bool = True  # count boot tries (needs the sysroot writable)
    deployment: str | None = None  # boot exactly this one (id, prefix, default, previous)
    scratch: str = "/run/sealtree"  # staging mounts; gets the ``booted`` file

    @property
    def repo_path(self) -> str:
        return os.path.join(self.sysroot, self.repo.lstrip("/"))


# -- parsing the configuration ---------------------------------------------------------------

def _path(value: str, key: str) -> str:
    if not value.startswith("/") or "\0" in value:
        raise BootConfigError(f"{key}: must be an absolute path, got {value!r}")
    if ".." in value.split("/"):
        raise BootConfigError(f"{key}: must not contain '..', got {value!r}")
    return os.path.normpath(value)


def _optional_path(value: str, key: str) -> str | None:
    return None if value.lower() in ("", "none") else _path(value, key)


def _bool(value: str, key: str) -> bool:
    lowered = value.lower()
    if lowered in ("yes", "true", "1", "on"):
        return True
    if lowered in ("no", "false", "0", "off"):
        return False
    raise BootConfigError(f"{key}: expected yes or no, got {value!r}")


def _policy(value: str, key: str) -> Policy:
    try:
        return Policy(value.lower())
    except ValueError:
        raise BootConfigError(f"{key}: expected one of {[p.value for p in Policy]}, got {value!r}") from None


def _seconds(value: str, key: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 3600:
        raise BootConfigError(f"{key}: expected seconds in 0..3600, got {value!r}")
    return seconds


def _text(value: str, key: str) -> str:
    if not value or "\0" in value:
        raise BootConfigError(f"{key}: must not be empty")
    return value


def _optional_text(value: str, key: str) -> str | None:
    return None if value.lower() in ("", "none") else _text(value, key)


_PARSERS: dict[str, Callable[[str, str], object]] = {
    "root": _optional_path, "rootfstype": _text, "rootwait": _seconds, "sysroot": _path,
    "repo": _path, "keys": _path, "target": _path, "verify": _policy, "cmdline_verify": _bool,
    "freshness": _optional_path, "count": _bool, "deployment": _optional_text, "scratch": _path,
}
# What a kernel command line may set (``sealtree.<key>=``).  Not the keyring, the
# freshness floor, boot counting or the paths the initramfs scripts rely on.
CMDLINE_KEYS = ("root", "rootfstype", "rootwait", "sysroot", "repo", "deployment", "verify")


def parse_config_text(text: str, where: str, base: BootConfig | None = None) -> BootConfig:
    """Apply ``key = value`` lines (``#`` comments) to ``base``; unknown keys are errors."""
    config = base or BootConfig()
    changes: dict[str, object] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in _PARSERS:
            raise BootConfigError(f"{where}:{number}: expected 'key = value' with a key of "
                                  f"{sorted(_PARSERS)}, got {raw.strip()!r}")
        try:
            changes[key] = _PARSERS[key](value, key)
        except BootConfigError as err:
            raise BootConfigError(f"{where}:{number}: {err}") from None
    return replace(config, **changes)  # type: ignore[arg-type]


def load_config_file(path: str, base: BootConfig | None = None) -> BootConfig:
    """``parse_config_text`` of the file at ``path``; a missing file changes nothing."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(1 << 16)
    except FileNotFoundError:
        return base or BootConfig()
    except OSError as err:
        raise BootConfigError(f"cannot read: {err.strerror}", path=path) from err
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BootConfigError("not UTF-8", path=path) from err
    return parse_config_text(text, path, base)


def apply_cmdline(config: BootConfig, cmdline: str, say: Say) -> BootConfig:
    """Apply the ``sealtree.<key>=`` parameters of a kernel command line (later ones win).

    Keys the command line may not set are ignored with a console line;
    ``sealtree.verify=`` other than ``kernel`` is ignored unless the config
    allows it (``cmdline_verify = yes``).  Malformed values are errors.
    """
    try:
        words = shlex.split(cmdline)
    except ValueError:
        words = cmdline.split()
    changes: dict[str, object] = {}
    for word in words:
        name, sep, value = word.partition("=")
        if not name.startswith("sealtree.") or not sep:
            continue
        key = name.removeprefix("sealtree.")
        if key not in CMDLINE_KEYS:
            reason = "only the initramfs configuration sets it" if key in _PARSERS else "unknown key"
            say(f"ignoring {name}= on the kernel command line: {reason}")
            continue
        try:
            parsed = _PARSERS[key](value, name)
        except BootConfigError as err:
            raise BootConfigError(f"kernel command line: {err}") from None
        if key == "verify" and parsed is not Policy.KERNEL and not config.cmdline_verify:
            say(f"ignoring {name}={value}: the initramfs configuration requires fs-verity "
                f"measured by the kernel (set cmdline_verify = yes to allow this)")
            continue
        changes[key] = parsed
    return replace(config, **changes)  # type: ignore[arg-type]


def _read_cmdline(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(1 << 16)
    except FileNotFoundError:
        return ""


# -- the freshness floor -----------------------------------------------------------------------

def boot_floor(repo: Repository) -> dict[str, freshness.Accepted]:
    """Per ref, the oldest of the default and previous deployments (what must stay bootable)."""
    state = state_file(repo).read()
    floor: dict[str, freshness.Accepted] = {}
    for dep_id in (state.default, state.previous):
        if dep_id is None:
            continue
        dep = state.get(dep_id)
        commit_id = RawId(bytes.fromhex(dep.commit))
        accepted = freshness.Accepted.of(commit_id, repo.objects.read_commit(commit_id))
        known = floor.get(dep.ref)
        if known is None or accepted.key() < known.key():
            floor[dep.ref] = accepted
    return floor


def write_floor(repo_path: str, out: str) -> dict[str, freshness.Accepted]:
    """Write ``boot_floor`` of the repository at ``repo_path`` to ``out``; return it."""
    floor = boot_floor(Repository.open(repo_path))
    freshness.save(out, floor)
    return floor


def check_floor(floor: dict[str, freshness.Accepted], ref: str, candidate: freshness.Accepted,
                where: str) -> None:
    """Raise DowngradeError if ``candidate`` is older than the floor baked in for ``ref``."""
    newest = floor.get(ref)
    if newest is not None and not freshness.is_acceptable(candidate, newest):
        raise DowngradeError(f"the pack ({candidate.describe()}) is older than the oldest release "
                             f"this initramfs boots for {ref} ({newest.describe()})", path=where)


# -- choosing ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """What to try, in order: the chosen deployment, then (maybe) a fallback."""

    first: Deployment
    reason: str  # "default", "fallback", "exhausted", "forced"
    fallback: Deployment | None


def _plan(state: State, config: BootConfig) -> Plan:
    if config.deployment is not None:
        return Plan(state.find(config.deployment), "forced", None)
    choice = choose_deployment_for_boot(state)
    fallback = None
    if choice.reason != "fallback" and state.previous is not None \
            and state.previous != choice.deployment.id:
        fallback = state.get(state.previous)
    return Plan(choice.deployment, choice.reason, fallback)


def choose(config: BootConfig, repo: Repository) -> Plan:
    """Pick the deployment and, when counting, spend one of its tries and record it as booted."""
    states = state_file(repo)
    if not config.count:
        return _plan(states.read(), config)
    with states.update() as state:
        plan = _plan(state, config)
        count_try(state, plan.first.id)
    return plan


def _count_fallback(config: BootConfig, repo: Repository, dep: Deployment) -> None:
    if config.count:
        with state_file(repo).update() as state:
            count_try(state, dep.id)


def _tries(dep: Deployment) -> str:
    if dep.tries_left is None:
        return "not counting boots"
    return f"{dep.tries_left} boot {'try' if dep.tries_left == 1 else 'tries'} left"


# -- verifying and mounting ----------------------------------------------------------------------

class Refused(Exception):
    """One deployment cannot be booted: which stage failed, where, and why."""

    def __init__(self, stage: str, where: str, detail: str) -> None:
        self.stage = stage
        self.where = where
        self.detail = detail
        super().__init__(f"{stage} failed at {where}: {detail}")


def _detail(err: BaseException, where: str) -> str:
    text = str(err)
    for prefix in (f"{where}: ", f"{where.lstrip('/')}: ", "pack: "):
        text = text.removeprefix(prefix)
    return text


def _refused(stage: str, where: str, err: BaseException) -> Refused:
    return Refused(stage, where, _detail(err, where))


def _tree_path(err: SealtreeError, default: str) -> str:
    """Where a verification error points: a path of the tree (shown absolute) or a file."""
    path = os.fsdecode(err.path) if err.path else ""
    if not path:
        return default
    return path if path.startswith("/") else "/" + path


def overlay_api() -> str:
    """``legacy`` (mount(2)) below Linux 6.7, where overlayfs has no ``lowerdir+``: trying
    the new API first would only put an "unrecognized mount option" line on the console."""
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return "auto"
    return "legacy" if (major, minor) < (6, 7) else "auto"


@dataclass
class Booted:
    deployment: Deployment
    result: MountResult
    signers: tuple[str, ...]


def verify_and_mount(config: BootConfig, repo: Repository, keyring: Keyring,
                     floor: dict[str, freshness.Accepted], dep: Deployment) -> Booted:
    """Verify ``dep`` (pack, freshness, deploy directory, objects) and mount it at the target.

    Raises Refused naming the stage and the path; nothing is left mounted then.
    """
    commit_id = RawId(bytes.fromhex(dep.commit))
    pack_path = kept_pack_path(repo, commit_id)
    farm_dir = os.path.join(deploy_root(repo), dep.id)
    with contextlib.ExitStack() as stack:
        try:
            reader, verification = stack.enter_context(
                open_deployment_pack(pack_path, keyring, commit_id))
        except SignatureError as err:
            raise _refused("pack signature", pack_path, err) from err
        except (PackError, DeployError, OSError) as err:  # malformed, another commit's, missing
            raise _refused("pack", pack_path, err) from err
        try:
            check_floor(floor, reader.ref, freshness.Accepted.of(reader.commit_id, reader.commit),
                        pack_path)
        except DowngradeError as err:
            raise _refused("freshness", pack_path, err) from err
        items = large_files(repo.objects, reader.manifest, farm_dir)
        try:
            # The target is a directory of the initramfs: made here if the scripts did not.
            os.makedirs(config.target, exist_ok=True)
            os.makedirs(config.scratch, exist_ok=True)
            result = mount_verified(reader, items, farm_dir, config.target, config.scratch,
                                    policy=config.verify, api=overlay_api(),
                                    repo_path=config.repo_path)
        except VerificationError as err:  # the deploy directory or a large object
            stage = "deploy directory" if "deploy directory" in str(err) else "large object"
            raise _refused(stage, _tree_path(err, farm_dir), err) from err
        except (PackError, SignatureError) as err:  # the pack changed while it was unpacked
            raise _refused("pack", pack_path, err) from err
        except (SealtreeError, OSError) as err:
            where = err.filename if isinstance(err, OSError) and err.filename else config.target
            raise _refused("mount", os.fsdecode(where), err) from err
    return Booted(dep, result, tuple(k.hex()[:16] for k in verification.signers))


def _say_refused(say: Say, dep: Deployment, err: Refused) -> None:
    say(f"REFUSED {dep.id}: {err.stage} failed at {err.where}: {err.detail}")


def _say_booting(say: Say, booted: Booted) -> None:
    dep, check = booted.deployment, booted.result.check
    say(f"verified {dep.id}: pack signed by {', '.join(booted.signers)}; {check.files} large "
        f"objects ({check.bytes} bytes: {check.kernel} measured by the kernel, {check.userspace} "
        f"digested in userspace); {booted.result.populate.files} files unpacked into tmpfs")
    say(f"booting {dep.id} ({dep.ref} version {dep.version or '-'}) at {booted.result.target}")


def _record_booted(config: BootConfig, dep: Deployment) -> None:
    with contextlib.suppress(OSError):
        with open(os.path.join(config.scratch, BOOTED_FILE), "w", encoding="ascii") as handle:
            handle.write(dep.id + "\n")


# -- the sysroot ---------------------------------------------------------------------------------

def mount_sysroot(config: BootConfig, say: Say) -> None:
    """Mount the root device at the sysroot (read-write) unless it is mounted there already."""
    if mounts.is_mount_point(config.sysroot) is not None or config.root is None:
        if not os.path.isdir(config.repo_path):
            raise DeployError("no repository (is the sysroot mounted? "
                              "give sealtree.root= or mount it first)", path=config.repo_path)
        return
    deadline = time.monotonic() + config.rootwait
    while not os.path.exists(config.root):
        if time.monotonic() >= deadline:
            raise MountError(f"the root device did not appear within "
                             f"{config.rootwait:g} s", path=config.root)
        time.sleep(0.1)
    os.makedirs(config.sysroot, exist_ok=True)
    try:
        # Read-write: boot counting writes the deployment state.  No nosuid/nodev:
        # the deploy directories on it are layers of the root filesystem.
        mounts.mount(config.root, config.sysroot, config.rootfstype, mounts.MS_SILENT)
    except OSError as err:
        raise MountError(f"mounting it ({config.rootfstype}) at {config.sysroot} "
                         f"failed: {err.strerror}", path=config.root) from err
    say(f"mounted {config.root} at {config.sysroot}")


# -- the whole boot ----------------------------------------------------------------------------

def _load_floor(config: BootConfig) -> dict[str, freshness.Accepted]:
    if config.freshness is None:
        return {}
    if not os.path.exists(config.freshness):
        raise DeployError("the freshness floor named by the configuration "
                          "is missing; refusing to boot without rollback protection",
                          path=config.freshness)
    return freshness.load(config.freshness)


def run_boot(config: BootConfig, say: Say) -> int:
    """Choose, verify and mount; return an exit code (``EXIT_*``)."""
    try:
        mount_sysroot(config, say)
        repo = Repository.open(config.repo_path)
        keyring = Keyring.load(config.keys)
        if not keyring.keys:
            raise SignatureError("the keyring holds no trusted keys", path=config.keys)
        floor = _load_floor(config)
        if config.freshness is None:
            say("no freshness floor configured: older signed releases are not refused")
        plan = choose(config, repo)
    except SealtreeError as err:
        say(f"FAILED: {err}")
        return EXIT_REFUSED
    except OSError as err:
        say(f"FAILED: {err.filename or ''}: {err.strerror}")
        return EXIT_REFUSED
    first = plan.first
    if plan.reason == "fallback":
        say(f"the default deployment has no boot tries left (it never reached mark-good); "
            f"booting the previous deployment {first.id}")
    elif plan.reason == "exhausted":
        say(f"the default deployment {first.id} has no boot tries left and there is no previous "
            f"deployment; trying it anyway")
    else:
        say(f"deployment {first.id} ({plan.reason}; {_tries(first)})")
    candidates = [first] + ([plan.fallback] if plan.fallback is not None else [])
    for index, dep in enumerate(candidates):
        if index:
            say(f"falling back to the previous deployment {dep.id}")
            try:
                _count_fallback(config, repo, dep)
            except SealtreeError as err:
                say(f"FAILED: {err}")
                return EXIT_REFUSED
        try:
            booted = verify_and_mount(config, repo, keyring, floor, dep)
        except Refused as err:
            _say_refused(say, dep, err)
            continue
        _record_booted(config, dep)
        _say_booting(say, booted)
        return EXIT_BOOTED
    say("FAILED: no deployment could be verified; not booting")
    return EXIT_REFUSED


# -- the command -----------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sealtree-boot",
        description="Verify a sealtree deployment and mount it read-only at the new root "
                    "(run from an initramfs).  Options override the kernel command line, "
                    "which overrides the config file.",
        epilog="sealtree-boot write-floor REPO FILE: write the freshness floor for an initramfs.")
    p.add_argument("--config", default=CONFIG_PATH, metavar="FILE",
                   help=f"the configuration file (default {CONFIG_PATH}; missing: defaults)")
    p.add_argument("--cmdline", default=CMDLINE_PATH, metavar="FILE",
                   help=f"the kernel command line ('none' to ignore it; default {CMDLINE_PATH})")
    for key in ("root", "sysroot", "repo", "keys", "target", "freshness", "deployment", "scratch"):
        p.add_argument(f"--{key}", metavar="VALUE", help=f"sets '{key}'")
    p.add_argument("--verify", choices=[x.value for x in Policy], help="sets 'verify'")
    p.add_argument("--no-count", action="store_true", help="do not count a boot try")
    return p


def config_from_args(argv: Sequence[str], say: Say) -> BootConfig:
    args = _parser().parse_args(argv)
    config = load_config_file(args.config)
    if args.cmdline != "none":
        config = apply_cmdline(config, _read_cmdline(args.cmdline), say)
    known = {f.name for f in fields(BootConfig)}
    changes: dict[str, object] = {key: _PARSERS[key](value, f"--{key}")
                                  for key, value in vars(args).items()
                                  if key in known and value is not None}
    if args.no_count:
        changes["count"] = False
    return replace(config, **changes)  # type: ignore[arg-type]


def _say(line: str) -> None:
    print(PREFIX + line, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["write-floor"]:
        if len(argv) != 3:
            _say("usage: sealtree-boot write-floor REPO FILE")
            return EXIT_CONFIG
        try:
            floor = write_floor(argv[1], argv[2])
        except SealtreeError as err:
            _say(f"FAILED: {err}")
            return EXIT_REFUSED
        for ref, accepted in sorted(floor.items()):
            _say(f"floor for {ref}: {accepted.describe()}")
        if not floor:
            _say("no default or previous deployment: the floor is empty (no rollback protection)")
        return EXIT_BOOTED
    try:
        config = config_from_args(argv, _say)
    except SealtreeError as err:
        _say(f"FAILED: {err}")
        return EXIT_CONFIG
    return run_boot(config, _say)


if __name__ == "__main__":
    sys.exit(main())
