"""Asking the kernel to read a file ahead of need (``POSIX_FADV_WILLNEED``).

On a cold cache, work that reads many files one after the other waits on the
disk for each; asking for the next files early keeps the disk's queue full
while this process hashes or copies the current one.  Only a hint: a file
that cannot be opened is left for the real read to report.
"""

from __future__ import annotations

import os


def read_ahead(path: str | bytes) -> None:
    """Start reading the whole of ``path`` into the page cache, without waiting for it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass
    finally:
        os.close(fd)
