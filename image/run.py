"""The one subprocess wrapper of the image layer: a failing command is an ImageError that
carries its command line and the tool's last words."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence

from .errors import ImageError

#: A fixed environment for the filesystem tools: no locale-dependent output, and the
#: timestamps they take from the clock replaced by the image's own.
BASE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "TZ": "UTC"}


def run(cmd: Sequence[str | os.PathLike[str]], *, env: Mapping[str, str] | None = None,
        cwd: str | None = None, timeout: float = 3600, inherit: bool = False) -> str:
    """Run ``cmd`` with :data:`BASE_ENV` plus ``env``; its stdout.  ``inherit``: on top of the
    caller's environment (apt-get needs its proxy settings) instead of in place of it (the
    filesystem tools: nothing of the caller's, such as ``MKE2FS_CONFIG``, changes an image).
    Raises ImageError naming the tool when it is missing, fails or runs past ``timeout``."""
    argv = [os.fspath(c) for c in cmd]
    base = {**os.environ, **BASE_ENV} if inherit else BASE_ENV
    try:
        proc = subprocess.run(argv, env={**base, **(env or {})}, cwd=cwd, capture_output=True,
                              timeout=timeout, check=False)
    except FileNotFoundError:
        raise ImageError("is not installed (see scripts/setup)", path=argv[0]) from None
    except subprocess.TimeoutExpired:
        raise ImageError(f"ran longer than {timeout:.0f} s: {subprocess.list2cmdline(argv)}",
                         path=argv[0]) from None
    if proc.returncode != 0:
        said = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise ImageError(f"failed with status {proc.returncode}: {subprocess.list2cmdline(argv)}"
                         + (f": {' / '.join(said)}" if said else ""), path=argv[0])
    return proc.stdout.decode(errors="replace")
