"""A function run in a forked child process, so that the caller works meanwhile.

Commit stores files, deploy checks objects, builds the farm and unpacks the
pack at once.  Python threads would share one core for the hashing loops and
fight over the GIL at every system call, so each share of the work runs in a
child made with ``fork`` (the child has everything the parent computed,
nothing is pickled on the way in).  What the function returns, or the
exception it raised, comes back pickled through a pipe; ``wait()`` returns the
one or raises the other, ``done()`` says whether the answer has started to
come without blocking.

``pickle`` is imported here, at import time, not in the child: a forked child
importing modules while another of the parent's threads held the import lock
would hang.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import pickle
import select
import signal
import struct
from collections.abc import Callable, Sequence
from typing import Any

from .errors import SealtreeError
from .inode_meta import load_xattrs

_PR_SET_PDEATHSIG = 1
_prctl: Any = None


def _prctl_function() -> Any:
    """libc's prctl, looked up in the parent (a child must not dlopen or import: another
    thread of the parent may have held those locks when it forked)."""
    global _prctl
    if _prctl is None:
        _prctl = ctypes.CDLL(None, use_errno=True).prctl
    return _prctl


def _die_with(parent: int, prctl: Any) -> None:
    """Let the kernel kill this child when ``parent`` dies: a worker of a process that was
    killed must not live on holding the parent's locks (a staging directory would look in
    use to the next writer)."""
    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


class Forked:
    """``fn(*args)`` running in a child process; ``wait()`` for its result, ``cancel()`` to stop it.

    ``failure`` makes the error raised when the child dies without an answer
    (killed, or its result could not be sent).
    """

    def __init__(self, fn: Callable[..., Any], *args: Any,
                 failure: Callable[[str], SealtreeError]) -> None:
        self._failure = failure
        load_xattrs()  # what a child writing inodes may need, imported here: a child must not
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        parent, prctl = os.getpid(), _prctl_function()
        pid = os.fork()
        if pid == 0:  # the child: run, answer, and leave without unwinding the caller's stack
            status = 1
            try:
                _die_with(parent, prctl)
                os.close(read_fd)
                try:
                    payload = pickle.dumps((True, fn(*args)))
                except BaseException as err:  # noqa: BLE001 - every failure goes to the parent
                    try:
                        payload = pickle.dumps((False, err))
                    except Exception:  # noqa: BLE001 - an exception that does not pickle
                        payload = pickle.dumps((False, failure(f"{type(err).__name__}: {err}")))
                with os.fdopen(write_fd, "wb") as out:
                    out.write(payload)
                status = 0
            finally:
                os._exit(status)
        os.close(write_fd)
        self.pid: int | None = pid
        self._read_fd = read_fd

    def done(self, timeout: float = 0.0) -> bool:
        """Whether the child has finished (or started to answer) within ``timeout`` seconds."""
        if self.pid is None:
            return True
        ready, _, _ = select.select([self._read_fd], [], [], timeout)
        return bool(ready)

    def wait(self) -> Any:
        """The function's result; or raise its exception, or ``failure`` if the child died."""
        if self.pid is None:
            raise self._failure("the child process was already collected or cancelled")
        with os.fdopen(self._read_fd, "rb") as handle:
            payload = handle.read()
        _, status = os.waitpid(self.pid, 0)
        pid, self.pid = self.pid, None
        if status != 0 or not payload:
            raise self._failure(f"the child process {pid} failed (wait status {status})")
        ok, value = pickle.loads(payload)  # noqa: S301 - our own child's bytes, not input
        if ok:
            return value
        raise value

    def cancel(self) -> None:
        """Stop the child if it still runs (SIGKILL) and collect it."""
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        with contextlib.suppress(OSError):
            os.close(self._read_fd)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def worker_count(limit: int) -> int:
    """How many workers to fork: one per core, at most ``limit``."""
    return max(1, min(os.cpu_count() or 1, limit))


class SharedCounts:
    """Running totals (done, bytes) of each worker, in an anonymous shared mapping made before
    the workers are forked: each writes its own slot, the parent sums them for progress."""

    _SLOT = struct.Struct("=QQ")

    def __init__(self, workers: int) -> None:
        self._map = mmap.mmap(-1, self._SLOT.size * workers)
        self._slots = workers

    def set(self, slot: int, done: int, size: int) -> None:
        self._SLOT.pack_into(self._map, slot * self._SLOT.size, done, size)

    def total(self) -> tuple[int, int]:
        slots = [self._SLOT.unpack_from(self._map, i * self._SLOT.size) for i in range(self._slots)]
        return sum(done for done, _ in slots), sum(size for _, size in slots)

    def close(self) -> None:
        self._map.close()


def collect(workers: Sequence[Forked], tick: Callable[[], None] | None = None,
            interval: float = 0.2) -> list[Any]:
    """Every worker's result, in order, calling ``tick`` every ``interval`` seconds while
    waiting; on the first failure the others are stopped and the failure raised."""
    results = []
    try:
        for worker in workers:
            while tick is not None and not worker.done(interval):
                tick()
            results.append(worker.wait())
    finally:
        for worker in workers:
            worker.cancel()  # those already collected are left alone
    return results
