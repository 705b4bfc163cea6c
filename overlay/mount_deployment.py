"""Mounting a deployment: re-verify, tmpfs, unpack, read-only overlay; and unmounting it.

``mount_verified`` is the part the boot verifier shares: given an open,
signature-checked pack and the farm, it checks the farm and every object,
then (only then) mounts a tmpfs sized from the manifest, unpacks the pack
into it, and mounts overlayfs at the target with ``lowerdir=<tmpfs>:<farm>``
and no upper layer, so the target is read-only (``live`` adds a tmpfs upper
layer: writes live in memory and vanish on unmount).  In the metacopy layout
(``overlay.metacopy``) there is no farm: one object per content is checked
(size and digest), the large files are unpacked as stubs, and the overlay is
``lowerdir=<tmpfs>::<objects>`` with ``verity=require`` where every digest was
measured by the kernel (``verity_option``).  When the pack names its EROFS image
(format version 2), nothing is unpacked: the image object, checked against the
signed digest (``image_layer``), is mounted read-only instead of the tmpfs
(``lowerdir=<image>::<objects>``).

Once the overlay is up, the tmpfs mounts are detached from the tree
(MNT_DETACH): overlayfs holds its layers itself, so the target is the only
mount left and unmounting it releases everything.  Until then every mount is
held by an ExitStack (``Staging``), so a failure part way leaves no mount
behind.  ``Staging`` (``staging``) is also what ``deploy --mount`` uses, with
the checks it has just made instead of a second verification.  ``unmount``
unmounts only a deployment's overlay (``mounted_farms``), never another mount.

The keyring is the caller's (``deployment_pack.trusted_keyring``), never the
one the state file records: that file is as writable as the packs.
"""

from __future__ import annotations

import os
import time

from pack.kept import kept_pack_path
from pack.reader import PackReader
from pack.unpack import UnpackReport
from store.errors import MountError
from store.ids import RawId
from store.names import show
from store.objects import ObjectStore
from store.record import Mutable
from store.repo import Repository

from . import farm, mounted_farms, mounts
from .deployment_pack import deployment_objects, in_farm, open_deployment_pack, trusted_keyring
from .image_layer import ImageLayer, open_image
from .layout import deploy_layout, staging_dir
from .metacopy import Layout, distinct_objects, plan_stubs
from .objcheck import KERNEL, CheckReport, LargeFile, Policy, Verity, check_objects
from .staging import Staging, check_target, mount_error
from .state import Deployment, state_file
from .writable import StateMounts, WritableState, mount_writable, unmount_state


class MountResult(Mutable):
    __slots__ = ("target", "check", "populate", "api", "timings", "layout", "verity", "state", "image",
                 "image_source")
    _fields = __slots__
    target: str
    check: CheckReport
    populate: UnpackReport
    api: str  # which mount API mounted the overlay
    timings: dict[str, float]
    layout: str
    verity: str | None  # metacopy layout: the overlay's verity= ("require" or "off")
    state: StateMounts | None  # the writable /etc, /var, /tmp (None: live, or not asked)
    image: ImageLayer | None  # metacopy layout: the EROFS image mounted as the lower layer
    image_source: str | None  # what erofs was mounted from (the file, or a loop device)

    def __init__(self, target: str, check: CheckReport, populate: UnpackReport, api: str,
                 timings: dict[str, float] | None = None, layout: str = Layout.HARDLINKS.value,
                 verity: str | None = None, state: StateMounts | None = None,
                 image: ImageLayer | None = None, image_source: str | None = None) -> None:
        self._set_fields(target, check, populate, api, {} if timings is None else timings, layout, verity,
                         state, image, image_source)

    @property
    def lower(self) -> str:
        """What the overlay's lower layer is: ``image`` (the pack's EROFS image), ``tmpfs``
        (the pack unpacked into memory), ``tmpfs+farm`` (hardlinks layout)."""
        if self.image is not None:
            return "image"
        return "tmpfs" if self.layout == Layout.METACOPY.value else "tmpfs+farm"

    def lower_doc(self) -> dict[str, object]:
        """For ``--json``: ``lower`` and, from an image, ``image`` (its path, digest, ...)."""
        doc: dict[str, object] = {"lower": self.lower}
        if self.image is not None:
            doc["image"] = {**self.image.describe(), "source": self.image_source}
        return doc

    @property
    def enforced(self) -> bool:
        """Whether the kernel checks each large file's digest at every open (metacopy layout
        with ``verity=require``); otherwise the objects were checked once, before mounting."""
        return self.verity == "require"


def verity_option(report: CheckReport) -> str:
    """The metacopy overlay's ``verity=``: ``require`` when the kernel measured every object's
    digest (it will then check them at every open); ``off`` when some were digested in
    userspace, where the kernel cannot (a stub's digest would then fail every open)."""
    return "require" if report.userspace == 0 else "off"


def mount_verified(reader: PackReader, items: list[LargeFile], farm_dir: str | None, target: str,
                   scratch: str, *, policy: Policy = Policy.AUTO, live: bool = False,
                   workers: int | None = None, api: str = "auto", verity: Verity = KERNEL,
                   repo_path: str | None = None, layout: Layout = Layout.HARDLINKS,
                   objects: ObjectStore | None = None, dep_id: str = "lower",
                   state: WritableState | None = None) -> MountResult:
    """Check ``farm_dir`` and ``items`` (with their ``link``s into it), then mount at ``target``.

    ``state`` (never with ``live``): also mount the deployment's writable /etc, the
    shared /var and a /tmp tmpfs over it (``writable``); a failure there unmounts all.

    ``scratch`` is a directory on any filesystem where the tmpfs mounts are
    staged (``staging``).  ``target`` must not be inside ``repo_path``.  Raises
    VerificationError (FarmMismatch, ObjectMismatch) before anything is mounted if a
    check fails.  Metacopy ``layout``: no farm (``farm_dir`` unused); one object of
    ``objects`` per content is checked, the tmpfs is named ``dep_id``.
    """
    if layout is Layout.METACOPY:
        if objects is None:
            raise ValueError("the metacopy layout needs the object store")
        return _mount_metacopy(reader, items, objects, target, scratch, policy=policy, live=live,
                               workers=workers, api=api, verity=verity, repo_path=repo_path,
                               dep_id=dep_id, state=state)
    if farm_dir is None:
        raise ValueError("the hardlinks layout needs the farm")
    timings: dict[str, float] = {}
    mark = time.perf_counter()
    farm.check_farm(farm_dir, items)
    report = check_objects(items, policy, enable=False, workers=workers, verity=verity)
    timings["objects"] = time.perf_counter() - mark
    check_target(target, repo_path)
    with Staging(scratch) as stage:
        mark = time.perf_counter()
        unpacked = stage.unpack(reader)
        timings["unpack"] = time.perf_counter() - mark
        mark = time.perf_counter()
        used = stage.mount(target, farm_dir, live=live, api=api)
        held = _hold_state(stage, target, state, live)
        stage.keep()
        timings["mount"] = time.perf_counter() - mark
    return MountResult(os.path.abspath(target), report, unpacked, used, timings, state=held)


def _hold_state(stage: Staging, target: str, state: WritableState | None,
                live: bool) -> StateMounts | None:
    if state is None or live:
        return None
    return stage.hold(mount_writable(target, state))


def _mount_metacopy(reader: PackReader, items: list[LargeFile], objects: ObjectStore, target: str,
                    scratch: str, *, policy: Policy, live: bool, workers: int | None, api: str,
                    verity: Verity, repo_path: str | None, dep_id: str,
                    state: WritableState | None) -> MountResult:
    """``mount_verified`` in the metacopy layout: objects checked by size and digest only
    (under policy ``kernel``: measured, so fs-verity must be on each), never enabled here;
    the lower layer is the pack's EROFS image (checked by ``open_image``) when the pack
    names one, else the pack unpacked with stubs into a tmpfs."""
    timings: dict[str, float] = {}
    mark = time.perf_counter()
    plan = None if reader.image is not None else plan_stubs(objects, items)
    checked = distinct_objects(items) if plan is None else plan.objects
    report = check_objects(checked, policy, enable=False, workers=workers, verity=verity,
                           inode_meta=False)
    timings["objects"] = time.perf_counter() - mark
    check_target(target, repo_path)
    option = verity_option(report)
    image = None
    if reader.image is not None:
        mark = time.perf_counter()
        image = open_image(objects, reader, policy, verity=verity)
        timings["image"] = time.perf_counter() - mark
    try:
        with Staging(scratch) as stage:
            mark = time.perf_counter()
            source = None
            if image is not None:
                source = stage.image(image.fd, dep_id)
                unpacked = UnpackReport()
            else:
                unpacked = stage.unpack(reader, stubs=plan, large=items, name=dep_id)
                timings["unpack"] = time.perf_counter() - mark
                mark = time.perf_counter()
            used = stage.mount(target, None, data=objects.root, verity=option, live=live, api=api)
            held = _hold_state(stage, target, state, live)
            stage.keep()
            timings["mount"] = time.perf_counter() - mark
    finally:
        if image is not None:
            image.close()
    return MountResult(os.path.abspath(target), report, unpacked, used, timings,
                       layout=Layout.METACOPY.value, verity=option, state=held, image=image,
                       image_source=source)


def mount_deployment(repo: Repository, dep_id: str, target: str, *, keys_dir: str | None = None,
                     policy: Policy = Policy.AUTO, live: bool = False, workers: int | None = None,
                     api: str = "auto", verity: Verity = KERNEL,
                     layout: Layout | None = None,
                     with_state: bool = False) -> tuple[Deployment, MountResult]:
    """Re-verify deployment ``dep_id`` (pack signature, farm, objects) and mount it at ``target``.

    The pack's signatures are checked against the keyring in ``keys_dir``, else the
    system keyring (``layout.SYSTEM_KEYRING``; NoKeyring when it does not exist), never
    against the keyring the state file records.  ``layout`` None: the deployment's own
    (a hardlinks deployment can also be mounted in the metacopy layout: it needs
    nothing on disk but the objects; ``auto`` as in ``deploy``).  ``with_state`` (what
    ``sealtree mount`` does unless ``--live`` or ``--read-only``): the deployment's writable
    /etc, the shared /var and a /tmp tmpfs are mounted over it too (``writable``).
    """
    keyring = trusted_keyring(keys_dir)
    states = state_file(repo)
    dep = states.read().find(dep_id)
    commit_id = RawId(bytes.fromhex(dep.commit))
    farm_dir = deploy_layout(repo).farm(dep.id)
    started = time.perf_counter()
    with open_deployment_pack(kept_pack_path(repo, commit_id), keyring, commit_id) as (reader, _v):
        pack_time = time.perf_counter() - started
        requested = Layout(dep.layout) if layout is None else layout
        chosen, items, _listed = deployment_objects(reader, repo.objects, requested)
        if chosen is not Layout.METACOPY:
            items = in_farm(items, farm_dir)
        result = mount_verified(reader, items, farm_dir, target, staging_dir(repo),
                                policy=policy, live=live, workers=workers, api=api, verity=verity,
                                repo_path=repo.path, layout=chosen, objects=repo.objects,
                                dep_id=dep.id,
                                state=(WritableState(deploy_layout(repo), dep.id)
                                       if with_state and not live else None))
    result.timings["pack"] = pack_time
    real = os.path.realpath(target)
    try:
        with states.update() as state:
            current = state.get(dep.id)
            current.mounted_at = sorted(set(current.mounted_at) | {real})
    except BaseException:
        mounts.umount(target, mounts.MNT_DETACH)  # detaches the state mounts below it too
        raise
    return dep, result


def unmount(repo: Repository | None, target: str, *, lazy: bool = False) -> Deployment | None:
    """Unmount the deployment's overlay at ``target`` (and first its writable state mounted
    over it, ``writable.unmount_state``); with ``repo``, it must be one of that repository's
    deployments, and the state forgets the mount.

    Only a deployment's overlay is unmounted (its lowest layer a farm,
    ``mounted_farms.deployment_mount``), never another mount that happens to be there.
    Returns the deployment, when ``repo`` is given and the state lists it.
    """
    real = os.path.realpath(target)
    info = mounts.is_mount_point(real)
    if info is None:
        if repo is not None:
            _forget_mount(repo, real, None)  # a record of a mount gone behind our back
        raise MountError("not mounted", path=target)
    shown = mounted_farms.deployment_mount(info)
    if shown is None:
        what = "an overlay" if info.fstype == "overlay" else f"a {info.fstype} mount"
        raise MountError(f"is {what} that is not a sealtree deployment's; "
                         f"not unmounting it", path=target)
    if repo is not None and not mounted_farms.same_directory(shown.farm_parent,
                                                             deploy_layout(repo).root):
        raise MountError(f"shows a deployment of another repository "
                         f"({show(os.path.dirname(shown.farm_parent))}), not of {show(repo.path)}",
                         path=target)
    try:
        unmount_state(real, lazy=lazy)  # the writable /etc, /var, /tmp over it first
        mounts.umount(real, mounts.MNT_DETACH if lazy else 0)
    except OSError as err:
        raise mount_error("unmounting", err) from err
    return _forget_mount(repo, real, shown.dep_id) if repo is not None else None


def _forget_mount(repo: Repository, real: str, dep_id: str | None) -> Deployment | None:
    """Drop ``real`` from the recorded mounts; return the deployment ``dep_id`` (else the one
    that recorded it), or None if the state lists neither."""
    found = None
    with state_file(repo).update() as state:
        for dep in state.deployments:
            if real in dep.mounted_at:
                dep.mounted_at.remove(real)
                found = found or dep
            if dep.id == dep_id:
                found = dep
    return found
