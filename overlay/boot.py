"""The boot-time verifier: pick a deployment, verify it, mount it at the new root.

Run from an initramfs (``sealtree-boot`` or ``python3 -m overlay.boot``) with
only the standard library, ``cryptography`` and ``zstandard`` besides
``store``, ``pack`` and ``overlay``.  In order:

1. the configuration (``boot_config``: defaults, the initramfs's config file,
   the kernel command line, this program's options; the keyring, the
   freshness floor and boot counting come only from the initramfs);
2. the sysroot (the filesystem holding the repository) is mounted
   read-write when a root device is given and it is not mounted yet (boot
   counting writes the deployment state);
3. the deployment: ``sealtree.deployment=`` if given, else the default one,
   or the previous one when the default has no boot tries left
   (``overlay.state``).  One try is spent *before* anything is verified, so a
   deployment that fails for any reason, here or later in the boot, uses up
   its tries;
4. its kept pack's signatures against the keyring of the initramfs (never
   one the disk names), that the pack is of the deployment's commit, and that
   it is not older than the freshness floor baked into the initramfs for its
   ref (``boot_floor``);
5. the layout (``layout``: ``auto`` is metacopy where the kernel has overlay
   verity and the sysroot fs-verity, else hardlinks);
6. hardlinks: the farm (exactly the expected hardlinks, no xattrs on its
   directories) and every large object: inode metadata, and the
   kernel-measured fs-verity digest (policy ``kernel``, fail closed;
   ``userspace``/``auto`` only where the config says so); metacopy: one object
   per content, its size and kernel-measured digest (so fs-verity must be on
   it; no content is read), and the pack's EROFS image object when the pack
   names one (format version 2): its kernel-measured digest against the signed
   one (``image_layer``: stage ``image``; built from the pack if missing);
7. a tmpfs sized from the manifest, the pack unpacked into it (whose last
   read re-checks the pack's signed SHA-256; metacopy: with a stub per large
   file; or, metacopy with an image, that image mounted read-only instead:
   nothing unpacked), and overlayfs mounted read-only at the target (metacopy:
   over the objects as a data-only layer with ``verity=require``, so the
   kernel checks every large file's digest at every open from then on);
8. the writable state over it (``writable``): the deployment's own /etc and
   the shared /var (bind mounts from the sysroot's ``deploy/``) and a /tmp
   tmpfs; in live mode (``live = yes``, ``sealtree.live=1``) none of that, but
   a tmpfs upper layer: everything written is lost at shutdown.

Every outcome is one line on the console: ``sealtree-boot: booting <dep_id> ...``
or ``sealtree-boot: REFUSED <dep_id>: <stage> failed at <where>: <detail>``, the
stage chosen by the error's class and ``where``/``detail`` from its fields.  When
the default deployment is refused, the previous one is tried (and said so);
when nothing can be verified the program exits non-zero with nothing mounted.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pack import freshness
from pack.kept import kept_pack_path
from pack.keys import Keyring
from store.errors import (
    DeployError,
    DowngradeError,
    FarmMismatch,
    MountError,
    PackError,
    SealtreeError,
    SignatureError,
    VerificationError,
)
from store.ids import RawId
from store.names import show
from store.repo import Repository

from . import mounts
from .boot_config import BootConfig, Say, config_from_args
from .boot_floor import check_floor, load_floor, write_floor
from .deployment_pack import (
    check_overlay_xattrs,
    in_farm,
    large_files,
    open_deployment_pack,
    trusted_keyring,
)
from .image_layer import ImageMismatch
from .layout import deploy_layout
from .metacopy import Layout, choose_layout
from .mount_deployment import MountResult, mount_verified
from .objcheck import LargeFile
from .provision import seal_objects
from .remount import make_writable
from .state import Deployment, State, choose_deployment_for_boot, count_try, state_file
from .writable import WritableState

PREFIX = "sealtree-boot: "
BOOTED_FILE = "booted"  # in the scratch directory: the id of the deployment mounted

EXIT_BOOTED = 0
EXIT_REFUSED = 1  # no deployment could be verified and mounted
EXIT_CONFIG = 2  # the configuration or the command line is wrong


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


def _refused(stage: str, err: SealtreeError, default_where: str) -> Refused:
    """``stage`` failed: at the error's subject (else ``default_where``), for its detail."""
    where = show(err.path) if err.path is not None and err.path != "" else show(default_where)
    return Refused(stage, where, err.detail())


def _refused_in_tree(stage: str, err: SealtreeError, farm_dir: str) -> Refused:
    """A verification error's subject is a path of the tree: shown absolute, as mounted."""
    if err.path is None or err.path == "":
        return Refused(stage, show(farm_dir), err.detail())
    path = show(err.path)
    return Refused(stage, path if path.startswith("/") else "/" + path, err.detail())


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
    sealed: int = 0  # large objects given fs-verity by this boot (``seal = yes``)


def _seal(config: BootConfig, items: Sequence[LargeFile], image: str | None = None) -> int:
    """``seal = yes``: fs-verity on the large objects the verified pack names (and on its image
    object, when there is one), before they are measured; how many were sealed now.  Raises
    Refused (stage ``seal``)."""
    if not config.seal:
        return 0
    paths = {item.obj for item in items}
    if image is not None and os.path.lexists(image):  # a missing one is built and sealed later
        paths.add(image)
    try:
        return seal_objects(sorted(paths))
    except SealtreeError as err:  # VerityUnsupported, VerityError: naming the object
        raise _refused("seal", err, config.repo_path) from err
    except OSError as err:
        raise Refused("seal", show(err.filename or config.repo_path),
                      err.strerror or str(err)) from err


def verify_and_mount(config: BootConfig, repo: Repository, keyring: Keyring,
                     floor: dict[str, freshness.Accepted], dep: Deployment) -> Booted:
    """Verify ``dep`` (pack, freshness, farm, objects) and mount it at the target.

    Raises Refused naming the stage and the path; nothing is left mounted then.
    """
    commit_id = RawId(bytes.fromhex(dep.commit))
    pack_path = kept_pack_path(repo, commit_id)
    farm_dir = deploy_layout(repo).farm(dep.id)
    with contextlib.ExitStack() as stack:
        try:
            reader, verification = stack.enter_context(
                open_deployment_pack(pack_path, keyring, commit_id))
        except SignatureError as err:
            raise _refused("pack signature", err, pack_path) from err
        except (PackError, DeployError) as err:  # malformed, another commit's, missing
            raise _refused("pack", err, pack_path) from err
        except OSError as err:
            raise Refused("pack", show(err.filename or pack_path), err.strerror or str(err)) from err
        try:
            check_floor(floor, reader.ref, freshness.Accepted.of(reader.commit_id, reader.commit),
                        pack_path)
        except DowngradeError as err:
            raise _refused("freshness", err, pack_path) from err
        try:
            check_overlay_xattrs(reader)
            items = large_files(repo.objects, reader.manifest)
        except (PackError, DeployError) as err:  # malformed manifest, overlay xattrs
            raise _refused("pack", err, pack_path) from err
        # Sealing first: it gives the objects fs-verity, which the layout choice looks for.
        image = (repo.objects.image_path(RawId(reader.image.digest))
                 if reader.image is not None else None)
        sealed = _seal(config, items, image)
        try:
            layout = choose_layout(config.layout, items)
        except DeployError as err:  # MetacopyUnsupported: asked for where it cannot be
            raise _refused("layout", err, config.target) from err
        if layout is not Layout.METACOPY:
            items = in_farm(items, farm_dir)
        try:
            # The target is a directory of the initramfs: made here if the scripts did not.
            os.makedirs(config.target, exist_ok=True)
            os.makedirs(config.scratch, exist_ok=True)
            state = None if config.live else WritableState(deploy_layout(repo), dep.id)
            result = mount_verified(reader, items, farm_dir, config.target, config.scratch,
                                    policy=config.verify, api=overlay_api(),
                                    repo_path=config.repo_path, layout=layout,
                                    objects=repo.objects, dep_id=dep.id, live=config.live,
                                    state=state)
        except FarmMismatch as err:
            raise _refused_in_tree("farm", err, farm_dir) from err
        except ImageMismatch as err:  # the image object is not the one the pack signs
            raise _refused("image", err, repo.objects.root) from err
        except VerificationError as err:  # ObjectMismatch: a large object
            raise _refused_in_tree("large object", err, farm_dir) from err
        except (PackError, SignatureError) as err:  # the pack changed while it was unpacked
            raise _refused("pack", err, pack_path) from err
        except SealtreeError as err:
            raise _refused("mount", err, config.target) from err
        except OSError as err:
            raise Refused("mount", show(err.filename or config.target),
                          err.strerror or str(err)) from err
    return Booted(dep, result, tuple(k.hex()[:16] for k in verification.signers), sealed)


def _lower_said(result: MountResult) -> str:
    image = result.image
    if image is None:
        return f"{result.populate.files} files unpacked into tmpfs"
    return (f"image {image.digest.hex()[:16]} ({image.size} bytes, {image.measured}-measured"
            f"{', built now' if image.built else ''}) mounted as the lower layer")


def _say_refused(say: Say, dep: Deployment, err: Refused) -> None:
    # Names in the detail are shown already (store.names.show); a line break must still
    # never reach the console, where it could forge a line of its own.
    detail = err.detail.replace("\n", "\\x0a").replace("\r", "\\x0d")
    say(f"REFUSED {dep.id}: {err.stage} failed at {err.where}: {detail}")


def _say_booting(say: Say, booted: Booted) -> None:
    dep, check = booted.deployment, booted.result.check
    if booted.sealed:
        say(f"sealed {booted.sealed} large objects of {dep.id} with fs-verity (seal = yes)")
    say(f"verified {dep.id}: pack signed by {', '.join(booted.signers)}; {check.files} large "
        f"objects ({check.bytes} bytes: {check.kernel} measured by the kernel, {check.userspace} "
        f"digested in userspace); " + _lower_said(booted.result))
    if booted.result.layout == Layout.METACOPY.value:
        how = ("the kernel checks every large file's fs-verity digest at each open"
               if booted.result.enforced else
               "the kernel does not enforce the digests (checked once, in userspace)")
        say(f"layout metacopy (verity={booted.result.verity}): {how}")
    else:
        say("layout hardlinks: objects checked once, before mounting")
    if booted.result.state is not None:
        made = booted.result.state.created
        if made:
            say(f"created {' and '.join('/' + name for name in made)} from the deployment's tree")
        how = booted.result.state.describe()
    else:
        how = "live: writes in memory only, nothing persists"
    say(f"booting {dep.id} ({dep.ref} version {dep.version or '-'}) at {booted.result.target} "
        f"({how})")


def _record_booted(config: BootConfig, dep: Deployment) -> None:
    with contextlib.suppress(OSError):
        with open(os.path.join(config.scratch, BOOTED_FILE), "w", encoding="ascii") as handle:
            handle.write(dep.id + "\n")


# -- the sysroot ---------------------------------------------------------------------------------

def mount_sysroot(config: BootConfig, say: Say) -> None:
    """Mount the root device at the sysroot (read-write) unless it is mounted there already."""
    mounted = mounts.is_mount_point(config.sysroot) is not None
    if mounted or config.root is None:
        if not os.path.isdir(config.repo_path):
            raise DeployError("no repository (is the sysroot mounted? "
                              "give sealtree.root= or mount it first)", path=config.repo_path)
        if mounted and (config.count or config.seal or not config.live):
            _make_sysroot_writable(config, say)
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


def _make_sysroot_writable(config: BootConfig, say: Say) -> None:
    """Boot counting, sealing and the persistent /etc and /var write to the sysroot: remount it
    read-write (mount(2), so no busybox is needed; klibc's mount cannot remount a mount point
    given alone).  Counting and sealing need it; the state alone does not: it is then
    mounted as it is (read-only), and the console says so."""
    try:
        remounted = make_writable(config.sysroot)
    except OSError as err:
        if config.count or config.seal:
            raise MountError(f"cannot remount it read-write (boot counting and sealing "
                             f"write to it): {err.strerror}", path=config.sysroot) from err
        say(f"cannot remount {config.sysroot} read-write ({err.strerror}): /etc and /var "
            f"will be read-only")
        return
    if remounted:
        say(f"remounted {config.sysroot} read-write")


# -- the whole boot ----------------------------------------------------------------------------

def run_boot(config: BootConfig, say: Say) -> int:
    """Choose, verify and mount; return an exit code (``EXIT_*``)."""
    try:
        mount_sysroot(config, say)
        repo = Repository.open(config.repo_path)
        keyring = trusted_keyring(config.keys)
        floor = load_floor(config)
        if config.freshness is None:
            say("no freshness floor configured: older signed releases are not refused")
        plan = choose(config, repo)
    except SealtreeError as err:
        say(f"FAILED: {err}")
        return EXIT_REFUSED
    except OSError as err:
        say(f"FAILED: {show(err.filename or '')}: {err.strerror}")
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
