"""Boot a real Linux kernel under qemu with a custom initramfs.

The guest is Debian bookworm's ``linux-image-amd64`` (6.1, fs-verity built in;
or, with ``trixie_kernel()``, trixie's 6.12, which has overlayfs ``verity=``,
fetched through a private apt source list and state kept in the cache, never
the machine's), a static busybox, Debian's python3.11 with ``cryptography`` and ``zstandard``,
and whatever trees and ``/init`` script a test supplies.

Everything expensive (downloaded ``.deb`` files, extracted packages, the
busybox+python initramfs segment, each module set's segment) is kept in a
cache directory (``SEALTREE_VM_CACHE``, default ``~/.cache/sealtree-vm``).
Every cache entry is built in a temporary directory beside its final place and
renamed into place, so an interrupted run never leaves a half-built entry.

An initramfs is the concatenation of gzip-compressed cpio segments (the
kernel unpacks them in order, later files win): the cached base, the cached
module set, and a small per-build segment holding ``/init`` and the caller's
trees. So a rebuild with another init script costs well under a second.

Guest init scripts print result lines ``SEALTREE-RESULT key=value`` on the
console and end with ``poweroff -f``; :class:`BootResult` parses them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import lzma
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

#: Bump when the layout of a cached segment changes, to invalidate old ones.
BASE_FORMAT = 5

RESULT_MARKER = "SEALTREE-RESULT"

#: Host commands the harness runs, and the Debian packages that provide them.
HOST_TOOLS: dict[str, str] = {
    "qemu-system-x86_64": "qemu-system-x86",
    "mke2fs": "e2fsprogs",
    "busybox": "busybox-static",
    "gzip": "gzip",
    "dpkg-deb": "dpkg",
    "ldd": "libc-bin",
}
STATIC_BUSYBOX = Path("/bin/busybox")
QBOOT_ROM = Path("/usr/share/qemu/qboot.rom")

PYTHON_PACKAGES: tuple[str, ...] = (
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "python3-cffi-backend",
    "python3-cryptography",
    "python3-zstandard",
)
#: stdlib parts a test guest never needs; dropped to keep the initramfs small.
STDLIB_PRUNE: tuple[str, ...] = (
    "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3",
    "pydoc_data", "distutils/tests", "unittest/test", "ctypes/test",
    "sqlite3/test",
)

#: Modules to mount an ext4 virtio disk (dependencies are added automatically).
DISK_MODULES: tuple[str, ...] = ("virtio_pci", "virtio_blk", "ext4")
#: Modules for overlay mounts, and the metacopy layout's EROFS image under them (erofs; loop
#: where the kernel mounts no image file, before 6.12).
OVERLAY_MODULES: tuple[str, ...] = ("overlay", "erofs", "loop")
#: Modules for a ``virtfs`` host share mounted over 9p.
NINEP_MODULES: tuple[str, ...] = ("virtio_pci", "9pnet_virtio", "9p")
#: Soft dependencies the kernel would satisfy through request_module().
SOFT_DEPS: dict[str, tuple[str, ...]] = {"ext4": ("crc32c_generic",), "jbd2": ("crc32c_generic",)}

#: Host files loaded with dlopen (so invisible to ldd) that the guest needs:
#: OpenSSL's legacy provider, which cryptography loads at import.
HOST_RUNTIME_FILES: tuple[Path, ...] = (Path("/usr/lib/x86_64-linux-gnu/ossl-modules/legacy.so"),)

GUEST_MODULE_DIR = "lib/modules"
GUEST_MODULE_ORDER = "lib/modules/sealtree.order"


class VmError(RuntimeError):
    """The harness could not prepare or run the guest."""


class CommandError(VmError):
    """A host command failed; carries its command line and stderr."""

    def __init__(self, cmd: Sequence[str], returncode: int, stderr: str) -> None:
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(
            f"command failed with status {returncode}: {subprocess.list2cmdline(self.cmd)}\n"
            f"{stderr.strip()}"
        )


# --------------------------------------------------------------------------- commands


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    stdin_data: bytes | None = None,
    stdout: BinaryIO | None = None,
    timeout: float | None = None,
) -> str:
    """Run ``cmd`` and return its stdout as text (empty when ``stdout`` is given).

    On a non-zero exit (or a missing program, or a timeout) the command line is
    logged and :class:`CommandError` is raised with the command and its stderr.
    ``env`` entries are added to the current environment.
    """
    argv = [os.fspath(c) for c in cmd]
    full_env = {**os.environ, **env} if env else None
    log.debug("run: %s", subprocess.list2cmdline(argv))
    try:
        proc = subprocess.run(
            argv, cwd=cwd, env=full_env, input=stdin_data,
            stdout=stdout if stdout is not None else subprocess.PIPE,
            stderr=subprocess.PIPE, timeout=timeout, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.error("command could not run: %s (%s)", subprocess.list2cmdline(argv), exc)
        raise CommandError(argv, -1, str(exc)) from exc
    stderr = proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        log.error("command failed (%d): %s\n%s", proc.returncode, subprocess.list2cmdline(argv), stderr)
        raise CommandError(argv, proc.returncode, stderr)
    return proc.stdout.decode(errors="replace") if stdout is None else ""


# --------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """The cache root (``$SEALTREE_VM_CACHE`` or ``~/.cache/sealtree-vm``), created."""
    root = Path(os.environ.get("SEALTREE_VM_CACHE") or Path.home() / ".cache" / "sealtree-vm")
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextmanager
def _staging(final: Path) -> Iterator[Path]:
    """Yield a fresh temp directory beside ``final``; on success rename it to ``final``.

    If another process created ``final`` meanwhile, its copy is kept and ours is
    dropped. On any error the temp directory is removed and nothing appears.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.exists():
                raise
            log.info("cache entry %s appeared concurrently; keeping it", final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def _staging_file(final: Path) -> Iterator[Path]:
    """Yield a temp file path beside ``final``; on success rename it to ``final``."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o644)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def _scratch() -> Iterator[Path]:
    """Yield an empty temp directory inside the cache, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=".scratch.", dir=cache_dir()) as tmp:
        yield Path(tmp)


# --------------------------------------------------------------------------- host tools


def _missing(tools: Mapping[str, str]) -> dict[str, str]:
    """The subset of ``tools`` (command -> package) not usable on the host."""
    missing = {tool: pkg for tool, pkg in tools.items() if shutil.which(tool) is None}
    if "busybox" in tools and not _is_static(STATIC_BUSYBOX):
        missing["busybox"] = tools["busybox"]
    return missing


def _is_static(path: Path) -> bool:
    """True when ``path`` is an ELF executable with no program interpreter."""
    try:
        data = path.read_bytes()[:8192]
    except OSError:
        return False
    return data.startswith(b"\x7fELF") and b"ld-linux" not in data


def ensure_tools(tools: Mapping[str, str]) -> None:
    """Make sure each command in ``tools`` (command -> Debian package) is on the host.

    Installs the missing packages with apt-get (after ``apt-get update``).
    Raises :class:`VmError` naming what could not be installed.
    """
    missing = _missing(tools)
    if not missing:
        return
    packages = sorted(set(missing.values()))
    log.info("installing host packages: %s", " ".join(packages))
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300"]
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    try:
        run([*apt, "update"], env=env, timeout=900)
        run([*apt, "install", "-y", "--no-install-recommends", *packages], env=env, timeout=1800)
    except CommandError as exc:
        raise VmError(f"cannot install host packages {packages}: {exc}") from exc
    still = _missing(tools)
    if still:
        raise VmError(f"host tools still missing after apt-get install: {sorted(still)}")


def ensure_host_tools() -> None:
    """Make sure qemu, a static busybox, mke2fs, gzip, dpkg-deb and ldd exist.

    Installs qemu-system-x86, busybox-static, e2fsprogs (...) with apt-get
    when missing; raises :class:`VmError` when that fails.
    """
    ensure_tools(HOST_TOOLS)


def qemu_unusable_reason() -> str | None:
    """None when qemu-system-x86_64 can run here; otherwise why it cannot."""
    try:
        ensure_host_tools()
        run(["qemu-system-x86_64", "--version"], timeout=60)
    except VmError as exc:
        return f"qemu-system-x86_64 cannot run: {exc}"
    return None


# --------------------------------------------------------------------------- packages


#: Private apt sources (suite name -> sources.list line), used with their own state and
#: cache directories under the cache root: the machine's apt configuration is never changed.
PRIVATE_SUITES: dict[str, str] = {
    "trixie": "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
              "http://deb.debian.org/debian trixie main",
}


def _private_apt_options(suite: str) -> list[str]:
    """apt options that use only ``suite``'s private source list, state and cache."""
    if suite not in PRIVATE_SUITES:
        raise VmError(f"no private apt source for suite {suite!r}")
    root = cache_dir() / f"apt-{suite}"
    for sub in ("state/lists/partial", "cache/archives/partial"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    sources = root / "sources.list"
    if not sources.exists() or sources.read_text() != PRIVATE_SUITES[suite] + "\n":
        sources.write_text(PRIVATE_SUITES[suite] + "\n")
    return ["-o", f"Dir::Etc::SourceList={sources}", "-o", "Dir::Etc::SourceParts=/nonexistent",
            "-o", f"Dir::State={root / 'state'}", "-o", f"Dir::Cache={root / 'cache'}",
            "-o", "Dir::State::status=/dev/null"]


def _has_lists(suite: str) -> bool:
    return any((cache_dir() / f"apt-{suite}" / "state" / "lists").glob("*_Packages*"))


def _apt_cache(*args: str, suite: str | None = None) -> str:
    """Run apt-cache; if it knows nothing yet, run ``apt-get update`` once and retry.

    ``suite``: through that private source list (``PRIVATE_SUITES``) instead of the machine's."""
    options = _private_apt_options(suite) if suite is not None else []
    out = run(["apt-cache", *options, *args]) if suite is None or _has_lists(suite) else ""
    if out.strip() and "Candidate: (none)" not in out:
        return out
    run(["apt-get", *options, "-o", "DPkg::Lock::Timeout=300", "update"], timeout=900)
    return run(["apt-cache", *options, *args])


@cache
def kernel_package(suite: str | None = None) -> str:
    """The versioned kernel package that ``linux-image-amd64`` depends on (in ``suite``)."""
    out = _apt_cache("depends", "linux-image-amd64", suite=suite)
    found = re.search(r"Depends:\s*(linux-image-[0-9][\w.+-]*)", out)
    if found is None:
        raise VmError(f"cannot find the kernel package in: apt-cache depends linux-image-amd64\n{out}")
    return found.group(1)


def _cached_debs(name: str) -> list[Path]:
    return sorted((cache_dir() / "debs").glob(f"{name}_*.deb"))


def fetch_deb(name: str, suite: str | None = None) -> Path:
    """Return the cached ``.deb`` of package ``name``, downloading it if absent (through the
    private source list of ``suite`` when given)."""
    cached = _cached_debs(name)
    if cached:
        return cached[-1]
    _apt_cache("policy", name, suite=suite)  # makes sure the package lists are there
    options = _private_apt_options(suite) if suite is not None else []
    debs = cache_dir() / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download.", dir=debs))
    try:
        log.info("downloading %s", name)
        run(["apt-get", *options, "download", name], cwd=tmp, timeout=1800)
        files = list(tmp.glob("*.deb"))
        if len(files) != 1:
            raise VmError(f"apt-get download {name} produced {files}")
        os.replace(files[0], debs / files[0].name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _cached_debs(name)[-1]


def extracted(name: str, suite: str | None = None) -> Path:
    """Return the directory holding package ``name`` extracted with ``dpkg-deb -x``."""
    deb = fetch_deb(name, suite)
    final = cache_dir() / "trees" / deb.stem
    if not final.is_dir():
        with _staging(final) as tmp:
            log.info("extracting %s", deb.name)
            run(["dpkg-deb", "-x", deb, tmp], timeout=1800)
    return final


# --------------------------------------------------------------------------- kernel


@dataclasses.dataclass(frozen=True)
class Kernel:
    """An extracted kernel package: the bootable image and its module tree."""

    vmlinuz: Path
    modules_dir: Path
    release: str
    builtin: frozenset[str] = frozenset()  # modules built into the image (``_`` form)


def _kernel_in(root: Path) -> Kernel:
    """The kernel in an extracted package (modules under lib/ or, merged, usr/lib/)."""
    images = sorted((root / "boot").glob("vmlinuz-*"))
    if not images:
        raise VmError(f"no boot/vmlinuz-* in {root}")
    release = images[0].name.removeprefix("vmlinuz-")
    for base in (root / "lib" / "modules" / release, root / "usr" / "lib" / "modules" / release):
        if (base / "kernel").is_dir():
            builtin: set[str] = set()
            if (base / "modules.builtin").is_file():
                for line in (base / "modules.builtin").read_text().split():
                    builtin.add(Path(line).name.split(".ko")[0].replace("-", "_"))
            return Kernel(vmlinuz=images[0], modules_dir=base / "kernel", release=release,
                          builtin=frozenset(builtin))
    raise VmError(f"no module tree for {release} in {root}")


@cache
def kernel() -> Kernel:
    """Fetch and extract the guest kernel package (the machine's suite: bookworm's 6.1)."""
    return _kernel_in(extracted(kernel_package()))


@cache
def trixie_kernel() -> Kernel:
    """Debian trixie's kernel (6.12: overlayfs data-only layers and ``verity=``), fetched with
    ``apt-get download`` through the private source list ``PRIVATE_SUITES["trixie"]``."""
    return _kernel_in(extracted(kernel_package("trixie"), "trixie"))


@cache
def _module_index(modules_dir: Path) -> dict[str, Path]:
    """Map module name (file stem, ``-`` and ``_`` both accepted) to its ``.ko``/``.ko.xz``."""
    index: dict[str, Path] = {}
    for pattern in ("*.ko", "*.ko.xz"):
        for ko in modules_dir.rglob(pattern):
            stem = ko.name.split(".ko")[0]
            index[stem] = ko
            index[stem.replace("-", "_")] = ko
    return index


def module_bytes(ko: Path) -> bytes:
    """A module's ELF bytes (a ``.ko.xz`` decompressed)."""
    data = ko.read_bytes()
    return lzma.decompress(data) if ko.name.endswith(".xz") else data


def _modinfo(ko: Path, key: str) -> list[str]:
    """The values of ``key=`` entries in the module's ``.modinfo`` strings."""
    data = module_bytes(ko)
    return [m.decode() for m in re.findall(rb"(?<=\x00)" + key.encode() + rb"=([^\x00]*)", data)]


def _module_deps(name: str, ko: Path, index: Mapping[str, Path]) -> list[str]:
    """Hard (``depends=``) and soft (``softdep=pre:``) dependencies of a module."""
    deps: list[str] = []
    for value in _modinfo(ko, "depends"):
        deps += [d for d in value.split(",") if d]
    for value in _modinfo(ko, "softdep"):
        pre = re.search(r"pre:\s*([^:]*?)(?:\s+post:|$)", value)
        for soft in (pre.group(1).split() if pre else []):
            for candidate in (soft, f"{soft}_generic"):
                if candidate in index:
                    deps.append(candidate)
                    break
    deps += SOFT_DEPS.get(name, ())
    return deps


def resolve_modules(names: Iterable[str], k: Kernel | None = None) -> list[Path]:
    """The ``.ko`` files for ``names`` plus their dependencies, dependencies first.

    A name is a module name (``ext4``) or a path under ``kernel/`` without
    ``.ko`` (``fs/ext4/ext4``).  Modules built into ``k`` (default ``kernel()``) are
    skipped where its package lists them (``modules.builtin``); any other unknown
    module raises :class:`VmError`.
    """
    k = k or kernel()
    index = _module_index(k.modules_dir)
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        key = Path(name).name.replace("-", "_")
        if key in seen:
            return
        if key not in index and key in k.builtin:
            seen.add(key)
            return
        if key not in index:
            raise VmError(f"kernel {k.release} has no module {name!r} (needed by {chain or 'caller'})")
        seen.add(key)
        for dep in _module_deps(key, index[key], index):
            visit(dep, (*chain, key))
        order.append(index[key])

    for name in names:
        visit(name, ())
    return order


# --------------------------------------------------------------------------- cpio


def _tree_listing(root: Path) -> bytes:
    """``find .``-style listing of ``root`` (parents before children, sorted)."""
    lines: list[str] = ["."]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = Path(dirpath).relative_to(root)
        for entry in sorted(dirnames + filenames):
            lines.append(str(Path(".") / rel / entry) if str(rel) != "." else f"./{entry}")
    return ("\n".join(lines) + "\n").encode()


def write_cpio_gz(root: Path, dest: Path, *, level: int = 6) -> Path:
    """Write ``root``'s contents to ``dest`` as a gzip-compressed newc cpio archive.

    ``root`` itself is archived as ``.`` with mode 0755 (it becomes the guest's ``/``).
    """
    root.chmod(0o755)
    raw = dest.with_name(dest.name + ".cpio")
    try:
        with raw.open("wb") as out:
            run([STATIC_BUSYBOX, "cpio", "-o", "-H", "newc"], cwd=root,
                stdin_data=_tree_listing(root), stdout=out)
        with dest.open("wb") as out:
            run(["gzip", f"-{level}", "-n", "-c", raw], stdout=out)
    finally:
        raw.unlink(missing_ok=True)
    return dest


# --------------------------------------------------------------------------- base segment


def _copy_merge(src: Path, dst: Path) -> None:
    """Copy tree ``src`` into ``dst`` (merging, keeping symlinks and modes)."""
    shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)


def _install_busybox(root: Path) -> None:
    """Static busybox at /bin/busybox with every applet symlinked, plus base dirs."""
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run",
              "sysroot", "mnt/host", "etc", "root", GUEST_MODULE_DIR):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(STATIC_BUSYBOX, root / "bin" / "busybox")
    for applet in run([STATIC_BUSYBOX, "--list-full"]).split():
        link = root / applet
        if applet != "bin/busybox" and not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(root / "bin" / "busybox", link.parent), link)
    os.chmod(root / "tmp", 0o1777)
    os.mknod(root / "dev" / "console", 0o600 | 0o020000, os.makedev(5, 1))
    os.mknod(root / "dev" / "null", 0o666 | 0o020000, os.makedev(1, 3))


def _install_python(root: Path) -> None:
    """Debian python3.11 + cryptography + zstandard under ``root/usr``, pruned."""
    for pkg in PYTHON_PACKAGES:
        tree = extracted(pkg)
        for sub in ("usr/bin", "usr/lib"):
            if (tree / sub).is_dir():
                _copy_merge(tree / sub, root / sub)
    stdlib = root / "usr" / "lib" / "python3.11"
    for rel in STDLIB_PRUNE:
        shutil.rmtree(stdlib / rel, ignore_errors=True)
    for name in ("python3", "python"):
        link = root / "usr" / "bin" / name
        if not link.exists():
            os.symlink("python3.11", link)


def _ldd(binary: Path) -> list[Path]:
    """Host paths of the shared libraries (and loader) that ``binary`` needs."""
    out = run(["ldd", binary])
    libs: list[Path] = []
    for line in out.splitlines():
        if "not found" in line:
            raise VmError(f"{binary}: library not found on the host: {line.strip()}")
        match = re.search(r"(/\S+)\s+\(0x", line)
        if match:
            libs.append(Path(match.group(1)))
    return libs


def _install_libraries(root: Path) -> None:
    """Copy :data:`HOST_RUNTIME_FILES` and every library needed by the guest's
    ELF files into ``root``, each at its host path."""
    for extra in HOST_RUNTIME_FILES:
        if not extra.is_file():
            raise VmError(f"host file {extra} is missing (needed in the guest)")
        (root / extra.relative_to("/")).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(extra, root / extra.relative_to("/"))
    elves = [root / "usr" / "bin" / "python3.11"] + sorted((root / "usr" / "lib").rglob("*.so"))
    needed: set[Path] = set()
    for elf in elves:
        if elf.is_file() and not elf.is_symlink() and elf.read_bytes()[:4] == b"\x7fELF":
            needed.update(_ldd(elf))
    for lib in sorted(needed):
        dest = root / lib.relative_to("/")
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(lib.resolve(), dest)


def _compile_python(root: Path, *paths: Path) -> None:
    """Precompile ``paths`` (inside ``root``) with the guest interpreter, guest paths."""
    interpreter = root / "usr" / "bin" / "python3.11"
    run([interpreter, "-m", "compileall", "-q", "-j", "0", "-s", root, "-p", "/",
         "--invalidation-mode", "unchecked-hash", *paths],
        env={"PYTHONHOME": str(root / "usr"), "LD_LIBRARY_PATH": ""}, timeout=1800)


def _base_key() -> str:
    parts = [str(BASE_FORMAT), STATIC_BUSYBOX.resolve().name, str(STATIC_BUSYBOX.stat().st_size)]
    parts += [fetch_deb(p).name for p in PYTHON_PACKAGES]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def base_segment() -> Path:
    """The cached cpio.gz segment with busybox, /dev/console and python3.11."""
    final = cache_dir() / "segments" / f"base-{_base_key()}.cpio.gz"
    if final.exists():
        return final
    with _scratch() as root:
        start = time.monotonic()
        _install_busybox(root)
        _install_python(root)
        _install_libraries(root)
        _compile_python(root, root / "usr" / "lib" / "python3.11", root / "usr" / "lib" / "python3")
        with _staging_file(final) as tmp:
            write_cpio_gz(root, tmp)
        log.info("built %s in %.1f s", final.name, time.monotonic() - start)
    for stale in final.parent.glob("base-*.cpio.gz"):
        if stale != final:
            stale.unlink(missing_ok=True)
    return final


def modules_segment(names: Sequence[str], k: Kernel | None = None) -> Path | None:
    """The cached segment holding ``names`` (and dependencies) of ``k`` (default
    ``kernel()``) in /lib/modules, as plain ``.ko`` files (``.ko.xz`` decompressed).

    ``/lib/modules/sealtree.order`` lists the module names in load order.
    Returns None when ``names`` is empty.
    """
    if not names:
        return None
    k = k or kernel()
    kos = resolve_modules(names, k)
    key = hashlib.sha256("\n".join([k.release, *map(str, kos)]).encode()).hexdigest()[:16]
    final = cache_dir() / "segments" / f"modules-{key}.cpio.gz"
    if final.exists():
        return final
    with _scratch() as root:
        moddir = root / GUEST_MODULE_DIR
        moddir.mkdir(parents=True)
        names_in_order = [ko.name.split(".ko")[0] for ko in kos]
        for ko, name in zip(kos, names_in_order, strict=True):
            (moddir / f"{name}.ko").write_bytes(module_bytes(ko))
        (root / GUEST_MODULE_ORDER).write_text("".join(f"{name}\n" for name in names_in_order))
        with _staging_file(final) as tmp:
            write_cpio_gz(root, tmp)
    return final


# --------------------------------------------------------------------------- initramfs


def python_sources(src_root: Path, packages: Iterable[str], dest: Path) -> Path:
    """Copy only the ``*.py`` files of ``packages`` (those present) from ``src_root`` to ``dest``.

    Meant for ``extra_trees``, e.g. ``{"/opt/sealtree": python_sources(repo,
    ["store", "pack", "overlay"], tmp)}``. Returns ``dest``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for pkg in packages:
        top = src_root / pkg
        if not top.is_dir():
            continue
        for py in top.rglob("*.py"):
            target = dest / py.relative_to(src_root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(py, target)
    return dest


def _place_extra_trees(root: Path, extra_trees: Mapping[str, Path]) -> None:
    """Copy each host path to its guest destination inside ``root``."""
    for guest_path, host_path in extra_trees.items():
        dest = root / guest_path.lstrip("/")
        if host_path.is_dir():
            shutil.copytree(host_path, dest, symlinks=True, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif host_path.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(host_path, dest)
        else:
            raise VmError(f"extra tree {host_path} (for {guest_path}) does not exist")


def build_initramfs(
    dest: Path,
    *,
    init_script: str,
    extra_trees: Mapping[str, Path] | None = None,
    modules: Sequence[str] = (),
    guest_kernel: Kernel | None = None,
) -> Path:
    """Write a bootable initramfs to ``dest`` and return ``dest``.

    It holds static busybox (every applet linked), ``/dev/console``, python3.11
    with its stdlib precompiled and ``cryptography`` and ``zstandard``
    importable, the kernel ``modules`` named and their dependencies under
    ``/lib/modules`` (load order in ``/lib/modules/sealtree.order``, see
    :func:`init_preamble`), ``extra_trees`` (guest path -> host file or
    directory; ``__pycache__`` skipped) and ``init_script`` as ``/init``.
    ``guest_kernel``: whose modules (default ``kernel()``, bookworm's 6.1).
    The base and module parts are cached, so only the last part is rebuilt.
    """
    ensure_host_tools()
    segments = [base_segment()]
    mods = modules_segment(list(modules), guest_kernel)
    if mods is not None:
        segments.append(mods)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".initramfs.", dir=dest.parent) as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        _place_extra_trees(root, extra_trees or {})
        init = root / "init"
        init.write_text(init_script)
        init.chmod(0o755)
        top = write_cpio_gz(root, Path(tmp) / "top.cpio.gz", level=1)
        with _staging_file(dest) as out_path, out_path.open("wb") as out:
            for seg in [*segments, top]:
                with seg.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
    return dest


def init_preamble(*, mount_sysroot: bool = True, sysroot_options: str = "rw",
                  host_share: bool = False) -> str:
    """Shell text to start an ``/init`` script with.

    It mounts proc, sysfs and devtmpfs, loads ``/lib/modules/sealtree.order``
    with insmod (a failure prints ``SEALTREE-RESULT insmod-failed=NAME``),
    then optionally mounts ``/dev/vda`` (ext4) on ``/sysroot`` and the virtfs
    share (tag ``host``) on ``/mnt/host`` read-only. A mount failure prints
    ``SEALTREE-RESULT mount-failed=WHAT``.
    """
    lines = [
        "#!/bin/sh",
        "export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root PYTHONUTF8=1",
        "mount -t proc proc /proc",
        "mount -t sysfs sysfs /sys",
        "mount -t devtmpfs devtmpfs /dev",
        f"if [ -f /{GUEST_MODULE_ORDER} ]; then",
        (f"  while read -r m; do insmod /{GUEST_MODULE_DIR}/$m.ko || "
         f"echo '{RESULT_MARKER} insmod-failed='$m; done < /{GUEST_MODULE_ORDER}"),
        "fi",
    ]
    if mount_sysroot:
        lines += [
            "i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done",
            f"mount -t ext4 -o {sysroot_options} /dev/vda /sysroot"
            f" || echo '{RESULT_MARKER} mount-failed=sysroot'",
        ]
    if host_share:
        lines.append(
            "mount -t 9p -o trans=virtio,version=9p2000.L,ro host /mnt/host"
            f" || echo '{RESULT_MARKER} mount-failed=host'"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- disks


def make_ext4_image(path: Path, src_dir: Path, size_mb: int) -> Path:
    """Create ``path``: an ext4 image with 4 KiB blocks, the verity feature, and
    ``src_dir``'s contents (owners, modes and xattrs as ``mke2fs -d`` keeps them).

    Verity is not enabled on any file: do that in the guest.
    """
    ensure_host_tools()
    path.unlink(missing_ok=True)
    run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-O", "verity", "-d", src_dir,
         path, f"{size_mb}M"], timeout=600)
    return path


# --------------------------------------------------------------------------- boot


@dataclasses.dataclass(frozen=True)
class BootResult:
    """What one qemu run gave: console text, qemu's status, wall time."""

    console: str
    returncode: int | None
    seconds: float
    timed_out: bool
    command: tuple[str, ...]

    @property
    def results(self) -> dict[str, str]:
        """``key -> value`` of every ``SEALTREE-RESULT key=value`` line (last wins)."""
        out: dict[str, str] = {}
        for line in self.console.splitlines():
            idx = line.find(RESULT_MARKER + " ")
            if idx < 0:
                continue
            key, sep, value = line[idx + len(RESULT_MARKER) + 1:].strip().partition("=")
            if sep:
                out[key] = value
        return out

    @property
    def powered_off(self) -> bool:
        """True when the guest powered off cleanly: qemu exited 0 in time, the
        kernel said ``reboot: Power down`` and did not panic."""
        return (self.returncode == 0 and not self.timed_out
                and "reboot: Power down" in self.console and "Kernel panic" not in self.console)

    def describe(self, tail: int = 60) -> str:
        """A summary for assertion messages: status, time and the console's end."""
        lines = self.console.splitlines()[-tail:]
        return (f"qemu status={self.returncode} timed_out={self.timed_out} "
                f"seconds={self.seconds:.1f}\n--- console (last {len(lines)} lines) ---\n"
                + "\n".join(lines))


def qemu_command(kernel_image: Path, initrd: Path, *, disks: Sequence[Path] = (),
                 append: str = "", virtfs: Path | None = None) -> list[str]:
    """The qemu-system-x86_64 command line :func:`boot` runs."""
    cmd = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "2",
           "-nographic", "-no-reboot", "-nic", "none"]
    if QBOOT_ROM.exists():
        cmd += ["-bios", str(QBOOT_ROM)]
    cmd += ["-kernel", str(kernel_image), "-initrd", str(initrd),
            "-append", f"console=ttyS0 panic=-1 quiet {append}".strip()]
    for disk in disks:
        cmd += ["-drive", f"file={disk},if=virtio,format=raw"]
    if virtfs is not None:
        cmd += ["-virtfs", f"local,path={virtfs},mount_tag=host,security_model=none,readonly=on"]
    return cmd


def boot(
    kernel_image: Path,
    initrd: Path,
    *,
    disks: Sequence[Path] = (),
    append: str = "",
    timeout: int = 300,
    virtfs: Path | None = None,
    console_log: Path | None = None,
) -> BootResult:
    """Boot ``kernel_image`` with ``initrd`` under qemu (TCG) and wait for it to exit.

    Disks appear in order as /dev/vda, /dev/vdb, ... (raw, virtio); ``virtfs``
    is shared read-only with tag ``host``. The console goes to ``console_log``
    (a temp file if None). After ``timeout`` seconds qemu is killed and the
    result says ``timed_out``. Never raises for what happens in the guest.
    """
    cmd = qemu_command(kernel_image, initrd, disks=disks, append=append, virtfs=virtfs)
    with tempfile.TemporaryDirectory(prefix="sealtree-vm-") as tmp:
        return run_qemu(cmd, console_log or Path(tmp) / "console.log", timeout)


def wait_or_kill(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait for qemu to exit; after ``timeout`` seconds kill it. Whether it was killed."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return True
    return False


def run_qemu(cmd: Sequence[str], log_path: Path, timeout: float) -> BootResult:
    """Run the qemu command ``cmd`` with its console in ``log_path`` until it exits, or kill it
    after ``timeout`` seconds (``timed_out``); the console as a BootResult."""
    log.info("boot: %s", subprocess.list2cmdline(cmd))
    start = time.monotonic()
    with open(os.devnull, "rb") as devnull, log_path.open("wb") as out:
        proc = subprocess.Popen(cmd, stdin=devnull, stdout=out, stderr=subprocess.STDOUT)
        timed_out = wait_or_kill(proc, timeout)
    seconds = time.monotonic() - start
    console = log_path.read_bytes().decode(errors="replace").replace("\r\n", "\n")
    result = BootResult(console=console, returncode=None if timed_out else proc.returncode,
                        seconds=seconds, timed_out=timed_out, command=tuple(cmd))
    log.info("boot finished: status=%s timed_out=%s %.1f s", result.returncode, timed_out, seconds)
    return result
