"""A directory for tests that mount: nothing may stay mounted below it afterwards."""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Iterator

from overlay import mounts


def mount_free_dir(tmp_path: pathlib.Path, name: str) -> Iterator[str]:
    """Yield ``tmp_path/name`` (a name that needs escaping in mount options); afterwards,
    unmount whatever was left below ``tmp_path`` and fail the test if anything was."""
    path = tmp_path / name
    path.mkdir()
    yield str(path)
    left = mounts.mounts_under(str(tmp_path))
    for info in reversed(left):
        with contextlib.suppress(OSError):
            mounts.umount(info.mount_point, mounts.MNT_DETACH)
    assert not left, f"mounts left behind: {[m.mount_point for m in left]}"
