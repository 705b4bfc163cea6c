"""The hardlink farm: ``deploy/<dep_id>/`` with a hardlink to the right object at each large file's path.

Only the directories that lead to large files exist in the farm, owned by
root, mode 0755, no xattrs: an overlay directory takes its metadata from the topmost
layer that has it, which is always the tmpfs (it holds every directory of
the tree with its exact metadata), so farm directories never show.  A large
file's metadata is its object's inode's (a hardlink shares it), which is why
objects that differ in metadata are different inodes.

The farm is built under ``deploy/.tmp-<dep_id>`` and renamed into place once
complete and synced, so ``deploy/<dep_id>`` is never half built.  ``check_farm``
walks a farm and refuses anything that is not exactly the expected set of
directories and regular files (an added, removed or retyped entry), and any
xattr on a directory (overlayfs reads ``trusted.overlay.*`` on its layers: an
opaque or redirect mark would change the view).  A link's xattrs are its
object's inode's, checked against the manifest by ``objcheck``.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Collection, Iterable, Sequence

from store import xattrs
from store.errors import DeployError, FarmMismatch, ObjectMissing
from store.names import show
from store.remove import remove_tree
from store.syncfs import syncfs

from .layout import TMP_PREFIX, TRASH_PREFIX, DeployLayout
from .objcheck import LargeFile
from .state import ID_RE

FARM_DIR_MODE = 0o755  # every farm directory; the view takes directories' metadata from the tmpfs


def farm_dirs(paths: Iterable[bytes]) -> set[bytes]:
    """Every directory (``a``, ``a/b``) that leads to one of ``paths``; the root is b""."""
    dirs: set[bytes] = set()
    for path in paths:
        parent = path.rpartition(b"/")[0]
        while parent and parent not in dirs:
            dirs.add(parent)
            parent = parent.rpartition(b"/")[0]
    return dirs


def build_farm(deploy_root: str, dep_id: str, items: Sequence[LargeFile], *, sync: bool = True) -> str:
    """Build ``deploy_root/dep_id`` from ``items`` (each ``obj`` must exist); return its path."""
    work, _linked = start_farm(deploy_root, dep_id, items)
    try:
        return publish_farm(work, deploy_root, dep_id, sync=sync)
    except BaseException:
        _remove_quietly(work)
        raise


def start_farm(deploy_root: str, dep_id: str, items: Sequence[LargeFile]
               ) -> tuple[str, list[tuple[int, int]]]:
    """Build the farm under its temporary name ``deploy_root/.tmp-<id>``.

    Returns that path and the (st_dev, st_ino) of each link, in ``items``
    order: what ``check_links`` compares with the inodes the checks saw.
    """
    layout = DeployLayout(deploy_root)
    final = layout.farm(dep_id)
    if os.path.lexists(final):
        raise DeployError("already exists", path=final)
    work = layout.farm_in_progress(dep_id)
    _remove_quietly(work)
    os.makedirs(deploy_root, exist_ok=True)
    os.mkdir(work, FARM_DIR_MODE)
    os.chmod(work, FARM_DIR_MODE)  # whatever the umask: check_farm expects exactly this mode
    linked = []
    try:
        root = os.fsencode(work) + b"/"
        # Directories in sorted order, parents first; then every link.
        for directory in sorted(farm_dirs(i.path for i in items)):
            os.mkdir(root + directory, FARM_DIR_MODE)
            os.chmod(root + directory, FARM_DIR_MODE)
        link, lstat = os.link, os.lstat
        for item in items:
            try:
                link(item.obj, root + item.path)
            except FileNotFoundError:
                if not os.path.lexists(item.obj):
                    raise ObjectMissing(f"object {show(item.obj)} is missing",
                                        path=item.path, file=item.obj) from None
                raise
            st = lstat(root + item.path)
            linked.append((st.st_dev, st.st_ino))
    except BaseException:
        _remove_quietly(work)
        raise
    return work, linked


def check_links(items: Sequence[LargeFile], linked: Sequence[tuple[int, int]],
                checked: Sequence[tuple[int, int] | None]) -> None:
    """Every link must be the very inode that was checked (``objcheck``'s identities): an
    object renamed over between its check and its link is refused."""
    for item, got, want in zip(items, linked, checked, strict=True):
        if got != want:
            raise FarmMismatch(f"object {show(item.obj)} was replaced while it was being "
                               f"deployed", path=item.path, file=item.obj)


class FarmBuilder:
    """``start_farm`` in a forked child process, so that the caller can work meanwhile.

    Building a farm is system calls only (mkdir, link), which another process
    runs on another core while this one unpacks the pack.  ``wait()`` returns
    the temporary farm once its links are checked against the inodes the
    object checks saw, or raises what the child raised; ``cancel()`` stops the
    child and removes what it built.
    """

    def __init__(self, deploy_root: str, dep_id: str, items: Sequence[LargeFile]) -> None:
        self.work = DeployLayout(deploy_root).farm_in_progress(dep_id)
        self.items = items
        from store.forked import Forked  # noqa: PLC0415 - only a farm build forks

        self._child = Forked(start_farm, deploy_root, dep_id, items, failure=self._failed)

    def _failed(self, message: str) -> DeployError:
        return DeployError(f"building the farm failed: {message}", path=self.work)

    def wait(self, checked: Sequence[tuple[int, int] | None]) -> str:
        """The temporary farm once the child has built it and every link is the inode in
        ``checked``; or raise (the child's error, or FarmMismatch)."""
        try:
            work, linked = self._child.wait()
            check_links(self.items, linked, checked)
        except BaseException:
            _remove_quietly(self.work)
            raise
        return str(work)

    def cancel(self) -> None:
        """Stop the child (if still running) and remove the partial farm."""
        self._child.cancel()
        _remove_quietly(self.work)


def publish_farm(work: str, deploy_root: str, dep_id: str, *, sync: bool = True) -> str:
    """Make a farm built by ``start_farm`` durable and give it its final name."""
    final = DeployLayout(deploy_root).farm(dep_id)
    if sync:
        # One filesystem sync instead of an fsync per directory: the farm must be
        # durable before the state file (written next) names it.
        syncfs(work)
    os.rename(work, final)
    return final


def check_farm(farm: str, items: Sequence[LargeFile]) -> None:
    """Raise FarmMismatch unless ``farm`` holds exactly the expected directories and regular
    files, and every directory (the farm's own included) is as built: mode 0755, the farm's
    owner, no xattr."""
    want_dirs = farm_dirs(i.path for i in items)
    want_files = {i.path for i in items}
    root = os.fsencode(farm)
    try:
        top = os.lstat(root)
    except FileNotFoundError:
        raise FarmMismatch("the farm is missing", path=farm) from None
    if not stat.S_ISDIR(top.st_mode):
        raise FarmMismatch("the farm is not a directory", path=farm)
    _check_farm_dir(root, b"/", farm, top)
    seen_dirs: set[bytes] = set()
    seen_files: set[bytes] = set()
    stack = [b""]
    while stack:
        rel = stack.pop()
        with os.scandir(root + b"/" + rel if rel else root) as entries:
            for entry in entries:
                path = rel + b"/" + entry.name if rel else entry.name
                if entry.is_dir(follow_symlinks=False):
                    if path not in want_dirs:
                        _extra(farm, path, "directory")
                    _check_farm_dir(root + b"/" + path, path, farm, top)
                    seen_dirs.add(path)
                    stack.append(path)
                elif entry.is_file(follow_symlinks=False):
                    if path not in want_files:
                        _extra(farm, path, "file")
                    seen_files.add(path)
                else:
                    what = "symlink" if entry.is_symlink() else "special file"
                    if path in want_files or path in want_dirs:
                        raise FarmMismatch(f"is a {what} in the farm {show(farm)}", path=path,
                                           file=farm)
                    _extra(farm, path, what)
    missing = sorted((want_dirs - seen_dirs) | (want_files - seen_files))
    if missing:
        raise FarmMismatch(f"missing from the farm {show(farm)}"
                           + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                           path=missing[0], file=farm)


def _check_farm_dir(directory: bytes, path: bytes, farm: str, top: os.stat_result) -> None:
    """A farm directory is as the farm was built: mode 0755, the farm's owner, and no xattr
    at all (overlayfs interprets some on its layers: ``trusted.overlay.opaque``,
    ``redirect``, ...)."""
    st = os.lstat(directory)
    if stat.S_IMODE(st.st_mode) != FARM_DIR_MODE or (st.st_uid, st.st_gid) != (top.st_uid, top.st_gid):
        raise FarmMismatch(f"a directory of the farm {show(farm)} has mode {stat.S_IMODE(st.st_mode):#o} "
                           f"and owner {st.st_uid}:{st.st_gid}; farm directories are built "
                           f"{FARM_DIR_MODE:#o} {top.st_uid}:{top.st_gid}", path=path, file=farm)
    found = xattrs.read(directory)
    if found:
        names = ", ".join(show(name) for name, _value in found)
        raise FarmMismatch(f"a directory of the farm {show(farm)} carries xattrs ({names}); "
                           f"farm directories carry none", path=path, file=farm)


def _extra(farm: str, path: bytes, what: str) -> None:
    raise FarmMismatch(f"unexpected {what} in the farm {show(farm)} (not a large file of the "
                       f"signed manifest)", path=path, file=farm)


def _remove_quietly(path: str) -> None:
    """Remove a farm being built or thrown away; what cannot be removed now is removed by
    the next deploy (``clean_leftovers``), so it never fails the operation at hand."""
    with contextlib.suppress(OSError):
        remove_tree(path)


def remove_farm(deploy_root: str, dep_id: str) -> None:
    """Remove a farm: renamed aside first, so a crash never leaves a half-removed ``<dep_id>``.

    Iterative (``store.remove``): a farm of any depth is removed."""
    layout = DeployLayout(deploy_root)
    final = layout.farm(dep_id)
    if not os.path.lexists(final):
        return
    trash = layout.trash(dep_id)
    _remove_quietly(trash)
    try:
        os.rename(final, trash)
    except FileNotFoundError:
        return  # removed meanwhile (a deploy cleaning leftovers)
    remove_tree(trash)


def clean_leftovers(deploy_root: str, keep: Collection[str]) -> None:
    """Remove what interrupted deploys and undeploys left: farms being built or removed
    (``.tmp-*``, ``.trash-*``) and published farms that no deployment in ``keep`` names
    (a deploy killed before it recorded its farm, an undeploy killed before it removed it).
    Call with the state locked, ``keep`` holding every recorded id and every id in use by
    a mount.  What cannot be removed is left for the next time: it never fails a deploy."""
    try:
        names = os.listdir(deploy_root)
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith((TMP_PREFIX, TRASH_PREFIX)):
            _remove_quietly(os.path.join(deploy_root, name))
        elif ID_RE.fullmatch(name) and name not in keep:
            with contextlib.suppress(OSError):
                remove_farm(deploy_root, name)
