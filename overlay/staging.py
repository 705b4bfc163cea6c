"""The mount target's checks, and the staging tmpfs layers of a deployment's overlay.

A mount is staged in a private directory ``<scratch>/mount-XXXXXXXX/`` (the
repository's ``tmp/``, or the boot verifier's ``/run/sealtree``): the tmpfs
that receives the unpacked pack is mounted at ``lower/`` in it (metacopy
layout: at ``<dep_id>/``, the name that tells which deployment the overlay
shows, ``mounted_farms``, where a pack with an image has that image mounted
instead, ``image``; ``--live``: a second one at ``upper/``), the overlay
is mounted at the target, then the staging mounts are detached (overlayfs
holds its layers itself) and the directory removed. While that runs, the
process holds an flock on the directory's ``lock`` file. A process killed part
way leaves its staging directory, possibly with tmpfs mounts still attached,
and its lock free: the next ``Staging`` (a deploy with a mount target, a
mount, a boot) detaches and removes such stale directories.
``<scratch>/mounts.lock`` makes creating a staging directory and cleaning up
stale ones exclude each other, so a directory is never taken for stale between
its creation and its lock.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, TypeVar

from pack.reader import PackReader
from pack.unpack import UnpackReport
from store.atomic import private_dir
from store.errors import MountError
from store.lock import flock, try_flock
from store.remove import remove_tree

from . import mounts
from .metacopy import StubPlan
from .objcheck import LargeFile

if TYPE_CHECKING:
    from .unpack_tmpfs import TmpfsSize

STAGING_PREFIX = "mount-"
STAGING_LOCK = "lock"
SCRATCH_LOCK = "mounts.lock"

T = TypeVar("T")


def mount_error(what: str, err: OSError) -> MountError:
    return MountError(f"{what} failed: {err.strerror}", path=err.filename or None)


def check_target(target: str, repo_path: str | None = None) -> None:
    """The mount point must be a directory, not a mount point already, and (given the
    repository) outside the repository: a mount there would hide its objects or farms."""
    if repo_path is not None:
        real, repo = os.path.realpath(target), os.path.realpath(repo_path)
        if real == repo or real.startswith(repo.rstrip("/") + "/"):
            raise MountError(f"inside the repository {repo_path}; mount deployments "
                             f"elsewhere", path=target)
    if not os.path.isdir(target):
        raise MountError("not a directory", path=target)
    if mounts.is_mount_point(target) is not None:
        raise MountError("already a mount point; unmount it first", path=target)


def clean_stale(scratch: str) -> None:
    """Detach and remove the staging directories of killed processes (lock free).

    Call with ``SCRATCH_LOCK`` held.  Detaching a staging tmpfs never harms an
    overlay mounted over it (the overlay holds its layers); a directory with a
    mount that cannot be detached is left alone.
    """
    for name in os.listdir(scratch):
        path = os.path.realpath(os.path.join(scratch, name))
        if not name.startswith(STAGING_PREFIX) or not try_flock(os.path.join(path, STAGING_LOCK)):
            continue
        for info in reversed(mounts.mounts_under(path)):  # deepest first
            with contextlib.suppress(OSError):
                mounts.umount(os.fsdecode(info.mount_point), mounts.MNT_DETACH)
        if not mounts.mounts_under(path):  # never remove files below a mount
            with contextlib.suppress(OSError):
                remove_tree(path)


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
        self._stack = contextlib.ExitStack()
        with flock(os.path.join(scratch, SCRATCH_LOCK), exclusive=True):
            clean_stale(scratch)
            self.work = private_dir(scratch, STAGING_PREFIX)
            self._lock = contextlib.ExitStack()
            self._lock.enter_context(flock(os.path.join(self.work, STAGING_LOCK), exclusive=True))
        self._detach: list[str] = []
        self.lower: str | None = None

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._stack.close()  # not kept: unmount the overlay and the tmpfs layers
        finally:
            # The staging mounts can go from the tree now (or, after a failure, were
            # already detached by the ExitStack).  rmdir, never rmtree: a directory still
            # mounted (a failed detach) must not be emptied.
            for path in reversed(self._detach):
                with contextlib.suppress(OSError):
                    mounts.umount(path, mounts.MNT_DETACH)
            for path in reversed(self._detach):
                with contextlib.suppress(OSError):
                    os.rmdir(path)
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.work, STAGING_LOCK))
            self._lock.close()
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
            raise mount_error(f"mounting the {what}", err) from err
        self._detach.append(path)
        return path

    def unpack(self, reader: PackReader, *, stubs: StubPlan | None = None,
               large: list[LargeFile] | None = None, name: str = "lower") -> UnpackReport:
        """Mount the lower tmpfs (at ``name``), sized from the manifest, and unpack the pack
        into it; with ``stubs`` (metacopy layout), each of the ``large`` files as its stub.

        This reads the pack's data section: it raises PackError unless the whole
        pack checks out (every inline file, and the file's SHA-256 when bound).
        """
        # Imported here: a metacopy deployment from an image unpacks nothing.
        from .unpack_tmpfs import tmpfs_size, unpack_into_tmpfs  # noqa: PLC0415

        if stubs is None:
            size = tmpfs_size(reader.manifest, reader.commit.root_meta)
        else:
            size = tmpfs_size(reader.manifest, reader.commit.root_meta, stubs=True,
                              stub_xattr_bytes=stubs.xattr_bytes(large or []))
        self.lower = self._tmpfs(name, "tmpfs", size)
        if stubs is None:
            return unpack_into_tmpfs(reader, self.lower)
        return unpack_into_tmpfs(reader, self.lower, stubs)

    def image(self, image: int, name: str, *, loop: bool = False) -> str:
        """Mount the EROFS image open as ``image`` (checked: ``image_layer.open_image``) as
        the lower layer, at ``name`` (metacopy layout: the deployment id); return the source
        mounted: ``file`` (the image file itself), or the loop device's path."""
        path = os.path.join(self.work, name)
        os.mkdir(path, 0o700)
        held = mounts.erofs(image, path, loop=loop)
        try:
            self._stack.enter_context(held)
        except OSError as err:
            os.rmdir(path)
            raise mount_error("mounting the image", err) from err
        self._detach.append(path)
        self.lower = path
        return "file" if held.result == mounts.fd_source(image) else str(held.result)

    def mount(self, target: str, farm_dir: str | None, *, data: str | None = None,
              verity: str = "require", live: bool = False, api: str = "auto") -> str:
        """Mount the overlay of the unpacked tmpfs at ``target``: over ``farm_dir`` (hardlinks
        layout), or with ``data`` as the data-only layer (metacopy layout, ``verity=``);
        return the API used."""
        assert self.lower is not None, "unpack() or image() first"
        check_target(target)  # again: it may have changed since the checks before the work
        lowers = [self.lower] + ([farm_dir] if farm_dir is not None else [])
        datas = [data] if data is not None else []
        spec = mounts.OverlaySpec(lowers, data=datas, verity=verity)
        if live:
            upper_fs = self._tmpfs("upper", "upper tmpfs")
            os.mkdir(os.path.join(upper_fs, "upper"), 0o755)
            os.mkdir(os.path.join(upper_fs, "work"), 0o700)
            spec = mounts.OverlaySpec(lowers, os.path.join(upper_fs, "upper"),
                                      os.path.join(upper_fs, "work"), data=datas, verity=verity)
        merged = mounts.overlay(target, spec, api)
        try:
            self._stack.enter_context(merged)
        except OSError as err:
            raise mount_error("mounting the overlay", err) from err
        return str(merged.result)

    def hold(self, mounted: contextlib.AbstractContextManager[T]) -> T:
        """Enter ``mounted`` (mounts over the target, e.g. ``writable.mount_writable``'s) so that
        a failure before ``keep`` takes it down too, before the overlay."""
        return self._stack.enter_context(mounted)

    def keep(self) -> None:
        """Success: keep every mount (the staging ones are still detached on exit)."""
        self._stack.pop_all()
