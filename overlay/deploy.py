"""Deploying a commit: verify its signed pack and every large object, build the farm, record
it, and (``sealtree deploy --mount``) mount it.

In order, and nothing is published before the checks pass:

1. the kept pack ``packs/<commit>.pack`` is verified: signatures against the
   keyring, then the whole pack (header, commit, manifest, every inline
   file's digest) bound to the signed SHA-256; its commit must be the one
   asked for, and it must not be older than the newest pack accepted for its
   ref (rollback protection, ``pack.freshness``) unless a downgrade is allowed;
2. every large object the manifest names is checked (``objcheck``): inode
   metadata, and its digest (kernel-measured, or userspace by policy), with
   fs-verity enabled where the filesystem can;
3. under the state lock: the farm ``deploy/<commit>.<serial>/`` is built
   under a temporary name and renamed into place once 1 and 2 have passed,
   then the state file records the deployment (and makes it the default,
   with boot counting when asked).

Steps 1 (the pack's data section), 2 and the farm run at once, in separate
processes.  With a mount target the pack's data is unpacked into a staging
tmpfs (a private directory under ``<repo>/tmp``, never the target) as it is
checked, and the overlay is mounted at the target after step 3's checks, before
the state is written (which names the mount).  Everything is verified once:
mounting later with ``mount_deployment`` verifies all of it again.

``open_deployment_pack`` and ``large_files`` are shared with mounting and the
boot verifier.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pack import freshness
from pack.importer import freshness_path, kept_pack_path
from pack.keys import Keyring
from pack.manifest import Manifest
from pack.reader import PackReader
from pack.verify import Verification, open_verified
from store.errors import DeployError, DowngradeError, PackError, SignatureError, VerificationError
from store.ids import RawId, to_hex
from store.model import Kind
from store.objects import ObjectStore
from store.repo import Repository

from . import farm, inuse
from .objcheck import KERNEL, CheckReport, LargeFile, Policy, Verity, show, start_checks
from .staging import Staging, check_target
from .state import Deployment, State, StateFile

if TYPE_CHECKING:
    from pack.unpack import UnpackReport

    from .mount_deployment import MountResult

DEPLOY_DIR = "deploy"
# overlayfs interprets these xattrs on its layers; a tree carrying them would not
# show as committed (and could hide or redirect files), so it is refused.
OVERLAY_XATTR_PREFIXES = (b"trusted.overlay.", b"user.overlay.")


def deploy_root(repo: Repository) -> str:
    return os.path.join(repo.path, DEPLOY_DIR)


def state_file(repo: Repository) -> StateFile:
    return StateFile(deploy_root(repo))


@contextlib.contextmanager
def open_deployment_pack(pack_path: str, keyring: Keyring, commit_id: RawId
                         ) -> Iterator[tuple[PackReader, Verification]]:
    """Open a pack after checking its signatures; it must be the pack of ``commit_id``.

    What the reader yields is only final once ``reader.entries()`` is exhausted.
    """
    if not os.path.exists(pack_path):
        raise DeployError(f"no pack kept for commit {to_hex(commit_id)}; import a signed "
                          f"pack of it first (sealtree pack import PACK --keys DIR)", path=pack_path)
    try:
        with open_verified(pack_path, keyring) as (reader, verification):
            if reader.commit_id != commit_id:
                raise VerificationError(f"the pack is of commit "
                                        f"{to_hex(reader.commit_id)}, expected {to_hex(commit_id)}",
                                        path=pack_path)
            check_overlay_xattrs(reader)
            yield reader, verification
    except DowngradeError:
        raise
    except SignatureError as err:  # name the pack: the message alone names only its digest
        raise SignatureError(f"{err}", path=pack_path) from err
    except PackError as err:
        if pack_path in str(err):
            raise
        raise PackError(f"{err}", offset=err.offset, path=pack_path) from err


def check_overlay_xattrs(reader: PackReader) -> None:
    metas = [(b"(root directory)", reader.commit.root_meta)]
    metas += [(row.path, row.entry.meta) for row in reader.manifest.entries if row.entry.meta.xattrs]
    for path, meta in metas:
        for name, _value in meta.xattrs:
            if name.startswith(OVERLAY_XATTR_PREFIXES):
                raise DeployError(f"{show(path)}: xattr {show(name)} would be interpreted by "
                                  f"overlayfs; such a tree cannot be deployed", path=show(path))


def large_files(objects: ObjectStore, manifest: Manifest, farm_dir: str | None = None) -> list[LargeFile]:
    """The manifest's large files with their object paths (and farm paths when given)."""
    base = os.fsencode(farm_dir) + b"/" if farm_dir is not None else None
    out = []
    for row in manifest.entries:
        entry = row.entry
        if entry.kind is not Kind.FILE or row.inline:
            continue
        link = os.fsdecode(base + row.path) if base is not None else None
        out.append(LargeFile(row.path, entry.meta, entry.size, entry.digest,
                             objects.file_path(entry.digest, entry.meta), link))
    return out


@dataclass
class DeployResult:
    deployment: Deployment
    path: str
    check: CheckReport
    timings: dict[str, float]
    mount: MountResult | None = None  # when deployed with a mount target


def deploy(repo: Repository, rev: str, keys_dir: str, *, policy: Policy = Policy.AUTO,
           make_default: bool = True, tries: int | None = None, allow_downgrade: bool = False,
           workers: int | None = None, verity: Verity = KERNEL, target: str | None = None,
           live: bool = False, api: str = "auto") -> DeployResult:
    """Verify and deploy ``rev`` (see the module docstring); with ``target``, mount it there too.

    Mounting here is ``mount_deployment`` without its second verification: the
    objects and the farm are the ones this call has just checked and built.
    The overlay is mounted at ``target`` only once every check has passed; on
    any failure no mount is left and no farm.  Raises SignatureError,
    DowngradeError, PackError, VerificationError, DeployError, MountError.
    """
    timings: dict[str, float] = {}
    started = time.perf_counter()
    commit_id = repo.resolve(rev)
    keyring = Keyring.load(keys_dir)
    pack_path = kept_pack_path(repo, commit_id)
    fresh = freshness_path(repo)
    states = state_file(repo)
    root = deploy_root(repo)
    mounted = None
    if target is not None:
        from .mount_deployment import MountResult  # noqa: PLC0415 - a cycle
        check_target(target, repo.path)  # before any work
    elif live:
        raise DeployError("a live deployment needs a mount target")
    published: list[str] = []
    try:
        with contextlib.ExitStack() as outer:
            outer.enter_context(repo.shared())  # prune waits: the objects checked stay
            stage = outer.enter_context(Staging(os.path.join(repo.path, "tmp"))) if target else None
            with open_deployment_pack(pack_path, keyring, commit_id) as (reader, verification), \
                    states.update() as state:
                candidate = freshness.Accepted.of(reader.commit_id, reader.commit)
                freshness.check(fresh, reader.ref, candidate, allow_downgrade=allow_downgrade)
                items = large_files(repo.objects, reader.manifest)
                timings["pack"] = time.perf_counter() - started
                in_use = inuse.deployment_mounts(root)
                farm.clean_leftovers(root, keep={d.id for d in state.deployments} | set(in_use))
                dep_id = state.allocate_id(to_hex(commit_id))
                while os.path.lexists(os.path.join(root, dep_id)):  # unrecorded, but mounted
                    dep_id = state.allocate_id(to_hex(commit_id))
                report, unpacked, path = _verify_and_build(
                    reader, items, root, dep_id, stage, timings,
                    policy=policy, workers=workers, verity=verity)
                published.append(path)
                deployment = Deployment(
                    id=dep_id, commit=to_hex(commit_id), ref=reader.ref,
                    version=reader.commit.version, created=int(time.time()),
                    pack=os.path.relpath(pack_path, repo.path),
                    pack_sha256=verification.sha256.hex(), keys=os.path.abspath(keys_dir))
                if stage is not None and target is not None and unpacked is not None:
                    # Every check has passed: only now is anything mounted at the target.
                    mark = time.perf_counter()
                    used = stage.mount(target, path, live=live, api=api)
                    timings["mount"] = time.perf_counter() - mark
                    deployment.mounted_at = [os.path.realpath(target)]
                    mounted = MountResult(os.path.abspath(target), report, unpacked, used)
                state.add(deployment, make_default=make_default, tries=tries)
            if stage is not None:
                stage.keep()  # the state file names the mount now: keep it
    except BaseException:
        for farm_path in published:
            _forget_farm(states, root, farm_path)
        raise
    with freshness.locked(fresh):
        freshness.record(fresh, deployment.ref, candidate)
    timings["total"] = time.perf_counter() - started
    if mounted is not None:
        mounted.timings = timings
    return DeployResult(deployment, path, report, timings, mounted)


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
            shutil.rmtree(work, ignore_errors=True)
            raise
    return report, unpacked, path


def _forget_farm(states: StateFile, root: str, path: str) -> None:
    """After a failure: remove a published farm unless the state file names it."""
    dep_id = os.path.basename(path)
    with contextlib.suppress(Exception):
        if not any(d.id == dep_id for d in states.read().deployments):
            farm.remove_farm(root, dep_id)


def undeploy(repo: Repository, name: str) -> Deployment:
    """Forget a deployment and remove its farm (refused while it is mounted or the default)."""
    root = deploy_root(repo)
    with state_file(repo).update() as state:
        dep = state.find(name)
        # Mounted is what mountinfo says (an overlay over its farm), wherever that is now.
        dep.mounted_at = inuse.deployment_mounts(root).get(dep.id, [])
        state.remove(dep.id)
    farm.remove_farm(root, dep.id)
    return dep


def deployment_roots(repo: Repository) -> Sequence[tuple[str, RawId]]:
    """Commits deployments need (for prune and fsck): one root per deployment."""
    path = os.path.join(deploy_root(repo), "state.json")
    if not os.path.exists(path):
        return []
    state: State = state_file(repo).read()
    return [(f"deployment {d.id}", RawId(bytes.fromhex(d.commit))) for d in state.deployments]
