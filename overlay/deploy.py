"""Deploying a commit: verify its signed pack and every large object, build the farm, record
it, and (``sealtree deploy --mount``) mount it.

In order, and nothing is published before the checks pass:

1. the kept pack ``packs/<commit>.pack`` is verified: signatures against the
   keyring the caller names (``deployment_pack``), then the whole pack (header, commit, manifest, every inline
   file's digest) bound to the signed SHA-256; its commit must be the one
   asked for, and it must not be older than the newest pack accepted for its
   ref (rollback protection, ``pack.freshness``) unless a downgrade is allowed;
2. every large object the manifest names is checked (``objcheck``): inode
   metadata, and its digest (kernel-measured, or userspace by policy), with
   fs-verity enabled where the filesystem can;
3. under the state lock: the farm ``deploy/<dep_id>/`` is built under a
   temporary name and renamed into place once 1 and 2 have passed (the
   layout is ``overlay.layout``'s), the freshness record is updated, then
   the state file records the deployment (and makes it the default, with
   boot counting when asked).

In the metacopy layout (``overlay.metacopy``; ``layout`` ``auto`` picks it where
the kernel and the objects' filesystem can enforce it) there is no farm: step 2
checks one object per distinct content (its size and digest: the stubs carry
the metadata): those of the pack's signed image object list when it has one
(format version 3; its manifest is then not decoded by a deploy with a mount
target: its /etc, /var and boot files are copied out of the mounted image,
``image_tree``).  The overlay's lower layer is the pack's EROFS image (format
version 2 and later: the image object, built once if missing, its fs-verity digest
checked against the signed one, ``image_layer``), mounted read-only, with no pass
over the pack's data; for a pack without one (format version 1) a mount unpacks
every large file as a stub redirected into ``objects/``.  Under policy ``kernel``
the objects are checked on a thread while the image is mounted and the state is
built (each check is a few system calls waiting on the disk); nothing is published
before they pass.  The state records which layout the deployment has.

Steps 1 (the pack's data section), 2 and the farm run at once, in separate
processes.  With a mount target the pack's data is unpacked into a staging
tmpfs (a private directory under ``<repo>/tmp``, never the target) as it is
checked, and the overlay is mounted at the target after step 3's checks, before
the state is written (which names the mount).  Everything is verified once:
mounting later with ``mount_deployment`` verifies all of it again.

The state file is written last: a deployment is recorded (and made the
default) only once everything else, the mount and the freshness record
included, has succeeded; a failure before leaves no farm, no mount and no record.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence

from pack import freshness
from pack.kept import freshness_path, kept_pack_path
from pack.reader import PackReader
from pack.unpack import UnpackReport
from store.errors import DeployError, SealtreeError, VerificationError
from store.ids import RawId, to_hex
from store.objects import ObjectStore
from store.record import Mutable
from store.remove import remove_tree
from store.repo import Repository

from . import deploy_state, farm, mounted_farms
from .deployment_pack import deployment_objects, open_deployment_pack, trusted_keyring
from .image_layer import ImageLayer, open_image
from .image_tree import MountedImage
from .layout import DeployLayout, deploy_layout, staging_dir
from .metacopy import Layout, distinct_objects, plan_stubs
from .mount_deployment import MountResult, verity_option
from .objcheck import KERNEL, CheckReport, LargeFile, PendingCheck, Policy, Verity, start_checks
from .staging import Staging, check_target
from .state import Deployment, State, StateFile, check_tries, state_file
from .writable import WritableState, mount_writable


def deployment_present(repo: Repository, dep: Deployment) -> bool:
    """Whether what the deployment needs on disk is there: its farm (hardlinks layout), the
    objects directory (metacopy layout)."""
    if dep.layout == Layout.METACOPY.value:
        return os.path.isdir(repo.objects.root)
    return os.path.isdir(deploy_layout(repo).farm(dep.id))


class MetacopyLower(Mutable):
    """The metacopy layout's lower layer as deploy made it: the checked image (None: a pack
    without one, unpacked into a tmpfs) and what erofs was mounted from (None: no mount)."""

    __slots__ = ("image", "source")
    _fields = __slots__
    image: ImageLayer | None
    source: str | None

    def __init__(self, image: ImageLayer | None = None, source: str | None = None) -> None:
        self._set_fields(image, source)


class DeployResult(Mutable):
    __slots__ = ("deployment", "path", "check", "timings", "mount", "state", "image")
    _fields = __slots__
    deployment: Deployment  # its ``id`` is the dep_id; ``layout`` the layout chosen
    path: str  # the farm (hardlinks layout), the objects directory (metacopy layout)
    check: CheckReport
    timings: dict[str, float]
    mount: MountResult | None  # when deployed with a mount target
    state: deploy_state.Prepared | None  # its writable /etc, the /var seed, boot files
    image: ImageLayer | None  # metacopy layout: the pack's image, checked (and mounted)

    def __init__(self, deployment: Deployment, path: str, check: CheckReport, timings: dict[str, float],
                 mount: MountResult | None = None, state: deploy_state.Prepared | None = None,
                 image: ImageLayer | None = None) -> None:
        self._set_fields(deployment, path, check, timings, mount, state, image)


def deploy(repo: Repository, rev: str, keys_dir: str | None, *, policy: Policy = Policy.AUTO,
           make_default: bool = True, tries: int | None = None, allow_downgrade: bool = False,
           workers: int | None = None, verity: Verity = KERNEL, target: str | None = None,
           live: bool = False, api: str = "auto", layout: Layout = Layout.AUTO,
           with_state: bool = False) -> DeployResult:
    """Verify and deploy ``rev`` (see the module docstring); with ``target``, mount it there too.

    Mounting here is ``mount_deployment`` without its second verification: the
    objects and the farm are the ones this call has just checked and built.
    The overlay is mounted at ``target`` only once every check has passed; on
    any failure no mount is left, no farm and no record.  ``keys_dir`` None: the
    system keyring (``layout.SYSTEM_KEYRING``).  ``tries`` None: boots are not
    counted (the CLI's default is ``state.DEFAULT_TRIES``).  ``layout``: see the module
    docstring; the metacopy layout under policy ``kernel`` needs fs-verity on every
    object (enabled here where it is off), and is mounted with ``verity=require`` when
    every object's digest was measured by the kernel, else with ``verity=off`` (the
    result's ``mount.enforced`` says which).  The deployment's writable /etc (copied,
    or merged with the default's), the shared /var's first seed and its boot files are
    made in any case (``deploy_state``); with a ``target``, ``with_state`` mounts them
    over the tree (``writable``; never with ``live``), as ``sealtree deploy --mount`` does.
    Raises SignatureError (NoKeyring),
    DowngradeError, PackError, VerificationError (FarmMismatch, ObjectMismatch),
    DeployError (MetacopyUnsupported, StateError, EtcMergeError), MountError.
    """
    timings: dict[str, float] = {}
    started = time.perf_counter()
    check_tries(tries)  # now, not once the deployment is about to be recorded
    commit_id = repo.resolve(rev)
    keyring = trusted_keyring(keys_dir)
    pack_path = kept_pack_path(repo, commit_id)
    fresh = freshness_path(repo)
    states = state_file(repo)
    root = deploy_layout(repo).root
    mounted = None
    lower = MetacopyLower()
    if target is not None:
        check_target(target, repo.path)  # before any work
    elif live:
        raise DeployError("a live deployment needs a mount target")
    published: list[str] = []
    prepared: list[deploy_state.Prepared] = []
    try:
        with contextlib.ExitStack() as outer:
            outer.enter_context(repo.shared())  # prune waits: the objects checked stay
            stage = outer.enter_context(Staging(staging_dir(repo))) if target else None
            with open_deployment_pack(pack_path, keyring, commit_id) as (reader, verification), \
                    states.update() as state:
                candidate = freshness.Accepted.of(reader.commit_id, reader.commit)
                freshness.check(fresh, reader.ref, candidate, allow_downgrade=allow_downgrade)
                chosen, items, listed = deployment_objects(reader, repo.objects, layout)
                timings["pack"] = time.perf_counter() - started
                in_use = mounted_farms.deployment_mounts(root)
                keep = {d.id for d in state.deployments} | set(in_use)
                farm.clean_leftovers(root, keep=keep)
                deploy_state.clean_leftovers(DeployLayout(root), keep)
                dep_id = state.allocate_id(to_hex(commit_id))
                while os.path.lexists(DeployLayout(root).farm(dep_id)):  # unrecorded, but mounted
                    dep_id = state.allocate_id(to_hex(commit_id))
                pending = None
                if chosen is Layout.METACOPY:
                    pending, unpacked, lower = _start_metacopy(
                        reader, items, repo.objects, dep_id, stage, timings, outer,
                        policy=policy, workers=workers, verity=verity)
                    path = repo.objects.root
                else:
                    report, unpacked, path = _verify_and_build(
                        reader, items, root, dep_id, stage, timings,
                        policy=policy, workers=workers, verity=verity)
                    published.append(path)
                # Its /etc, /var, boot files, under temporary names (from the pack's rows and
                # inline files, each checked against the signed manifest as it is read; or, for
                # a pack that lists its image's objects, from its mounted image: that pack's
                # manifest is never decoded), published once every check has passed.
                mark = time.perf_counter()
                image = (MountedImage(stage.lower, repo.objects.root)
                         if listed and stage is not None and stage.lower is not None else None)
                try:
                    made = deploy_state.prepare(repo, DeployLayout(root), reader,
                                                None if listed else items, dep_id, state,
                                                image=image)
                except VerificationError:  # an object read for it: the check names it better
                    if pending is not None:
                        pending.wait()
                    raise
                prepared.append(made)
                timings["state"] = time.perf_counter() - mark
                if pending is not None:
                    mark = time.perf_counter()
                    report = pending.wait()
                    timings["digests"] = time.perf_counter() - mark
                made.publish()
                deployment = Deployment(
                    id=dep_id, commit=to_hex(commit_id), ref=reader.ref,
                    version=reader.commit.version, created=int(time.time()),
                    pack=os.path.relpath(pack_path, repo.path),
                    pack_sha256=verification.sha256.hex(), keys=os.path.abspath(keyring.path),
                    layout=chosen.value)
                if stage is not None and target is not None and unpacked is not None:
                    # Every check has passed: only now is anything mounted at the target.
                    mark = time.perf_counter()
                    if chosen is Layout.METACOPY:
                        option = verity_option(report)
                        used = stage.mount(target, None, data=path, verity=option, live=live,
                                           api=api)
                    else:
                        option = None
                        used = stage.mount(target, path, live=live, api=api)
                    held = None
                    if with_state and not live:
                        held = stage.hold(mount_writable(target, WritableState(DeployLayout(root),
                                                                              dep_id)))
                    timings["mount"] = time.perf_counter() - mark
                    deployment.mounted_at = [os.path.realpath(target)]
                    mounted = MountResult(os.path.abspath(target), report, unpacked, used,
                                          layout=chosen.value, verity=option, state=held,
                                          image=lower.image, image_source=lower.source)
                with freshness.locked(fresh):
                    freshness.record(fresh, deployment.ref, candidate)
                # Last: the state (written when this block ends) records the deployment.
                state.add(deployment, make_default=make_default, tries=tries)
            if stage is not None:
                stage.keep()  # the state file names the mount now: keep it
    except BaseException:
        for farm_path in published:
            _forget_farm(states, root, farm_path)
        for made in prepared:
            _forget_state(states, made)
        raise
    timings["total"] = time.perf_counter() - started
    if mounted is not None:
        mounted.timings = timings
    return DeployResult(deployment, path, report, timings, mounted,
                        prepared[0] if prepared else None, lower.image)


def _verify_and_build(reader: PackReader, items: list[LargeFile], root: str, dep_id: str,
                      stage: Staging | None, timings: dict[str, float], *, policy: Policy,
                      workers: int | None, verity: Verity
                      ) -> tuple[CheckReport, UnpackReport | None, str]:
    """Check every object and the pack's data, build the farm; return it published.

    Three things at once, each in its own process: worker processes check the
    objects; a child builds the farm under its temporary name; this process
    reads the pack's data section (checking every inline file and the file's
    SHA-256), unpacking it into the staging tmpfs when there is one.  The farm
    gets its final name only once all of it has passed.
    """
    mark = time.perf_counter()
    with start_checks(items, policy, enable=True, workers=workers, verity=verity) as pending:
        timings["objects"] = time.perf_counter() - mark
        if pending.failed():
            pending.wait()  # raises: a bad object is found before anything is built
        building = farm.FarmBuilder(root, dep_id, items)
        unpacked = None
        try:
            mark = time.perf_counter()
            if stage is not None:
                unpacked = stage.unpack(reader)
            else:
                reader.check_data()
            timings["unpack" if stage is not None else "pack_data"] = time.perf_counter() - mark
            mark = time.perf_counter()
            report = pending.wait()  # before the farm's verdict: a bad object explains more
            timings["digests"] = time.perf_counter() - mark
            mark = time.perf_counter()
            work = building.wait(pending.identities)
            timings["farm"] = time.perf_counter() - mark
        except BaseException:
            building.cancel()
            raise
        try:
            mark = time.perf_counter()
            path = farm.publish_farm(work, root, dep_id)
            timings["publish"] = time.perf_counter() - mark
        except BaseException:
            with contextlib.suppress(OSError):
                remove_tree(work)
            raise
    return report, unpacked, path


def _start_metacopy(reader: PackReader, items: list[LargeFile], objects: ObjectStore,
                    dep_id: str, stage: Staging | None, timings: dict[str, float],
                    checks: contextlib.ExitStack, *, policy: Policy, workers: int | None,
                    verity: Verity) -> tuple[PendingCheck, UnpackReport | None, MetacopyLower]:
    """The metacopy layout's ``_verify_and_build``: start checking one object per content
    (size and digest; fs-verity enabled where it can be) while the lower layer is made: the
    pack's EROFS image checked (``image_layer``, built once if missing) and mounted in the
    staging directory, named after the deployment; or, for a pack without an image (format
    version 1), the pack's data read (and unpacked with the stubs into the staging tmpfs); no
    farm.  The checks (held by ``checks``) may still be under way: the caller waits for them
    (``PendingCheck.wait``) before anything it built is published."""
    lower = MetacopyLower()
    plan = None if reader.image is not None else plan_stubs(objects, items)
    mark = time.perf_counter()
    checked = distinct_objects(items) if plan is None else plan.objects
    pending = checks.enter_context(start_checks(checked, policy, enable=True, workers=workers,
                                                verity=verity, inode_meta=False))
    timings["objects"] = time.perf_counter() - mark
    if pending.failed():
        pending.wait()  # raises: a bad object is found before anything is unpacked
    unpacked = None
    mark = time.perf_counter()
    if plan is None:
        # The image is the tree (signed by its digest): no pass over the pack's data.
        try:
            lower.image = open_image(objects, reader, policy, verity=verity, enable=True)
        except VerificationError:
            pending.wait()  # a bad object says more than the image does: it goes first
            raise
        try:
            timings["image"] = time.perf_counter() - mark
            mark = time.perf_counter()
            if stage is not None:
                lower.source = stage.image(lower.image.fd, dep_id)
                unpacked = UnpackReport()
                timings["image_mount"] = time.perf_counter() - mark
        finally:
            lower.image.close()
    elif stage is not None:
        unpacked = stage.unpack(reader, stubs=plan, large=items, name=dep_id)
        timings["unpack"] = time.perf_counter() - mark
    else:
        reader.check_data()
        timings["pack_data"] = time.perf_counter() - mark
    return pending, unpacked, lower


def _forget_farm(states: StateFile, root: str, path: str) -> None:
    """After a failure: remove a published farm unless the state file names it."""
    dep_id = os.path.basename(path)
    with contextlib.suppress(SealtreeError, OSError):  # the next deploy removes it then
        if not any(d.id == dep_id for d in states.read().deployments):
            farm.remove_farm(root, dep_id)


def _forget_state(states: StateFile, made: deploy_state.Prepared) -> None:
    """After a failure: remove the state ``made`` published unless the state file names it."""
    with contextlib.suppress(SealtreeError, OSError):
        if not any(d.id == made.dep_id for d in states.read().deployments):
            made.discard()


def undeploy(repo: Repository, dep_id: str) -> Deployment:
    """Forget a deployment and remove its farm, its writable /etc and its boot files (refused
    while it is mounted or the default); the shared /var stays.

    The farm is removed iteratively (any depth); one that cannot be removed now is
    left as ``.trash-<dep_id>`` for the next deploy, which never fails on it."""
    root = deploy_layout(repo).root
    with state_file(repo).update() as state:
        dep = state.find(dep_id)
        # Mounted is what mountinfo says (an overlay over its farm), wherever that is now.
        dep.mounted_at = mounted_farms.deployment_mounts(root).get(dep.id, [])
        state.remove(dep.id)
    farm.remove_farm(root, dep.id)
    deploy_state.remove(DeployLayout(root), dep.id)
    return dep


def deployment_roots(repo: Repository) -> Sequence[tuple[str, RawId]]:
    """Commits deployments need (for prune and fsck): one root per deployment."""
    states: StateFile = state_file(repo)
    if not os.path.exists(states.path):
        return []
    state: State = states.read()
    return [(f"deployment {d.id}", RawId(bytes.fromhex(d.commit))) for d in state.deployments]
