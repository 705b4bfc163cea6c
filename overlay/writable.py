"""A mounted deployment's writable state: /etc, /var and /tmp (docs/FORMAT.md, "Writable state").

The deployment's overlay is read-only; what a running system writes goes to
three places mounted over it once it is up (``mount_writable``), the way ostree
and bootc do it:

* ``TARGET/etc``: a bind mount of the deployment's own writable /etc,
  ``deploy/etc/<dep_id>/`` (``DeployLayout.etc``), made by ``sealtree deploy``
  (a copy of the vendor /etc, or the 3-way merge with the previous default's,
  ``overlay.deploy_state``) and kept until the deployment is removed;
* ``TARGET/var``: a bind mount of ``deploy/var/``, the one /var every
  deployment shares, seeded from the first deployed tree's /var;
* ``TARGET/tmp``: a fresh tmpfs (mode 1777, nosuid, nodev).

Each only where the tree has that directory (a real directory, not a symlink).
A deployment made before writable state existed has no writable /etc yet: it
is copied here from the vendor /etc the overlay shows (and /var seeded from its
/var if there is none), built under a temporary name and renamed into place.

The mounts are context managers held by one ExitStack: a failure part way
unmounts what was mounted, and the caller keeps them (``pop_all``) only once
everything succeeded.  Live mode (``--live``, ``live = yes`` at boot) mounts
none of this: writes go to the overlay's tmpfs upper layer and vanish.
"""

from __future__ import annotations

import contextlib
import os
import stat

from store.atomic import private_dir
from store.errors import MountError
from store.names import show
from store.record import Frozen, Mutable
from store.remove import remove_tree

from . import mounts
from .etc_merge import plan_merge, read_tree, write_merged
from .layout import TMP_PREFIX, DeployLayout

#: what is mounted over the read-only overlay, relative to the target (the order they are mounted)
STATE_DIRS = ("etc", "var", "tmp")
TMP_MODE = 0o1777


class WritableState(Frozen):
    """Whose state to mount: a deployment of the repository whose deploy directory is ``layout``."""

    __slots__ = ("layout", "dep_id")
    _fields = __slots__
    layout: DeployLayout
    dep_id: str

    def __init__(self, layout: DeployLayout, dep_id: str) -> None:
        self._set_fields(layout, dep_id)


class StateMounts(Mutable):
    """What ``mount_writable`` mounted (target-relative names -> source), and what it created.

    A context manager: leaving it unmounts them (``keep`` first to keep them)."""

    __slots__ = ("mounted", "created", "stack")
    _fields = __slots__

    def __init__(self, mounted: dict[str, str] | None = None, created: list[str] | None = None,
                 stack: contextlib.ExitStack | None = None) -> None:
        self.mounted: dict[str, str] = {} if mounted is None else mounted
        # "etc" and/or "var" made at this mount
        self.created: list[str] = [] if created is None else created
        self.stack = contextlib.ExitStack() if stack is None else stack

    def __enter__(self) -> StateMounts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def keep(self) -> None:
        self.stack.pop_all()

    def describe(self) -> str:
        if not self.mounted:
            return "no writable state (the tree has no /etc, /var or /tmp)"
        parts = []
        for name, source in self.mounted.items():
            parts.append(f"/{name} tmpfs" if name == "tmp" else f"/{name} from {show(source)}")
        return "persistent state: " + ", ".join(parts)


def _is_dir(path: str) -> bool:
    """A real directory (lstat: a symlink to one does not count)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def copy_tree(src: str, out: str) -> None:
    """Copy the directory ``src`` to ``out`` (which must not exist) with exact metadata
    (mode, owner, xattrs; symlinks as they are).  Raises EtcMergeError naming a path."""
    tree = read_tree(src)
    write_merged(plan_merge(tree, tree, tree), src, src, out)


def publish_dir(build: str, final: str) -> bool:
    """Rename the directory ``build`` to ``final``; False (and ``build`` removed) when
    ``final`` exists already (someone else made it meanwhile)."""
    try:
        os.rename(build, final)
    except OSError as err:
        if not os.path.isdir(final):
            raise
        with contextlib.suppress(OSError):
            remove_tree(build)
        del err
        return False
    return True


def ensure_copy(src: str, final: str, *, what: str) -> bool:
    """Make ``final`` a copy of ``src`` unless it exists; True when made now.

    Built in a private temporary directory beside it (``.tmp-<name>-XXXX/``) and
    renamed into place: ``final`` is complete or absent, never half written.
    """
    if os.path.isdir(final):
        return False
    parent = os.path.dirname(final)
    os.makedirs(parent, mode=0o700, exist_ok=True)
    work = private_dir(parent, TMP_PREFIX + os.path.basename(final) + "-")
    build = os.path.join(work, "tree")
    try:
        copy_tree(src, build)
        return publish_dir(build, final)
    except OSError as err:
        raise MountError(f"cannot create the {what}: {err.strerror}",
                         path=err.filename or final) from err
    finally:
        with contextlib.suppress(OSError):
            remove_tree(work)


def mount_writable(target: str, state: WritableState) -> StateMounts:
    """Mount the deployment's writable /etc, the shared /var and a /tmp tmpfs over ``target``.

    Returns the mounts as a context manager (leaving it unmounts them unless
    ``keep`` was called).  A failure leaves nothing of this mounted.  Raises
    MountError (EtcMergeError when a copy cannot be made).
    """
    report = StateMounts()
    stack = report.stack
    try:
        sources: dict[str, str] = {}
        if _is_dir(os.path.join(target, "etc")):
            sources["etc"] = state.layout.etc(state.dep_id)
            if ensure_copy(os.path.join(target, "etc"), sources["etc"],
                           what=f"writable /etc of {state.dep_id}"):
                report.created.append("etc")
        if _is_dir(os.path.join(target, "var")):
            sources["var"] = state.layout.var
            if ensure_copy(os.path.join(target, "var"), sources["var"], what="shared /var"):
                report.created.append("var")
        for name in STATE_DIRS:
            where = os.path.join(target, name)
            if name == "tmp":
                if not _is_dir(where):
                    continue
                cm = mounts.tmpfs(where, mode=TMP_MODE, flags=mounts.MS_NOSUID | mounts.MS_NODEV)
                source = "tmpfs"
            elif name in sources:
                cm = mounts.bind(sources[name], where)
                source = sources[name]
            else:
                continue
            try:
                stack.enter_context(cm)
            except OSError as err:
                raise MountError(f"mounting the writable /{name} failed: {err.strerror}",
                                 path=where) from err
            report.mounted[name] = source
    except BaseException:
        stack.close()
        raise
    return report


def state_mounts_of(target: str) -> list[mounts.MountInfo]:
    """The mounts at ``target``'s state directories (``STATE_DIRS``), topmost last."""
    real = os.fsencode(os.path.realpath(target))
    names = {os.path.join(real, name.encode()) for name in STATE_DIRS}
    return [m for m in mounts.mountinfo() if m.mount_point in names]


def unmount_state(target: str, *, lazy: bool = False) -> None:
    """Unmount what ``mount_writable`` mounted below ``target`` (nothing else).

    Refused (MountError) when anything else is mounted below ``target``: unmounting
    the deployment would fail on it, and it is not sealtree's to unmount.
    """
    real = os.path.realpath(target)
    ours = state_mounts_of(real)
    ids = {m.mount_id for m in ours}
    top = mounts.is_mount_point(real)
    others = [m for m in mounts.mounts_under(real)
              if m.mount_id not in ids and (top is None or m.mount_id != top.mount_id)
              and m.mount_point != os.fsencode(real)]
    if others and not lazy:
        raise MountError(f"{show(others[0].mount_point)} is mounted below it; unmount it first",
                         path=target)
    for info in reversed(ours):
        mounts.umount(os.fsdecode(info.mount_point), mounts.MNT_DETACH if lazy else 0)
