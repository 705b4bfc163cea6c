"""The one atomic-write helper: temp file in the target directory, fsync, rename, fsync dir.

A reader never sees a half-written file under the final name, and after
``atomic_write`` returns the new content survives a power cut.  The temporary
file (``.NAME.tmpPID``) is locked by its writer; one a killed writer left is
removed by the next write of the same file, or by ``remove_stale_temporaries``
(which prune runs on the repository's directories).  Every error
names the destination the caller gave, never the temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import re
import stat
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO

from .errors import UsageError
from .names import show

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

StrPath = str | os.PathLike[str]


def fsync_dir(path: StrPath) -> None:
    """Make a directory's entries (renames, creations) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def about(err: OSError, path: str, doing: str = "") -> OSError:
    """``err`` told about ``path`` (the name the user gave) instead of a temporary name of ours;
    ``doing`` says what failed, e.g. "cannot create it in DIR"."""
    reason = err.strerror or os.strerror(err.errno or 0)
    return OSError(err.errno, f"{doing}: {reason}" if doing else reason, path)


def _cannot_create(err: OSError, path: str, directory: str) -> OSError:
    return about(err, path, f"cannot create it in {show(directory)}")


def check_destination(path: StrPath, what: str = "the output file") -> str:
    """Refuse a path that ``atomic_file`` could not write, before any work is done: an empty
    one (UsageError; ``what`` names the argument), a directory, or one whose directory is
    missing or not a directory (OSError naming ``path``).  Returns ``path`` as a str."""
    path = os.fspath(path)
    if not path:
        raise UsageError(f"{what} is an empty path; give a file name")
    if os.path.isdir(path) and not os.path.islink(path):  # a rename would replace a symlink
        raise IsADirectoryError(errno.EISDIR, "is a directory", path)
    directory = os.path.dirname(path) or "."
    try:
        st = os.stat(directory)
    except OSError as err:
        raise _cannot_create(err, path, directory) from None
    if not stat.S_ISDIR(st.st_mode):
        raise _cannot_create(NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)), path,
                             directory)
    return path


class _TempFile(io.FileIO):
    """The temporary file: a failed write names the destination instead."""

    def __init__(self, fd: int, destination: str) -> None:
        super().__init__(fd, "wb", closefd=True)
        self.destination = destination

    def write(self, data: ReadableBuffer, /) -> int:
        try:
            return super().write(data)
        except OSError as err:
            raise about(err, self.destination) from None


NAME_MAX = 255  # bytes in one directory entry's name, on every Linux filesystem sealtree uses


def temporary_name(name: str) -> str:
    """The name ``atomic_file`` writes ``name``'s new content under before renaming it:
    ``.NAME.tmpPID``, or ``.sealtree-PID-RANDOM.tmp`` when that would be longer than a
    directory entry may be (a name of 255 bytes is legal; its temporary name must be too)."""
    long_form = f".{name}.tmp{os.getpid()}"
    if len(os.fsencode(long_form)) <= NAME_MAX:
        return long_form
    import secrets  # noqa: PLC0415 - rarely needed; its import (hmac, random) is not cheap

    return f".sealtree-{os.getpid()}-{secrets.token_hex(8)}.tmp"


_TEMPORARY = re.compile(r"\.(?P<name>.+)\.tmp(?P<pid>[0-9]+)|\.sealtree-(?P<pid2>[0-9]+)-[0-9a-f]{16}\.tmp",
                        re.DOTALL)

#: a temporary file nobody holds locked is stale once its writer's process is gone, or once
#: it is this old (its PID may have been reused, or belong to another PID namespace)
STALE_AFTER = 60.0


def is_temporary_name(name: str) -> bool:
    """Whether ``name`` has the form of a ``temporary_name`` (one a crash may leave behind)."""
    return _TEMPORARY.fullmatch(name) is not None


def process_gone(pid: int) -> bool:
    """Whether no process with ``pid`` runs (in our PID namespace)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    except OverflowError:  # no such PID can exist
        return True
    return False


def _remove_if_stale(path: str, pid: int) -> bool:
    """Remove the temporary file ``path`` if its writer is gone: the writer holds it locked
    (flock) from creation to rename, and it is stale only if the lock is free and its process
    gone (or the file is older than STALE_AFTER; the lock closes the window between a
    writer's create and lock)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # gone meanwhile, a symlink, unreadable: not ours to judge
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # its writer is at work
            return False
        if not (process_gone(pid) or time.time() - st.st_mtime > STALE_AFTER):
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return True
    finally:
        os.close(fd)


def remove_stale_temporaries(directory: StrPath, target: str | None = None) -> int:
    """Remove the temporary files of atomic writes into ``directory`` that a killed writer
    left (those of ``target``'s writes only, if given: ``.TARGET.tmpPID``); return how many.
    Safe while other writers run: a temporary file in use is locked by its writer."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    removed = 0
    for name in names:
        match = _TEMPORARY.fullmatch(name)
        if match is None or (target is not None and match["name"] != target):
            continue
        pid = int(match["pid"] or match["pid2"])
        removed += _remove_if_stale(os.path.join(directory, name), pid)
    return removed


def _finish(handle: BinaryIO, path: str, mode: int | None, durable: bool) -> None:
    try:
        handle.flush()
        if mode is not None:
            os.fchmod(handle.fileno(), mode)
        if durable:
            os.fsync(handle.fileno())
    except OSError as err:
        raise about(err, path) from None


def _rename(tmp: str, path: str) -> None:
    try:
        os.replace(tmp, path)
    except OSError as err:
        raise about(err, path) from None


@contextlib.contextmanager
def atomic_file(path: StrPath, mode: int = 0o644, *, durable: bool = True,
                chmod: bool = True) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` atomically when the block exits cleanly.

    On an exception the temporary file is removed and ``path`` is untouched.
    ``durable=False`` skips the fsyncs, for callers that sync the whole
    filesystem once at the end of a transaction instead.  ``chmod=False`` leaves the mode to
    the filesystem (FAT has none and refuses chmod).  An OSError of our
    own (creating, writing, renaming) names ``path``; see ``check_destination``
    for what is refused up front.
    """
    path = check_destination(path)
    directory, name = os.path.split(path)
    directory = directory or "."
    remove_stale_temporaries(directory, name)  # a killed writer's of the same file
    tmp = os.path.join(directory, temporary_name(name))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except OSError as err:
        raise _cannot_create(err, path, directory) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # in use: see remove_stale_temporaries
        with io.BufferedWriter(_TempFile(fd, path)) as handle:
            yield handle
            _finish(handle, path, mode if chmod else None, durable)
        _rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(directory)


def atomic_write(path: StrPath, data: bytes, mode: int = 0o644, *, durable: bool = True,
                 chmod: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically (see ``atomic_file``)."""
    with atomic_file(path, mode, durable=durable, chmod=chmod) as handle:
        handle.write(data)
