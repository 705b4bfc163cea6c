"""Boot Loader Specification type 1 entries and systemd-boot's loader.conf for an image.

Per deployment: ``loader/entries/sealtree-<deployment id>.conf`` (installed: the verifier
boots the default deployment with its own boot counting and fallback) and, for the default
deployment, ``sealtree-<deployment id>-live.conf`` (the same with ``sealtree.live=1``: a
tmpfs upper layer, nothing persisted).  An entry for a deployment that is not the default
pins it with ``sealtree.deployment=<id>`` (no fallback: the user chose it in the menu).
The kernel and initramfs are the deployment's own ``/boot/vmlinuz-<release>`` and
``/boot/initrd.img-<release>``, copied to ``/sealtree/<commit>/linux`` and ``initrd`` on the
ESP (one copy per commit).  Names use the deployment id, the same one ``sealtree status``
shows, so the menu and ``status`` agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from overlay.state import Deployment
from store.errors import NotInTree
from store.ids import RawId
from store.model import Entry, Kind
from store.objects import ObjectStore
from store.versions import version_key
from store.walk import lookup

ENTRY_PREFIX = "sealtree-"
LIVE_SUFFIX = "-live"
LOADER_TIMEOUT = 3  # seconds the menu shows; 0 would hide it (and the live entry with it)


@dataclass(frozen=True)
class Kernel:
    """A kernel and its initramfs in a committed tree's /boot."""

    release: str
    linux: Entry  # /boot/vmlinuz-<release>
    initrd: Entry  # /boot/initrd.img-<release>


@dataclass(frozen=True)
class BootEntry:
    name: str  # the file name in loader/entries, without ".conf"
    title: str
    version: str
    linux: str  # paths on the ESP
    initrd: str
    options: str
    sort_key: str = "sealtree"

    def text(self) -> str:
        return (f"title {self.title}\nversion {self.version}\nsort-key {self.sort_key}\n"
                f"linux {self.linux}\ninitrd {self.initrd}\noptions {self.options}\n")


def find_kernel(objects: ObjectStore, root_tree: RawId) -> Kernel:
    """The newest ``/boot/vmlinuz-<release>`` that has an ``/boot/initrd.img-<release>`` beside
    it (regular files; releases compared as versions).  Raises NotInTree when there is none."""
    boot = lookup(objects, root_tree, b"boot")
    files: dict[bytes, Entry] = {}
    if boot is not None and boot.kind is Kind.DIR:
        files = {e.name: e for e in objects.read_tree(boot.tree) if e.kind is Kind.FILE}
    releases = []
    for name in files:
        if name.startswith(b"vmlinuz-") and b"initrd.img-" + name[8:] in files:
            try:
                releases.append(name[8:].decode())
            except UnicodeDecodeError:
                continue
    if not releases:
        raise NotInTree("no kernel to boot: the tree needs /boot/vmlinuz-RELEASE and "
                        "/boot/initrd.img-RELEASE", path="/boot")
    release = max(releases, key=version_key)
    return Kernel(release, files[b"vmlinuz-" + release.encode()],
                  files[b"initrd.img-" + release.encode()])


def esp_dir(dep: Deployment) -> str:
    return f"/sealtree/{dep.commit}"


def entries_for(deployments: Sequence[Deployment], default: str, kernels: dict[str, Kernel],
                root_partuuid: str, append: str = "", *, base: str | None = None) -> list[BootEntry]:
    """The entries of ``deployments`` (``kernels``: commit -> its kernel), in the order the
    menu shows them: the default's installed and live entries first.  ``base``: the whole
    common command line instead of the one made of ``root_partuuid`` and ``append`` (the ESP
    sync keeps the installed entry's)."""
    if base is None:
        base = f"root=PARTUUID={root_partuuid} console=ttyS0" + (f" {append}" if append else "")
    ordered = sorted(deployments, key=lambda d: (d.id != default, d.id))
    out: list[BootEntry] = []
    for dep in ordered:
        kernel = kernels[dep.commit]
        label = f"{dep.ref} {dep.version or dep.commit[:12]}"
        common = {"version": kernel.release, "linux": f"{esp_dir(dep)}/linux",
                  "initrd": f"{esp_dir(dep)}/initrd"}
        if dep.id == default:
            out.append(BootEntry(f"{ENTRY_PREFIX}{dep.id}", f"{label} (sealtree)", options=base,
                                 sort_key="sealtree-0", **common))
            out.append(BootEntry(f"{ENTRY_PREFIX}{dep.id}{LIVE_SUFFIX}", f"{label} (live, nothing kept)",
                                 options=f"{base} sealtree.live=1", sort_key="sealtree-1", **common))
        else:
            out.append(BootEntry(f"{ENTRY_PREFIX}{dep.id}", f"{label} (sealtree, {dep.id[:12]} only)",
                                 options=f"{base} sealtree.deployment={dep.id}", sort_key="sealtree-2",
                                 **common))
    return out


def entry_name_of(dep_id: str) -> str:
    """The installed entry's name (file name without ``.conf``) of deployment ``dep_id``."""
    return f"{ENTRY_PREFIX}{dep_id}"


def loader_conf(default_entry: str, timeout: int = LOADER_TIMEOUT) -> str:
    return (f"# written by sealtree image build\ndefault {default_entry}.conf\ntimeout {timeout}\n"
            "console-mode keep\neditor no\n")


__all__ = ["BootEntry", "Kernel", "NotInTree", "entries_for", "entry_name_of", "find_kernel",
           "loader_conf"]
