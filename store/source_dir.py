"""Reading a directory into the store: files, directories, symlinks, hardlinks, metadata.

Names are bytes all the way (any name Linux allows round-trips).  mtimes are
ignored.  Device nodes, fifos and sockets are refused with the path named,
or skipped when the caller asks.

The walk lists every directory on this process (directories and symlinks
are read as it goes; each regular file becomes a job, one per inode, so
hardlinks are stored once) while the files are stored.  Once there are enough
of them, forked worker processes store them, fed job by job through a pipe
each: threads would fight over the GIL at every system call (measured: a
quarter of a commit's CPU went to switching between them).  The walk asks the
kernel to read each file ahead as it finds it, so the disk always has work
queued.  Last, the trees are written, children before parents.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from . import xattrs
from .errors import SourceError, SpecialFile
from .forked import Forked, SharedCounts, collect, worker_count
from .ids import RawId
from .model import Entry, Kind, Meta
from .readahead import read_ahead
from .transaction import Transaction

Progress = Callable[[int, int], None]  # (files done, bytes done)
Stored = tuple[Meta, RawId, int]  # a stored file's metadata, digest and size


@dataclass
class DirSourceOptions:
    skip_special: bool = False
    progress: Progress | None = None
    progress_every: int = 500


MAX_WORKERS = 4
# Below either, forking costs more than it saves: the files are stored here.
PARALLEL_MIN_FILES = 256
PARALLEL_MIN_BYTES = 8 << 20
PROGRESS_SECONDS = 0.2


@dataclass
class _Dir:
    """A directory as walked: its entries in name order, files as job numbers."""

    path: bytes
    entries: list[Entry | tuple[bytes, int] | _Dir] = field(default_factory=list)
    name: bytes = b""
    meta: Meta | None = None


def meta_of(path: bytes | int, st: os.stat_result) -> Meta:
    return Meta(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, xattrs.read(path))


class _Walk:
    """The walk: every directory under a root; each file goes to ``files`` as it is found."""

    def __init__(self, options: DirSourceOptions, files: _FileStore) -> None:
        self.options = options
        self.files = files
        self.inodes: dict[tuple[int, int], int] = {}  # (st_dev, st_ino) -> job, for hardlinks

    def run(self, path: bytes) -> list[_Dir]:
        """List every directory under ``path``; pre-order (parents before children)."""
        walked = [_Dir(path)]
        todo = [walked[0]]
        while todo:
            directory = todo.pop()
            try:
                with os.scandir(directory.path) as it:
                    children = sorted(it, key=lambda d: d.name)
            except OSError as err:
                raise SourceError(f"cannot read directory: {err.strerror}",
                                  path=directory.path) from err
            for child in children:
                item = self.entry(child)
                if isinstance(item, _Dir):
                    walked.append(item)
                    todo.append(item)
                if item is not None:
                    directory.entries.append(item)
        return walked

    def entry(self, child: os.DirEntry[bytes]) -> Entry | tuple[bytes, int] | _Dir | None:
        path = child.path
        try:
            st = child.stat(follow_symlinks=False)
            mode = st.st_mode
            if stat.S_ISREG(mode):
                return child.name, self.job(path, st)
            if stat.S_ISDIR(mode):
                return _Dir(path, name=child.name, meta=meta_of(path, st))
            if stat.S_ISLNK(mode):
                return Entry(child.name, Kind.SYMLINK, meta_of(path, st), target=os.readlink(path))
        except OSError as err:
            raise SourceError(f"cannot read: {err.strerror}", path=path) from err
        if self.options.skip_special:
            return None
        raise SpecialFile(f"is a {_special_name(mode)}; sealtree stores files, directories "
                          f"and symlinks only", path=path)

    def job(self, path: bytes, st: os.stat_result) -> int:
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in self.inodes:
            return self.inodes[key]
        job = self.files.add(path, st.st_size)
        if st.st_nlink > 1:
            self.inodes[key] = job
        return job


def store_file(tx: Transaction, path: bytes) -> Stored:
    """Store one regular file; its metadata is read from the open file, as its content is."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise SourceError("changed while being read (no longer a regular file)",
                                  path=path)
            meta = meta_of(fd, st)
            digest, size = tx.add_file(fd, st.st_size, meta)
        finally:
            os.close(fd)
    except OSError as err:
        raise SourceError(f"cannot read: {err.strerror}", path=path) from err
    return meta, digest, size


_JOB = struct.Struct("=I")  # a job on a worker's pipe: the path's length, then the path


def _serve(tx: Transaction, jobs_fd: int, others: Sequence[int], counts: SharedCounts, slot: int
           ) -> tuple[list[Stored], list[str]]:
    """A worker: store each file named on ``jobs_fd`` until it closes; return them (in order)
    and the objects staged.  ``counts`` (shared with the parent) gets the running totals."""
    for fd in others:  # the other workers' pipes: held here, they would never see their end
        os.close(fd)
    out: list[Stored] = []
    size = 0
    with os.fdopen(jobs_fd, "rb") as jobs:
        while header := jobs.read(_JOB.size):
            (length,) = _JOB.unpack(header)
            out.append(store_file(tx, jobs.read(length)))
            size += out[-1][2]
            counts.set(slot, len(out), size)
    return out, tx.staged()


class _FileStore:
    """Stores the files the walk finds: here while they are few, then in forked workers.

    Each job goes to the worker with the fewest bytes so far; ``finish()``
    waits for all of them and returns every job's result in job order.
    """

    def __init__(self, tx: Transaction, progress: Progress | None, every: int) -> None:
        self.tx = tx
        self.progress = progress
        self.every = every
        self.jobs: list[tuple[bytes, int]] = []  # (path, size); only until workers start
        self.count = 0
        self.bytes = 0
        self.workers: list[Forked] = []
        self.pipes: list[int] = []  # write end of each worker's job pipe
        self.shares: list[list[int]] = []  # the jobs each worker was given, in order
        self.loads: list[int] = []
        self.counts: SharedCounts | None = None
        self.parallel = worker_count(MAX_WORKERS)

    def add(self, path: bytes, size: int) -> int:
        """Queue a file; return its job number."""
        job = self.count
        self.count += 1
        self.bytes += size
        read_ahead(path)
        if self.workers:
            self._send(job, path, size)
            return job
        self.jobs.append((path, size))
        if self.parallel > 1 and self.count >= PARALLEL_MIN_FILES and self.bytes >= PARALLEL_MIN_BYTES:
            self._start(self.parallel)
        return job

    def _start(self, n: int) -> None:
        self.counts = SharedCounts(n)
        pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(n)]
        try:
            for slot, (read_fd, _write_fd) in enumerate(pipes):
                others = [fd for r, w in pipes for fd in (r, w) if fd != read_fd]
                self.workers.append(Forked(_serve, self.tx, read_fd, others, self.counts, slot,
                                           failure=_worker_failed))
        finally:
            for read_fd, _write_fd in pipes:
                os.close(read_fd)
            self.pipes = [write_fd for _read_fd, write_fd in pipes]
        self.shares = [[] for _ in range(n)]
        self.loads = [0] * n
        queued, self.jobs = self.jobs, []
        for job, (path, size) in enumerate(queued):
            self._send(job, path, size)

    def _send(self, job: int, path: bytes, size: int) -> None:
        slot = self.loads.index(min(self.loads))
        self.shares[slot].append(job)
        self.loads[slot] += size + 4096  # a file costs an inode as well as its bytes
        record = memoryview(_JOB.pack(len(path)) + path)
        try:
            while record:
                record = record[os.write(self.pipes[slot], record):]
        except BrokenPipeError:  # the worker stopped: it failed, and says why
            self.workers[slot].wait()
            raise

    def finish(self) -> list[Stored]:
        """Every job's result, in job order (raises the first failure)."""
        if not self.workers:
            return self._here()
        assert self.counts is not None
        for fd in self.pipes:
            os.close(fd)  # no more jobs: each worker finishes its queue and answers
        self.pipes = []
        counts, progress = self.counts, self.progress
        tick = None if progress is None else lambda: progress(*counts.total())
        done = collect(self.workers, tick, PROGRESS_SECONDS)
        self.workers = []
        results: dict[int, Stored] = {}
        for share, (stored, staged) in zip(self.shares, done, strict=True):
            self.tx.adopt(staged, flat=True)
            results.update(zip(share, stored, strict=True))
        return [results[job] for job in range(self.count)]

    def _here(self) -> list[Stored]:
        stored: list[Stored] = []
        done_bytes = 0
        for path, _size in self.jobs:
            stored.append(store_file(self.tx, path))
            done_bytes += stored[-1][2]
            if self.progress and len(stored) % self.every == 0:
                self.progress(len(stored), done_bytes)
        return stored

    def close(self) -> None:
        """Stop every worker still running (after a failure)."""
        for fd in self.pipes:
            os.close(fd)
        self.pipes = []
        while self.workers:
            self.workers.pop().cancel()
        if self.counts is not None:
            self.counts.close()
            self.counts = None


def _worker_failed(message: str) -> SourceError:
    return SourceError(f"a commit worker failed: {message}")


def _assemble(tx: Transaction, walked: list[_Dir], stored: Sequence[Stored]) -> RawId:
    """Store every directory's tree, children first; return the root's id."""
    written: dict[int, RawId] = {}
    for directory in reversed(walked):  # pre-order reversed: children before parents
        entries = []
        for item in directory.entries:
            if isinstance(item, _Dir):
                assert item.meta is not None  # only the root has none
                entries.append(Entry(item.name, Kind.DIR, item.meta, tree=written.pop(id(item))))
            elif isinstance(item, tuple):
                name, job = item
                meta, digest, size = stored[job]
                entries.append(Entry(name, Kind.FILE, meta, size=size, digest=digest))
            else:
                entries.append(item)
        written[id(directory)] = tx.add_tree(entries)
    return written[id(walked[0])]


def _special_name(mode: int) -> str:
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    return f"file of unknown type {stat.S_IFMT(mode):#o}"


def read_directory(tx: Transaction, root: str, options: DirSourceOptions | None = None
                   ) -> tuple[RawId, Meta]:
    """Store the tree under ``root``; return its root tree id and the root's metadata."""
    options = options or DirSourceOptions()
    path = os.fsencode(root)
    try:
        st = os.stat(path)
    except OSError as err:
        raise SourceError(f"{err.strerror}", path=root) from err
    if not stat.S_ISDIR(st.st_mode):
        raise SourceError("not a directory", path=root)
    root_meta = meta_of(path, st)
    files = _FileStore(tx, options.progress, options.progress_every)
    try:
        walked = _Walk(options, files).run(path)
        stored = files.finish()
    finally:
        files.close()
    tree = _assemble(tx, walked, stored)
    if options.progress:
        options.progress(len(stored), sum(size for _meta, _digest, size in stored))
    return tree, root_meta
