"""Mounting a deployment: re-verify, tmpfs, unpack, read-only overlay; and unmounting it.

``mount_verified`` is the part the boot verifier shares: given an open,
signature-checked pack and the farm, it checks the farm and every object,
then (only then) mounts a tmpfs sized from the manifest, unpacks the pack
into it, and mounts overlayfs at the target with ``lowerdir=<tmpfs>:<farm>``
and no upper layer, so the target is read-only (``live`` adds a tmpfs upper
layer: writes live in memory and vanish on unmount).

Once the overlay is up, the tmpfs mounts are detached from the tree
(MNT_DETACH): overlayfs holds its layers itself, so the target is the only
mount left and unmounting it releases everything.  Until then every mount is
held by an ExitStack (``Staging``), so a failure part way leaves no mount
behind.  ``Staging`` is also what ``deploy --mount`` uses, with the checks it
has just made instead of a second verification.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass, field

from pack.importer import kept_pack_path
from pack.keys import Keyring
from pack.reader import PackReader
from pack.unpack import UnpackReport
from store.errors import MountError
from store.ids import RawId
from store.repo import Repository

from . import farm, mounts
from .deploy import deploy_root, large_files, open_deployment_pack, state_file
from .objcheck import KERNEL, CheckReport, LargeFile, Policy, Verity, check_objects
from .populate import TmpfsSize, populate, tmpfs_size
from .state import Deployment


@dataclass
class MountResult:
    target: str
    check: CheckReport
    populate: UnpackReport
    api: str  # which mount API mounted the overlay
    timings: dict[str, float] = field(default_factory=dict)


def _mount_error(what: str, err: OSError) -> MountError:
    where = err.filename or "?"
    return MountError(f"{where}: {what} failed: {err.strerror}", path=where)


def check_target(target: str) -> None:
    """The mount point must be a directory that is not a mount point already."""
    if not os.path.isdir(target):
        raise MountError(f"{target}: not a directory", path=target)
    if mounts.is_mount_point(target) is not None:
        raise MountError(f"{target}: already a mount point; unmount it first", path=target)


class Staging:
    """The tmpfs layers of one overlay mount, made under a private directory of ``scratch``.

    Use as a context manager around the whole mount.  ``unpack`` mounts the
    lower tmpfs and unpacks the pack into it; ``mount`` mounts the overlay at
    the target; ``keep`` (the last step, once everything else succeeded) keeps
    the overlay.  Leaving the block detaches the staging tmpfs mounts from the
    tree in any case (overlayfs holds its layers itself) and, unless ``keep``
    was called, unmounts the overlay too: a failure at any point leaves no mount.
    """

    def __init__(self, scratch: str) -> None:
        os.makedirs(scratch, exist_ok=True)
        self.work = tempfile.mkdtemp(prefix="mount-", dir=scratch)
        self._stack = contextlib.ExitStack()
        self._detach: list[str] = []
        self.lower: str | None = None

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._stack.close()  # not kept: unmount the overlay and the tmpfs layers
        finally:
            # The staging mounts can go from the tree now (or, after a failure, were
            # already detached by the ExitStack).
            for path in reversed(self._detach):
                with contextlib.suppress(OSError):
                    mounts.umount(path, mounts.MNT_DETACH)
            for path in reversed(self._detach):
                with contextlib.suppress(OSError):
                    os.rmdir(path)
            with contextlib.suppress(OSError):
                os.rmdir(self.work)

    def _tmpfs(self, name: str, what: str, size: TmpfsSize | None = None) -> str:
        path = os.path.join(self.work, name)
        os.mkdir(path, 0o700)
        try:
            if size is None:  # no size: ephemeral writes may use tmpfs's default (half of RAM)
                self._stack.enter_context(mounts.tmpfs(path))
            else:
                self._stack.enter_context(mounts.tmpfs(path, size=size.bytes, inodes=size.inodes))
        except OSError as err:
            os.rmdir(path)
            raise _mount_error(f"mounting the {what}", err) from err
        self._detach.append(path)
        return path

    def unpack(self, reader: PackReader) -> UnpackReport:
        """Mount the lower tmpfs, sized from the manifest, and unpack the pack into it.

        This reads the pack's data section: it raises PackError unless the whole
        pack checks out (every inline file, and the file's SHA-256 when bound).
        """
        self.lower = self._tmpfs("lower", "tmpfs", tmpfs_size(reader.manifest))
        return populate(reader, self.lower)

    def mount(self, target: str, farm_dir: str, *, live: bool = False, api: str = "auto") -> str:
        """Mount the overlay of the unpacked tmpfs over ``farm_dir`` at ``target``; return the API."""
        assert self.lower is not None, "unpack() first"
        spec = mounts.OverlaySpec([self.lower, farm_dir])
        if live:
            upper_fs = self._tmpfs("upper", "upper tmpfs")
            os.mkdir(os.path.join(upper_fs, "upper"), 0o755)
            os.mkdir(os.path.join(upper_fs, "work"), 0o700)
            spec = mounts.OverlaySpec([self.lower, farm_dir], os.path.join(upper_fs, "upper"),
                                      os.path.join(upper_fs, "work"))
        merged = mounts.overlay(target, spec, api)
        try:
            self._stack.enter_context(merged)
        except OSError as err:
            raise _mount_error("mounting the overlay", err) from err
        return str(merged.result)

    def keep(self) -> None:
        """Success: keep every mount (the staging ones are still detached on exit)."""
        self._stack.pop_all()


def mount_verified(reader: PackReader, items: list[LargeFile], farm_dir: str, target: str,
                   scratch: str, *, policy: Policy = Policy.AUTO, live: bool = False,
                   workers: int | None = None, api: str = "auto", verity: Verity = KERNEL
                   ) -> MountResult:
    """Check ``farm_dir`` and ``items`` (with their ``link``s into it), then mount at ``target``.

    ``scratch`` is an existing directory on any filesystem where the tmpfs
    mounts are made before being detached (left empty).  Raises
    VerificationError before anything is mounted if a check fails.
    """
    timings: dict[str, float] = {}
    mark = time.perf_counter()
    farm.check_farm(farm_dir, items)
    report = check_objects(items, policy, enable=False, workers=workers, verity=verity)
    timings["objects"] = time.perf_counter() - mark
    check_target(target)
    with Staging(scratch) as stage:
        mark = time.perf_counter()
        unpacked = stage.unpack(reader)
        timings["unpack"] = time.perf_counter() - mark
        mark = time.perf_counter()
        used = stage.mount(target, farm_dir, live=live, api=api)
        stage.keep()
        timings["mount"] = time.perf_counter() - mark
    return MountResult(os.path.abspath(target), report, unpacked, used, timings)


def mount_deployment(repo: Repository, name: str, target: str, *, keys_dir: str | None = None,
                     policy: Policy = Policy.AUTO, live: bool = False, workers: int | None = None,
                     api: str = "auto", verity: Verity = KERNEL) -> tuple[Deployment, MountResult]:
    """Re-verify deployment ``name`` (pack signature, farm, objects) and mount it at ``target``."""
    states = state_file(repo)
    dep = states.read().find(name)
    keyring = Keyring.load(keys_dir or dep.keys)
    commit_id = RawId(bytes.fromhex(dep.commit))
    farm_dir = os.path.join(deploy_root(repo), dep.id)
    started = time.perf_counter()
    with open_deployment_pack(kept_pack_path(repo, commit_id), keyring, commit_id) as (reader, _v):
        pack_time = time.perf_counter() - started
        items = large_files(repo.objects, reader.manifest, farm_dir)
        result = mount_verified(reader, items, farm_dir, target, os.path.join(repo.path, "tmp"),
                                policy=policy, live=live, workers=workers, api=api, verity=verity)
    result.timings["pack"] = pack_time
    real = os.path.realpath(target)
    try:
        with states.update() as state:
            current = state.get(dep.id)
            current.mounted_at = sorted(set(current.mounted_at) | {real})
    except BaseException:
        mounts.umount(target, mounts.MNT_DETACH)
        raise
    return dep, result


def unmount(repo: Repository | None, target: str, *, lazy: bool = False) -> Deployment | None:
    """Unmount a deployment mounted at ``target`` and forget it in the state (if ``repo``)."""
    real = os.path.realpath(target)
    info = mounts.is_mount_point(real)
    if info is not None and info.fstype != "overlay":
        raise MountError(f"{target}: is a {info.fstype} mount, not a deployment's overlay", path=target)
    dep = None
    if repo is not None:
        with state_file(repo).update() as state:
            owners = [d for d in state.deployments if real in d.mounted_at]
            if info is None and not owners:
                raise MountError(f"{target}: not mounted", path=target)
            if info is not None:
                try:
                    mounts.umount(real, mounts.MNT_DETACH if lazy else 0)
                except OSError as err:
                    raise _mount_error("unmounting", err) from err
            for owner in owners:
                owner.mounted_at.remove(real)
                dep = owner
        return dep
    if info is None:
        raise MountError(f"{target}: not mounted", path=target)
    try:
        mounts.umount(real, mounts.MNT_DETACH if lazy else 0)
    except OSError as err:
        raise _mount_error("unmounting", err) from err
    return None


def live_mounts(dep: Deployment) -> list[str]:
    """Where ``dep`` is recorded as mounted and an overlay is indeed mounted there now."""
    out = []
    for path in dep.mounted_at:
        info = mounts.is_mount_point(path)
        if info is not None and info.fstype == "overlay":
            out.append(path)
    return out
