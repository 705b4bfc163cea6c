"""Object writes done behind the reader: a source that reads one stream (a tar archive) hands
each small file's bytes and digest over and reads on, while a forked worker creates the
objects.

Creating an object is system calls only (create, write, chown, chmod, xattrs, close); on a
disk filesystem a create costs about as much as parsing a member's header in Python, so
doing both at once on two cores takes about half the time.  The worker is a process
(``store.forked``), not a thread: a thread would wait for the reader's GIL after every
one of those calls.  Files go to it in batches through a pipe, pickled; it stages them in
the transaction's staging directory and the transaction adopts them at ``finish()``, so
what is written is published, or removed, with the rest of the transaction.

A second worker makes the repository's missing ``objects/xx`` directories meanwhile
(``publish`` would make them at the end, after everything else).

The worker starts once START_FILES files or START_BYTES bytes are queued; fewer are
written here at ``finish()`` (a fork costs more than a few files).  Memory is bounded:
a batch is sent when it holds BATCH_FILES files or BATCH_BYTES bytes, and sending waits
while the pipe is full.  The first failure of a write is raised by ``finish()`` (or by the
``add`` that finds the worker gone), made into the error the reader would have raised
itself by ``explain``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import struct
from collections.abc import Callable, Sequence

from .errors import Name, SealtreeError, SourceError
from .forked import Forked
from .ids import RawId
from .model import Meta
from .transaction import Transaction, make_object_dirs

START_FILES = 64
START_BYTES = 1 << 20
BATCH_FILES = 32
BATCH_BYTES = 1 << 20
PIPE_SIZE = 1 << 20  # asked for (F_SETPIPE_SZ); the kernel's default is 64 KiB
_F_SETPIPE_SZ = 1031
_LENGTH = struct.Struct("=Q")

Explain = Callable[[BaseException, Meta, Name], BaseException]
_Job = tuple[bytes, Meta, RawId, Name]


def _store(tx: Transaction, jobs: Sequence[_Job], explain: Explain) -> None:
    for data, meta, digest, name in jobs:
        try:
            tx.add_file_bytes(data, meta, digest)
        except OSError as err:
            explained = explain(err, meta, name)
            if explained is err:
                raise
            raise explained from err


def _serve(tx: Transaction, read_fd: int, write_fd: int, explain: Explain) -> list[str]:
    """In the worker: store every batch read from ``read_fd`` until the parent closes it;
    return the objects staged."""
    os.close(write_fd)  # the parent's end, inherited: the pipe must end when the parent closes it
    tx.create_exactly()  # this process only stages objects: its umask is its own
    with os.fdopen(read_fd, "rb") as batches:
        while header := batches.read(_LENGTH.size):
            (length,) = _LENGTH.unpack(header)
            _store(tx, pickle.loads(batches.read(length)), explain)  # noqa: S301 - our parent's
    return tx.staged()


def _worker_failed(message: str) -> SourceError:
    return SourceError(f"the object writer failed: {message}")


class WriteBehind:
    """``add(data, meta, digest, name)`` stores a file in ``tx``, soon, in a worker process;
    ``finish()`` waits until every file is stored.  Use as a context manager: leaving it
    stops the worker."""

    def __init__(self, tx: Transaction, explain: Explain) -> None:
        self.tx = tx
        self.explain = explain
        self.batch: list[_Job] = []
        self.batch_bytes = 0
        self.total_bytes = 0
        self.worker: Forked | None = None
        self.dirs: Forked | None = None  # makes the objects/xx directories meanwhile
        self.pipe = -1  # the write end of the worker's pipe

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, data: bytes, meta: Meta, digest: RawId, name: Name) -> None:
        """Queue ``data`` (whose fs-verity digest is ``digest``) to be stored with ``meta``;
        ``name`` is what an error about it names."""
        self.batch.append((data, meta, digest, name))
        self.batch_bytes += len(data)
        self.total_bytes += len(data)
        if self.worker is None:
            if len(self.batch) >= START_FILES or self.total_bytes >= START_BYTES:
                self._start()
        elif len(self.batch) >= BATCH_FILES or self.batch_bytes >= BATCH_BYTES:
            self._send()

    def _start(self) -> None:
        # First (so that it holds no end of the writer's pipe): the objects/xx directories.
        self.dirs = Forked(make_object_dirs, self.tx.objects_root, failure=_worker_failed)
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # a smaller pipe only means more waits
            fcntl.fcntl(write_fd, _F_SETPIPE_SZ, PIPE_SIZE)
        try:
            self.worker = Forked(_serve, self.tx, read_fd, write_fd, self.explain,
                                 failure=_worker_failed)
        except BaseException:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        self.pipe = write_fd
        self._send()

    def _send(self) -> None:
        assert self.worker is not None
        payload = pickle.dumps(self.batch, protocol=pickle.HIGHEST_PROTOCOL)
        self.batch = []
        self.batch_bytes = 0
        try:
            for piece in (_LENGTH.pack(len(payload)), payload):
                record = memoryview(piece)
                while record:
                    record = record[os.write(self.pipe, record):]
        except BrokenPipeError:  # the worker stopped: it failed, and says why
            self._collect()
            raise

    def _collect(self) -> None:
        """Close the pipe, wait for the worker and adopt what it staged (or raise its error)."""
        assert self.worker is not None
        if self.pipe >= 0:
            os.close(self.pipe)
            self.pipe = -1
        worker, self.worker = self.worker, None
        try:
            staged = worker.wait()
        finally:
            worker.cancel()
        self.tx.adopt(staged, flat=True)
        if self.dirs is not None:
            dirs, self.dirs = self.dirs, None
            try:
                self.tx.made_dirs(dirs.wait())
            except (OSError, SealtreeError):  # not needed: publish makes what is missing
                pass
            finally:
                dirs.cancel()

    def finish(self) -> None:
        """Store every file queued; raise the first failure."""
        if self.worker is None:
            jobs, self.batch = self.batch, []
            _store(self.tx, jobs, self.explain)
            return
        if self.batch:
            self._send()
        self._collect()

    def close(self) -> None:
        """Stop the worker if it still runs (after a failure of the reader)."""
        if self.pipe >= 0:
            os.close(self.pipe)
            self.pipe = -1
        if self.worker is not None:
            self.worker.cancel()
            self.worker = None
        if self.dirs is not None:
            self.dirs.cancel()
            self.dirs = None
