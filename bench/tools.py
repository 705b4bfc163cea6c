"""Make sure the external tools the benchmarks need are installed.

The peers (``ostree``, ``fsverity``), ``debootstrap`` and ``/usr/bin/time`` come
from Debian packages, installed with ``apt-get`` when missing (``apt-get update``
is run once first).  ``matplotlib`` is a bench-only Python dependency,
installed with pip when missing; nothing outside bench/ imports it.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import sys

from bench.proc import run

log = logging.getLogger("bench")

_apt_updated = False


def apt_install(*packages: str) -> None:
    """``apt-get install -y PACKAGES``, after one ``apt-get update`` per process."""
    global _apt_updated
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        log.info("apt-get update")
        run(["apt-get", "update", "-q"], env=env, measure=False)
        _apt_updated = True
    log.info("apt-get install %s", " ".join(packages))
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages], env=env,
        measure=False)


def ensure_tool(binary: str, apt_package: str) -> str:
    """Return the path of ``binary``, installing ``apt_package`` first if it is missing."""
    found = shutil.which(binary) or _sbin(binary)
    if found:
        return found
    apt_install(apt_package)
    found = shutil.which(binary) or _sbin(binary)
    if not found:
        raise RuntimeError(f"{binary} still missing after installing {apt_package}")
    return found


def _sbin(binary: str) -> str | None:
    """Look in the sbin directories, which a non-login PATH may lack."""
    for directory in ("/usr/sbin", "/sbin", "/usr/local/sbin"):
        path = os.path.join(directory, binary)
        if os.access(path, os.X_OK):
            return path
    return None


def ensure_matplotlib() -> None:
    """Import matplotlib (Agg backend), installing it with pip if it is missing."""
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        log.info("pip install matplotlib (bench-only dependency)")
        run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"], measure=False)
        importlib.invalidate_caches()
    import matplotlib

    matplotlib.use("Agg")
