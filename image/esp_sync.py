"""Keep a device's EFI system partition in step with its deployments (docs/FORMAT.md 16).

``sync_esp`` makes a mounted ESP hold what ``sealtree image build`` would write for the
repository's deployment state: each deployment's kernel and initramfs at
``/sealtree/<commit>/linux`` and ``initrd``, its entry ``loader/entries/sealtree-<id>.conf``
(and the default's live entry), ``default`` in ``loader/loader.conf`` naming the default's
installed entry; entries and kernel directories of deployments no longer there are removed.
The kernel command line common to all entries is the one of the entries already installed
(the image's ``root=PARTUUID=... console=...``), without ``sealtree.live=1`` and
``sealtree.deployment=``.

Crash safety on FAT: every file is written under a temporary name, fsynced and renamed
(``store.atomic``, without chmod: FAT has no modes), in this order: kernels, entries,
loader.conf, then removals.  A kill at any point leaves loader.conf naming an entry whose
files are all complete (the old default until the rename of loader.conf, the new one after).
"""

from __future__ import annotations

import contextlib
import filecmp
import os
import shutil
from dataclasses import dataclass, field

from overlay.state import State, state_file
from store.atomic import atomic_file, atomic_write, fsync_dir, remove_stale_temporaries
from store.ids import RawId
from store.repo import Repository

from . import entries
from .errors import ImageError

LOADER_CONF = "loader/loader.conf"
ENTRIES_DIR = "loader/entries"
KERNELS_DIR = "sealtree"
#: command-line words that differ between a deployment's entries (not kept from the old one)
PER_ENTRY = ("sealtree.live=", "sealtree.deployment=")


@dataclass
class SyncResult:
    esp: str
    default_entry: str | None = None
    written: list[str] = field(default_factory=list)  # ESP paths (re)written, in order
    removed: list[str] = field(default_factory=list)


def _entry_options(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines:
        key, _, value = line.strip().partition(" ")
        if key == "options":
            words = [w for w in value.split() if not w.startswith(PER_ENTRY)]
            return " ".join(words)
    return None


def _loader_default(esp: str) -> str | None:
    try:
        with open(os.path.join(esp, LOADER_CONF), encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines:
        key, _, value = line.strip().partition(" ")
        if key == "default":
            return value.strip()
    return None


def base_options(esp: str) -> str:
    """The common command line of the sealtree entries installed on ``esp``: the one of the
    entry loader.conf names, else of the first ``sealtree-*.conf`` in name order."""
    directory = os.path.join(esp, ENTRIES_DIR)
    try:
        names = sorted(n for n in os.listdir(directory)
                       if n.startswith(entries.ENTRY_PREFIX) and n.endswith(".conf"))
    except OSError:
        names = []
    default = _loader_default(esp)
    if default in names:
        names.insert(0, default)
    for name in names:
        options = _entry_options(os.path.join(directory, name))
        if options:
            return options
    raise ImageError("no sealtree boot entry on the ESP to take the kernel command line from "
                     f"(expected {ENTRIES_DIR}/{entries.ENTRY_PREFIX}<deployment>.conf)", path=esp)


def _write_text(esp: str, rel: str, text: str, result: SyncResult) -> None:
    path = os.path.join(esp, rel)
    data = text.encode()
    try:
        with open(path, "rb") as handle:
            if handle.read(len(data) + 1) == data:
                return
    except FileNotFoundError:
        pass
    atomic_write(path, data, chmod=False)
    result.written.append("/" + rel)


def _copy_file(source: str, esp: str, rel: str, result: SyncResult) -> None:
    path = os.path.join(esp, rel)
    if os.path.isfile(path) and filecmp.cmp(source, path, shallow=False):
        return
    with open(source, "rb") as src, atomic_file(path, chmod=False) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    result.written.append("/" + rel)


def _remove(path: str, rel: str, result: SyncResult) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
        result.removed.append("/" + rel)


def sync_state(repo: Repository, state: State, esp: str) -> SyncResult:
    """Make ``esp`` (a mounted ESP directory) match ``state``; see the module's docstring."""
    result = SyncResult(esp)
    if not os.path.isdir(os.path.join(esp, "loader")):
        raise ImageError("not an ESP with systemd-boot: it has no loader/ directory", path=esp)
    if state.default is None:  # nothing deployed to boot: leave the ESP as it is
        return result
    base = base_options(esp)
    kernels: dict[str, entries.Kernel] = {}
    for dep in state.deployments:
        if dep.commit not in kernels:
            commit = repo.objects.read_commit(RawId(bytes.fromhex(dep.commit)))
            kernels[dep.commit] = entries.find_kernel(repo.objects, commit.root_tree)
    boot_entries = entries.entries_for(state.deployments, state.default, kernels, "", base=base)

    # 1. kernels and initramfs images, 2. entries: all complete before loader.conf names one.
    commits = set()
    for dep in state.deployments:
        directory = entries.esp_dir(dep).lstrip("/")
        if directory in commits:
            continue
        commits.add(directory)
        os.makedirs(os.path.join(esp, directory), exist_ok=True)
        remove_stale_temporaries(os.path.join(esp, directory))
        kernel = kernels[dep.commit]
        for name, item in (("linux", kernel.linux), ("initrd", kernel.initrd)):
            _copy_file(repo.objects.file_path(item.digest, item.meta), esp, f"{directory}/{name}", result)
    os.makedirs(os.path.join(esp, ENTRIES_DIR), exist_ok=True)
    remove_stale_temporaries(os.path.join(esp, ENTRIES_DIR))
    for entry in boot_entries:
        _write_text(esp, f"{ENTRIES_DIR}/{entry.name}.conf", entry.text(), result)
    # 3. the default.
    result.default_entry = entries.entry_name_of(state.default)
    remove_stale_temporaries(os.path.join(esp, "loader"))
    _write_text(esp, LOADER_CONF, entries.loader_conf(result.default_entry), result)

    # 4. what no deployment uses any more.
    keep = {f"{e.name}.conf" for e in boot_entries}
    for name in sorted(os.listdir(os.path.join(esp, ENTRIES_DIR))):
        if name.startswith(entries.ENTRY_PREFIX) and name.endswith(".conf") and name not in keep:
            _remove(os.path.join(esp, ENTRIES_DIR, name), f"{ENTRIES_DIR}/{name}", result)
    fsync_dir(os.path.join(esp, ENTRIES_DIR))
    kernels_root = os.path.join(esp, KERNELS_DIR)
    for name in sorted(os.listdir(kernels_root)):
        rel = f"{KERNELS_DIR}/{name}"
        if rel in commits or not os.path.isdir(os.path.join(kernels_root, name)):
            continue
        for file_name in sorted(os.listdir(os.path.join(kernels_root, name))):
            _remove(os.path.join(kernels_root, name, file_name), f"{rel}/{file_name}", result)
        os.rmdir(os.path.join(kernels_root, name))
    fsync_dir(kernels_root)
    return result


def sync_esp(repo: Repository, esp: str) -> SyncResult:
    """Make ``esp`` match ``repo``'s deployment state, read under the state lock (so that two
    syncs, or a sync and a state change, do not interleave)."""
    states = state_file(repo)
    with states.locked():
        return sync_state(repo, states.read(), esp)


__all__ = ["SyncResult", "base_options", "sync_esp", "sync_state"]
