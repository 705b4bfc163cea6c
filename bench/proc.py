"""The one subprocess wrapper of the benchmark suite.

Every command the suite runs, measured or not, goes through :func:`run` (but the
installs of the tools it needs, :mod:`bench.tools`).  It
times the child with ``time.perf_counter`` (wall time, including process start)
and reports the peak resident set size of that one command and how much it
read from disk.

Peak memory: ``getrusage(RUSAGE_CHILDREN)`` accumulates over every child, and
even ``os.wait4`` on the direct child is wrong here: Linux folds the high-water
RSS of the address space a process had *before* ``exec`` into its ``maxrss``,
and a child forked (or vforked) from this Python process starts with ours
(measured: ``true`` reports 15 MiB that way).  So each command runs under GNU
``/usr/bin/time -f %M -o FILE`` (Debian package ``time``), a small C program
whose own child starts from a ~1 MiB address space and which reads that
child's ``maxrss`` with ``wait4``.  We still reap ``time`` with ``os.wait4``.

Disk reads: ``time -f %I``, the child's (and its reaped children's) file
system inputs in 512-byte units, which count every read that went to the
disk: page-cache misses, readahead, shared libraries paged in.  On a cold
cache this says where the time goes.

A failing command raises :class:`CommandFailed`, whose message carries the
shell-quoted command line and the tail of its stderr, and is logged.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bench.tools import apt_install

log = logging.getLogger("bench")

Argv = Sequence[str | os.PathLike[str]]


class CommandFailed(RuntimeError):
    """A command exited non-zero (or could not be started)."""

    def __init__(self, argv: Argv, returncode: int, stderr: str) -> None:
        self.argv = [os.fspath(a) for a in argv]
        self.returncode = returncode
        self.stderr = stderr
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        super().__init__(f"command failed (exit {returncode}): {shlex.join(self.argv)}\n{tail}")


@dataclass(frozen=True)
class Completed:
    """What one run of a command produced."""

    argv: list[str]
    returncode: int
    seconds: float
    maxrss_kib: int
    read_bytes: int  # from disk, by the command and the children it reaped
    stdout: str
    stderr: str


def run(argv: Argv, *, check: bool = True, cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None, stdin_devnull: bool = True,
        measure: bool = True) -> Completed:
    """Run ``argv`` to completion; return its wall time, peak RSS and output.

    stdout and stderr go to anonymous temporary files (not pipes), so the child
    never blocks on a full pipe and the parent does no work while it is timed.
    With ``check`` a non-zero exit raises :class:`CommandFailed` after logging
    the command line.  ``measure=False`` runs the command bare (no GNU time;
    peak memory reported as 0), for setting things up.
    """
    args = [os.fspath(a) for a in argv]
    full_env = None if env is None else {**os.environ, **env}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile(prefix="bench-rss-") as rss:
        wrapped = [_gnu_time(), "-q", "-f", "%M %I", "-o", rss.name, *args] if measure else args
        start = time.perf_counter()
        try:
            child = subprocess.Popen(wrapped, cwd=cwd, env=full_env, stdout=out, stderr=err,
                                     stdin=subprocess.DEVNULL if stdin_devnull else None)
        except OSError as exc:
            log.error("cannot start: %s (%s)", shlex.join(args), exc)
            raise CommandFailed(args, 127, str(exc)) from exc
        _, status, _usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        returncode = os.waitstatus_to_exitcode(status)
        child.returncode = returncode  # already reaped: keep Popen from waiting again
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
        maxrss, read_bytes = _read_usage(rss.name) if measure else (0, 0)
    done = Completed(args, returncode, seconds, maxrss, read_bytes, stdout, stderr)
    if check and returncode != 0:
        log.error("command failed (exit %d): %s", returncode, shlex.join(args))
        raise CommandFailed(args, returncode, stderr or stdout)
    log.debug("%.3fs %dKiB %s", seconds, done.maxrss_kib, shlex.join(args))
    return done


GNU_TIME = "/usr/bin/time"


def _gnu_time() -> str:
    """GNU time, installed from Debian's ``time`` package if missing."""
    if not os.access(GNU_TIME, os.X_OK):
        log.info("installing GNU time (apt package 'time') for per-command peak memory")
        apt_install("time")
    return GNU_TIME


def _read_usage(path: str) -> tuple[int, int]:
    """Peak RSS in KiB and bytes read from disk, as ``time -f "%M %I"`` wrote them (its last
    line; earlier lines say why a child died); zeros if it wrote nothing readable."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        lines = handle.read().splitlines()
    try:
        maxrss, inblocks = lines[-1].split()
        return int(maxrss), int(inblocks) * 512
    except (IndexError, ValueError):
        return 0, 0


def succeeds(argv: Argv) -> bool:
    """True when ``argv`` runs and exits 0 (used to probe for tools and subcommands)."""
    try:
        return run(argv, check=False).returncode == 0
    except CommandFailed:
        return False
