"""The kernel and initramfs a boot loader loads for a deployment (docs/FORMAT.md, "Writable state").

``sealtree deploy`` copies them out of the deployment's tree into
``deploy/boot/<dep_id>/vmlinuz`` and ``initrd.img`` (``DeployLayout.boot``), so
that a boot loader (or a test harness) finds them on the sysroot without
mounting anything; ``deploy/boot/default`` is a symlink to the default
deployment's directory, replaced atomically whenever the default changes
(``point_default``, called by ``state.StateFile.update``).

Which files (``choose``): the kernel the tree's ``/vmlinuz`` symlink names (Debian's
convention), else the newest ``/boot/vmlinuz-<version>``; the initramfs of the same
version (``/boot/initrd.img-<version>``), else the one ``/initrd.img`` names.  A
tree without a kernel gets no boot directory; one without an initramfs, only
``vmlinuz``.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import stat
from collections.abc import Iterable

from pack.manifest import ManifestEntry
from store.model import Kind
from store.record import Frozen

from .layout import INITRD_NAME, KERNEL_NAME, DeployLayout

KERNEL_PREFIX = b"boot/vmlinuz-"
INITRD_PREFIX = b"boot/initrd.img-"
KERNEL_LINK = b"vmlinuz"
INITRD_LINK = b"initrd.img"


class BootFiles(Frozen):
    """Tree paths (``boot/vmlinuz-6.1.0-13-amd64``) of the deployment's kernel and initramfs."""

    __slots__ = ("kernel", "initrd")
    _fields = __slots__
    kernel: bytes
    initrd: bytes | None

    def __init__(self, kernel: bytes, initrd: bytes | None) -> None:
        self._set_fields(kernel, initrd)

    def paths(self) -> dict[str, bytes]:
        """File name in ``deploy/boot/<dep_id>/`` -> path in the tree."""
        out = {KERNEL_NAME: self.kernel}
        if self.initrd is not None:
            out[INITRD_NAME] = self.initrd
        return out


def _version_key(version: bytes) -> tuple[tuple[int, int | bytes], ...]:
    """Numbers compare as numbers: 6.1.0-10 < 6.1.0-9 is wrong, 6.1.0-9 < 6.1.0-10 right."""
    parts = re.findall(rb"\d+|\D+", version)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def _resolve_link(target: bytes) -> bytes:
    """A root symlink's target as a tree path (``/boot/x`` and ``boot/x`` -> ``boot/x``)."""
    return posixpath.normpath(b"/" + target).lstrip(b"/")


def choose(rows: Iterable[ManifestEntry]) -> BootFiles | None:
    """The kernel and initramfs of a tree, from its manifest rows (None: no kernel)."""
    files: set[bytes] = set()
    links: dict[bytes, bytes] = {}
    for row in rows:
        path = row.path
        if row.entry.kind is Kind.FILE and _is_candidate(path):
            files.add(path)
        elif row.entry.kind is Kind.SYMLINK and path in (KERNEL_LINK, INITRD_LINK):
            links[path] = _resolve_link(row.entry.target)
    return _choose(files, links)


def choose_in_tree(root: str) -> BootFiles | None:
    """``choose`` for a tree mounted at ``root`` (a deployment's EROFS image): its ``/boot``
    files and its root's ``vmlinuz`` and ``initrd.img`` symlinks."""
    top = os.fsencode(root)
    files: set[bytes] = set()
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for name in os.listdir(os.path.join(top, b"boot")):
            path = b"boot/" + name
            if _is_candidate(path) and stat.S_ISREG(os.lstat(os.path.join(top, path)).st_mode):
                files.add(path)
    links: dict[bytes, bytes] = {}
    for link in (KERNEL_LINK, INITRD_LINK):
        with contextlib.suppress(OSError):  # missing, or not a symlink
            links[link] = _resolve_link(os.readlink(os.path.join(top, link)))
    return _choose(files, links)


def _is_candidate(path: bytes) -> bool:
    """A kernel or initramfs file directly in ``boot/``."""
    return path.startswith((KERNEL_PREFIX, INITRD_PREFIX)) and b"/" not in path[len(b"boot/"):]


def _choose(files: set[bytes], links: dict[bytes, bytes]) -> BootFiles | None:
    kernel = links.get(KERNEL_LINK)
    if kernel not in files:
        kernels = [p for p in files if p.startswith(KERNEL_PREFIX)]
        if not kernels:
            return None
        kernel = max(kernels, key=lambda p: _version_key(p[len(KERNEL_PREFIX):]))
    assert kernel is not None
    initrd: bytes | None = None
    if kernel.startswith(KERNEL_PREFIX):
        same = INITRD_PREFIX + kernel[len(KERNEL_PREFIX):]
        initrd = same if same in files else None
    if initrd is None and links.get(INITRD_LINK) in files:
        initrd = links[INITRD_LINK]
    return BootFiles(kernel, initrd)


def point_default(layout: DeployLayout, dep_id: str | None) -> None:
    """Make ``deploy/boot/default`` name ``dep_id``'s boot directory (atomically: a new
    symlink renamed over the old one); remove it when ``dep_id`` is None or has none."""
    link = layout.boot_default
    want = dep_id if dep_id is not None and os.path.isdir(layout.boot(dep_id)) else None
    try:
        have: str | None = os.readlink(link)
    except (FileNotFoundError, NotADirectoryError):
        have = None
    except OSError:
        have = ""  # not a symlink: replaced below
    if have == want:
        return
    if want is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)
        return
    tmp = os.path.join(layout.boot_root, f".default.tmp{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(want, tmp)
    os.rename(tmp, link)
