"""The trees the benchmarks commit, check out and deploy.

Three corpora, all cached under :func:`cache_dir` (``$SEALTREE_BENCH_CACHE``,
default ``~/.cache/sealtree-bench``):

* ``minbase``: ``debootstrap --variant=minbase bookworm``, with device nodes,
  fifos and sockets removed (neither ostree nor a pack carries them);
* ``minbase-python3-perl``: the same plus ``--include=python3,perl``, a larger
  real tree;
* ``synthetic-<n>-s<seed>-v<version>``: :func:`synthetic_tree`, a deterministic
  tree shaped like a root filesystem, for scaling curves up to 200,000 files.

Every cached tree is built in a temporary directory beside its final path and
renamed into place only when complete, under a lock file, so a half-built tree
is never used and two processes never build the same tree at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import random
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.proc import run
from bench.tools import ensure_tool

log = logging.getLogger("bench")

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
LARGER_INCLUDE = ("python3", "perl")
GENERATOR_VERSION = 1
FIXED_MTIME = 1_700_000_000


def cache_dir() -> Path:
    """The corpus cache: ``$SEALTREE_BENCH_CACHE`` or ``~/.cache/sealtree-bench``."""
    env = os.environ.get("SEALTREE_BENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "sealtree-bench"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached(cache: Path, name: str, build: Callable[[Path], None]) -> Path:
    """Return ``cache/name``, building it first with ``build(tmp_root)`` if absent.

    ``build`` receives a path that does not exist yet, inside a temporary
    directory beside the final path; the result is renamed into place.  ``cache/name``
    may be a symlink to another cache's tree (a private ``--cache`` sharing the corpora):
    its target is returned, since ``ostree commit --tree=dir=`` will not follow a link.
    """
    final = cache / name
    if final.is_dir():
        return final.resolve()
    with locked(cache / f".{name}.lock"):
        if final.is_dir():
            return final
        for stale in cache.glob(f".{name}.tmp-*"):  # left by a killed build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=cache))
        try:
            build(tmp / "root")
            os.rename(tmp / "root", final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("corpus ready: %s", final)
    return final


def remove_special_files(root: Path) -> int:
    """Delete block/char devices, fifos and sockets under ``root``; return how many."""
    removed = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            path = os.path.join(dirpath, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISBLK(mode) or stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
                os.unlink(path)
                removed += 1
    return removed


def _debootstrap(dest: Path, include: tuple[str, ...] = ()) -> None:
    """``debootstrap --variant=minbase [--include=...] bookworm DEST MIRROR``, then strip specials."""
    debootstrap = ensure_tool("debootstrap", "debootstrap")
    mirror = os.environ.get("SEALTREE_BENCH_MIRROR", DEFAULT_MIRROR)
    argv = [debootstrap, "--variant=minbase"]
    if include:
        argv.append("--include=" + ",".join(include))
    log.info("debootstrap %s into %s (takes a minute or two)", ",".join(include) or "minbase", dest)
    run([*argv, SUITE, dest, mirror])
    log.info("removed %d device nodes/fifos/sockets", remove_special_files(dest))


def debian_minbase(cache: Path | None = None) -> Path:
    """The cached Debian bookworm minbase tree (``<cache>/minbase``), built if absent."""
    return cached(cache or cache_dir(), "minbase", _debootstrap)


def debian_larger(cache: Path | None = None) -> Path:
    """The cached minbase + python3 + perl tree (``<cache>/minbase-python3-perl``)."""
    return cached(cache or cache_dir(), "minbase-" + "-".join(LARGER_INCLUDE),
                   lambda dest: _debootstrap(dest, LARGER_INCLUDE))


def synthetic(n_files: int, seed: int = 0, cache: Path | None = None) -> Path:
    """The cached output of :func:`synthetic_tree` for ``n_files`` and ``seed``."""
    name = f"synthetic-{n_files}-s{seed}-v{GENERATOR_VERSION}"
    def build(dest: Path) -> None:
        synthetic_tree(dest, n_files, seed)

    return cached(cache or cache_dir(), name, build)


@dataclass(frozen=True)
class TreeStats:
    """What a corpus holds, for the report."""

    regular_files: int
    symlinks: int
    directories: int
    hardlinked_files: int
    total_bytes: int

    @property
    def entries(self) -> int:
        """Regular files plus symlinks (what "files" counts in files/second)."""
        return self.regular_files + self.symlinks

    def as_dict(self) -> dict[str, int]:
        """A JSON-ready dict, with ``entries`` included."""
        return {**asdict(self), "entries": self.entries}


def tree_stats(root: Path) -> TreeStats:
    """Count the regular files, symlinks, directories and bytes under ``root``."""
    regular = links = dirs = hard = size = 0
    for dirpath, dirnames, filenames in os.walk(root):
        linked = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        dirs += len(dirnames) - len(linked)
        for name in filenames + linked:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISLNK(st.st_mode):
                links += 1
            elif stat.S_ISREG(st.st_mode):
                regular += 1
                size += st.st_size
                hard += st.st_nlink > 1
    return TreeStats(regular, links, dirs, hard, size)


# --- the synthetic generator -------------------------------------------------

_SYLLABLES = ("lib", "core", "net", "sys", "x", "gl", "py", "ssl", "z", "utf", "conf", "init",
              "dbus", "font", "gtk", "cache", "man", "doc", "share", "io", "rt", "ld", "krb",
              "pam", "udev", "kmod", "perl", "bash", "sh", "apt", "dpkg", "gnu", "tz", "nss")
_EXTENSIONS = ("", "", "", ".so", ".so.1", ".so.6", ".py", ".pyc", ".pm", ".conf", ".h", ".gz",
               ".mo", ".txt", ".list", ".md5sums", ".json", ".html", ".png", ".ko.xz")
_TOPLEVEL = ("usr", "usr/lib", "usr/lib/x86_64-linux-gnu", "usr/share", "usr/share/doc",
             "usr/share/locale", "usr/share/man", "usr/bin", "usr/sbin", "usr/include", "etc",
             "var", "var/lib", "var/cache", "opt", "usr/lib/modules")
_DEPTH_WEIGHTS = {2: 10, 3: 20, 4: 25, 5: 20, 6: 12, 7: 8, 8: 5}
_MAX_SIZE = 16 << 20


def _name(rng: random.Random, taken: set[str]) -> str:
    """A fresh plausible file name, unique within one directory."""
    base = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3)))
    if rng.random() < 0.3:
        base += f"-{rng.randint(0, 99)}"
    if rng.random() < 0.002:
        base += rng.choice(("-é", " copy", "-ü日本"))  # names are bytes; keep valid UTF-8
    name = base + rng.choice(_EXTENSIONS)
    while name in taken:
        name = f"{base}.{rng.randint(0, 1 << 30)}"
    taken.add(name)
    return name


def _file_size(rng: random.Random) -> int:
    """A root-filesystem-like size: log-normal around 2 KiB, ~2% empty, ~0.1% MB-sized."""
    u = rng.random()
    if u < 0.02:
        return 0
    if u < 0.021:
        return rng.randint(1 << 20, 8 << 20)
    return min(_MAX_SIZE, int(rng.lognormvariate(math.log(2200), 2.0)))


def _text_pool(rng: random.Random, size: int) -> bytes:
    """Deterministic word-salad text, compressible like real docs and configs."""
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10)))
             for _ in range(2000)]
    out = bytearray()
    while len(out) < size:
        line = " ".join(rng.choices(words, k=rng.randint(3, 14)))
        out += line.encode() + b"\n"
    return bytes(out[:size])


def _content(rng: random.Random, pools: tuple[bytes, bytes], size: int, tag: bytes) -> bytes:
    """``size`` bytes: a unique tag, then a window of the text or binary pool (repeated if needed)."""
    pool = pools[0] if rng.random() < 0.6 else pools[1]
    body = bytearray(tag[:size])
    while len(body) < size:
        start = rng.randrange(len(pool))
        body += pool[start:start + size - len(body)]
    return bytes(body)


def _dir_depth(rel: str) -> int:
    return rel.count("/") + 1


def _make_dirs(rng: random.Random, root: Path, n_dirs: int) -> tuple[list[str], dict[str, set[str]]]:
    """Create a skeleton plus ``n_dirs`` directories 2-8 levels deep.

    Returns the directories' paths and, for each, the set of names already
    taken in it (its subdirectories), so that files get fresh names.
    """
    dirs = list(_TOPLEVEL)
    by_depth: dict[int, list[str]] = {}
    names: dict[str, set[str]] = {d: set() for d in dirs}
    for d in dirs:
        by_depth.setdefault(_dir_depth(d), []).append(d)
    depths = list(_DEPTH_WEIGHTS)
    weights = list(_DEPTH_WEIGHTS.values())
    for _ in range(n_dirs):
        depth = rng.choices(depths, weights)[0]
        while depth - 1 not in by_depth:
            depth -= 1
        parent = rng.choice(by_depth[depth - 1])
        child = f"{parent}/{_name(rng, names[parent])}"
        names[child] = set()
        dirs.append(child)
        by_depth.setdefault(depth, []).append(child)
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib")):
        os.symlink(target, root / link)
    return dirs, names


def synthetic_tree(dest: Path, n_files: int, seed: int = 0) -> Path:
    """Write a deterministic root-filesystem-shaped tree of ``n_files`` entries at ``dest``.

    Entries are ~94% regular files (sizes log-normal around 2 KiB, ~2% empty,
    ~0.1% of 1-8 MiB, ~2% duplicating an earlier file's content), ~5% symlinks
    (relative, absolute, to directories, a few dangling) and ~1% hardlinks to
    earlier files; a few files are setuid, ~1% carry ``user.*`` xattrs, a few
    have non-root owners.  Directories are 2-8 levels deep, with a skewed
    number of files each.  The same ``n_files`` and ``seed`` give the same
    names, bytes, modes, owners and xattrs (mtimes are pinned too).
    ``dest`` must not exist.
    """
    rng = random.Random(f"sealtree-bench:{GENERATOR_VERSION}:{seed}:{n_files}")
    dest.mkdir(parents=True)
    dirs, taken = _make_dirs(rng, dest, max(8, n_files // 9))
    file_dirs = [d for d in dirs if _dir_depth(d) >= 2]
    dir_weights = [rng.paretovariate(1.1) for _ in file_dirs]
    pools = (_text_pool(rng, 4 << 20), rng.randbytes(8 << 20))
    regular: list[str] = []
    small_contents: list[bytes] = []
    setuid_left = max(1, n_files // 2000)
    placements = rng.choices(file_dirs, weights=dir_weights, k=n_files)
    for index, parent in enumerate(placements):
        rel = f"{parent}/{_name(rng, taken[parent])}"
        path = dest / rel
        kind = rng.random()
        if kind < 0.05:
            os.symlink(_symlink_target(rng, rel, regular, dirs), path)
            continue
        if kind < 0.06 and regular:
            os.link(dest / rng.choice(regular), path)
            continue
        if small_contents and rng.random() < 0.02:
            data = rng.choice(small_contents)
        else:
            data = _content(rng, pools, _file_size(rng), f"#{seed}:{index}\n".encode())
        path.write_bytes(data)
        if len(data) <= 4096 and len(small_contents) < 1000:
            small_contents.append(data)
        _set_metadata(rng, path, rel, setuid_left > 0)
        if path.stat().st_mode & stat.S_ISUID:
            setuid_left -= 1
        regular.append(rel)
    _pin_mtimes(dest)
    return dest


def _symlink_target(rng: random.Random, rel: str, regular: list[str], dirs: list[str]) -> str:
    """A relative or absolute target to an existing file or directory, or (rarely) dangling."""
    u = rng.random()
    if u < 0.1 or not regular:
        return "../missing/" + rng.choice(_SYLLABLES)
    target = rng.choice(dirs) if u < 0.2 else rng.choice(regular)
    if u < 0.5:
        return "/" + target
    return os.path.relpath(target, os.path.dirname(rel))


def _set_metadata(rng: random.Random, path: Path, rel: str, setuid_allowed: bool) -> None:
    """Mode, owner and xattrs for one regular file."""
    in_bin = "/bin/" in f"/{rel}" or "/sbin/" in f"/{rel}"
    mode = 0o755 if in_bin or rng.random() < 0.08 else 0o644
    if in_bin and setuid_allowed and rng.random() < 0.05:
        mode = 0o4755
    u = rng.random()
    if u < 0.005:
        os.chown(path, 0, 8)  # group mail, like /var/mail
    elif u < 0.008:
        os.chown(path, 100, 102)
    os.chmod(path, mode)
    if rng.random() < 0.01:
        os.setxattr(path, "user.sealtree.bench", rng.randbytes(rng.randint(1, 64)))
        if rng.random() < 0.3:
            os.setxattr(path, "user.mime_type", b"application/octet-stream")


def _pin_mtimes(root: Path) -> None:
    """Set every entry's atime and mtime to one fixed instant, deepest first."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False)
    os.utime(root, (FIXED_MTIME, FIXED_MTIME))
