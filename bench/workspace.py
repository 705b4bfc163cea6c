"""Scratch space for repositories, checkouts, deployments and packs.

Everything a run creates lives under one scratch directory on the same
filesystem as the repositories (hardlink checkouts need that).  Removal refuses
to descend into anything still mounted, so a failed ``umount`` can never make
the suite delete through an overlay.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path


def mount_points() -> list[str]:
    """Every current mount point (from /proc/self/mountinfo, octal escapes decoded)."""
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as handle:
        for line in handle:
            field = line.split()[4]
            points.append(field.encode("latin-1", "surrogateescape").decode("unicode_escape"))
    return points


def is_mounted(path: Path) -> bool:
    """True when ``path`` is a mount point (bind mounts included, unlike ``os.path.ismount``)."""
    return os.path.realpath(path) in mount_points()


def remove_tree(path: Path) -> None:
    """``rm -rf PATH``, refusing if PATH or anything below it is a mount point."""
    if not os.path.lexists(path):
        return
    resolved = os.path.realpath(path)
    busy = [m for m in mount_points() if m == resolved or m.startswith(resolved + "/")]
    if busy:
        raise RuntimeError(f"refusing to remove {path}: still mounted at {', '.join(busy)}")
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


class Workspace:
    """A scratch directory whose entries are handed out fresh."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def fresh(self, name: str) -> Path:
        """``root/name``, removed first if it exists (not created)."""
        path = self.root / name
        remove_tree(path)
        return path

    def clean(self) -> None:
        """Remove the whole scratch directory."""
        remove_tree(self.root)


def random_file(path: Path, size: int, seed: int = 0) -> Path:
    """Write ``size`` deterministic pseudo-random bytes to ``path`` (kept if already right)."""
    if path.exists() and path.stat().st_size == size:
        return path
    rng = random.Random(f"sealtree-bench-digest:{seed}")
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        left = size
        while left:
            chunk = min(left, 16 << 20)
            handle.write(rng.randbytes(chunk))
            left -= chunk
    os.replace(tmp, path)
    return path
