"""What a device downloads to go from release N to N+1: ``python3 -m bench.update_size``.

Release N is Debian bookworm minbase as debootstrap makes it from bookworm's
main suite (:func:`bench.corpora.debian_minbase`); release N+1 is the same tree
after ``apt-get upgrade`` with bookworm-updates and bookworm-security, run in a
chroot.  Both drop apt's lists and downloaded .debs and carry no device nodes,
as in /work/shared/reference/update-anchors.md, so the figures compare.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

from bench.corpora import _cached, cache_dir, debian_minbase, remove_special_files
from bench.proc import run

log = logging.getLogger("bench")

UPDATE_SOURCES = (
    "deb http://deb.debian.org/debian bookworm main\n"
    "deb http://deb.debian.org/debian bookworm-updates main\n"
    "deb http://security.debian.org/debian-security bookworm-security main\n"
)


def _strip_apt_state(root: Path) -> None:
    """Remove apt's package lists and downloaded .debs (a release image carries neither)."""
    for directory in (root / "var/lib/apt/lists", root / "var/cache/apt/archives"):
        if not directory.is_dir():
            continue
        for child in directory.iterdir():
            if child.is_dir() and not child.is_symlink():
                if child.name == "partial":
                    for leftover in child.iterdir():
                        leftover.unlink()
                    continue
                shutil.rmtree(child)
            elif child.name != "lock":
                child.unlink()
    for cache in root.glob("var/cache/apt/*.bin"):
        cache.unlink()
    remove_special_files(root)


def _copy_tree(source: Path, dest: Path) -> None:
    """``cp -a SOURCE DEST`` (hard links, xattrs, owners kept)."""
    run(["cp", "-a", "--", source, dest], measure=False)


@contextlib.contextmanager
def _mounted(source: str, target: Path, *options: str) -> Iterator[None]:
    """``mount [OPTIONS] SOURCE TARGET`` for the duration of the block."""
    target.mkdir(parents=True, exist_ok=True)
    run(["mount", *options, source, target], measure=False)
    try:
        yield
    finally:
        run(["umount", "--lazy", target], measure=False)


def _release_n(dest: Path) -> None:
    _copy_tree(debian_minbase(dest.parent.parent), dest)
    _strip_apt_state(dest)


def _release_n1(dest: Path) -> None:
    """Release N plus ``apt-get upgrade`` from bookworm-updates and bookworm-security."""
    _copy_tree(debian_minbase(dest.parent.parent), dest)
    (dest / "etc/apt/sources.list").write_text(UPDATE_SOURCES)
    resolv = dest / "etc/resolv.conf"
    saved = resolv.read_bytes() if resolv.exists() and not resolv.is_symlink() else None
    shutil.copyfile("/etc/resolv.conf", resolv)
    env = {"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8",
           "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    # proc: maintainer scripts read /proc; dev: the tree carries no device nodes
    # (stripped), and apt and dpkg write to /dev/null.
    with _mounted("proc", dest / "proc", "-t", "proc"), \
            _mounted("/dev", dest / "dev", "--bind"):
        run(["chroot", dest, "apt-get", "update", "-q"], env=env, measure=False)
        run(["chroot", dest, "apt-get", "upgrade", "-y", "-q"], env=env, measure=False)
        run(["chroot", dest, "apt-get", "clean"], env=env, measure=False)
    if saved is None:
        resolv.unlink()
    else:
        resolv.write_bytes(saved)
    _strip_apt_state(dest)


def release_pair(cache: Path | None = None) -> tuple[Path, Path]:
    """The cached releases N and N+1 (``update-bookworm-n``, ``update-bookworm-n1``)."""
    root = cache or cache_dir()
    return (_cached(root, "update-bookworm-n", _release_n),
            _cached(root, "update-bookworm-n1", _release_n1))


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")


if __name__ == "__main__":
    _setup_logging()
    print(release_pair())
