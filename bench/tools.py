"""Make sure the external tools the benchmarks need are installed.

The peers (``ostree``, ``fsverity``), ``debootstrap`` and ``/usr/bin/time`` come
from Debian packages, installed with ``apt-get`` when missing (``apt-get update``
is run once first).  ``matplotlib`` is a bench-only Python dependency,
installed with pip when missing; nothing outside bench/ imports it.

The installs are not measured, so they run with ``subprocess`` directly rather than
through ``bench.proc.run`` (which itself needs GNU time from here).
"""

from __future__ import annotations

import importlib
import logging
import os
import shlex
import shutil
import subprocess
import sys

log = logging.getLogger("bench")

_apt_updated = False


def apt_install(*packages: str) -> None:
    """``apt-get install -y PACKAGES``, after one ``apt-get update`` per process."""
    global _apt_updated
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        log.info("apt-get update")
        _install(["apt-get", "update", "-q"], env)
        _apt_updated = True
    log.info("apt-get install %s", " ".join(packages))
    _install(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages], env)


def _install(argv: list[str], env: dict[str, str] | None = None) -> None:
    """Run an installer to completion; a failure raises RuntimeError with the command line
    and the tail of its output."""
    done = subprocess.run(argv, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, errors="replace", check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        log.error("command failed (exit %d): %s", done.returncode, shlex.join(argv))
        raise RuntimeError(f"command failed (exit {done.returncode}): {shlex.join(argv)}\n{tail}")


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
        _install([sys.executable, "-m", "pip", "install", "-q", "matplotlib"])
        importlib.invalidate_caches()
    import matplotlib

    matplotlib.use("Agg")
