"""Reading a directory into the store: files, directories, symlinks, hardlinks, metadata.

Names are bytes all the way (any name Linux allows round-trips).  mtimes are
ignored.  Device nodes, fifos and sockets are refused with the path named,
or skipped when the caller asks.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from . import xattrs
from .errors import SourceError
from .ids import RawId
from .model import Entry, Kind, Meta
from .transaction import Transaction

Progress = Callable[[int, int], None]  # (files done, bytes done)


@dataclass
class DirSourceOptions:
    skip_special: bool = False
    progress: Progress | None = None
    progress_every: int = 500


# Reading, hashing and staging files overlap on a few threads: open, read, write,
# fchown and hashing all release the GIL, and inode creation waits on the disk.
WORKERS = 4


class _DirReader:
    def __init__(self, tx: Transaction, options: DirSourceOptions, pool: ThreadPoolExecutor) -> None:
        self.tx = tx
        self.options = options
        self.pool = pool
        self.inodes: dict[tuple[int, int], Future[tuple[Meta, RawId, int]]] = {}
        self.files = 0
        self.bytes = 0

    def meta_of(self, path: bytes | int, st: os.stat_result) -> Meta:
        return Meta(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, xattrs.read(path))

    def read_dir(self, path: bytes) -> RawId:
        """Store one directory: its files go to the pool, subdirectories recurse meanwhile."""
        try:
            with os.scandir(path) as it:
                children = sorted(it, key=lambda d: d.name)
        except OSError as err:
            raise SourceError(f"{os.fsdecode(path)}: cannot read directory: {err.strerror}",
                              path=os.fsdecode(path)) from err
        pending: list[Entry | tuple[bytes, Future[tuple[Meta, RawId, int]]] | None] = [
            self.read_entry(child) for child in children]
        entries = []
        for item in pending:
            if isinstance(item, tuple):
                name, future = item
                meta, digest, size = future.result()
                entries.append(Entry(name, Kind.FILE, meta, size=size, digest=digest))
                self.files += 1
                self.bytes += size
                if self.options.progress and self.files % self.options.progress_every == 0:
                    self.options.progress(self.files, self.bytes)
            elif item is not None:
                entries.append(item)
        return self.tx.add_tree(entries)

    def read_entry(self, child: os.DirEntry[bytes]
                   ) -> Entry | tuple[bytes, Future[tuple[Meta, RawId, int]]] | None:
        path = child.path
        try:
            st = child.stat(follow_symlinks=False)
            mode = st.st_mode
            if stat.S_ISREG(mode):
                if st.st_nlink > 1:
                    key = (st.st_dev, st.st_ino)
                    if key not in self.inodes:
                        self.inodes[key] = self.pool.submit(self.read_file, path, st)
                    return child.name, self.inodes[key]
                return child.name, self.pool.submit(self.read_file, path, st)
            if stat.S_ISDIR(mode):
                meta = self.meta_of(path, st)
                return Entry(child.name, Kind.DIR, meta, tree=self.read_dir(path))
            if stat.S_ISLNK(mode):
                meta = self.meta_of(path, st)
                return Entry(child.name, Kind.SYMLINK, meta, target=os.readlink(path))
        except OSError as err:
            raise SourceError(f"{os.fsdecode(path)}: cannot read: {err.strerror}",
                              path=os.fsdecode(path)) from err
        if self.options.skip_special:
            return None
        raise SourceError(f"{os.fsdecode(path)}: is a {_special_name(mode)}; sealtree stores "
                          f"files, directories and symlinks only (use --skip-special)",
                          path=os.fsdecode(path))

    def read_file(self, path: bytes, st: os.stat_result) -> tuple[Meta, RawId, int]:
        """Store one regular file (on a pool thread); return its metadata, digest and size."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                meta = self.meta_of(fd, st)
                digest, size = self.tx.add_file(fd, st.st_size, meta)
            finally:
                os.close(fd)
        except OSError as err:
            raise SourceError(f"{os.fsdecode(path)}: cannot read: {err.strerror}",
                              path=os.fsdecode(path)) from err
        return meta, digest, size


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
        raise SourceError(f"{root}: {err.strerror}", path=root) from err
    if not stat.S_ISDIR(st.st_mode):
        raise SourceError(f"{root}: not a directory", path=root)
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="commit") as pool:
        reader = _DirReader(tx, options, pool)
        root_meta = reader.meta_of(path, st)
        try:
            tree = reader.read_dir(path)
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    if options.progress:
        options.progress(reader.files, reader.bytes)
    return tree, root_meta
