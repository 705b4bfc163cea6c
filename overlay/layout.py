"""Where the deployments live: the one place their paths are spelled (docs/FORMAT.md, 9).

Inside the repository's ``deploy/`` (``store.layout``)::

    state.json                 the deployment state (``overlay.state``)
    state.lock                 flock held by every writer of state.json
    <dep_id>/                  a deployment's hardlink farm (``overlay.farm``)
    .tmp-<dep_id>/             a farm being built
    .trash-<dep_id>/           a farm being removed
    var/                       the persistent /var all deployments share (``overlay.writable``)
    etc/<dep_id>/              a deployment's writable /etc (``overlay.deploy_state``)
    etc/.tmp-<dep_id>/         one being built (copied or merged), renamed into place when done
    etc/.trash-<dep_id>/       one being removed
    etc/<dep_id>.json          how that /etc was made: copied, or merged (and its conflicts)
    boot/<dep_id>/vmlinuz      the deployment's kernel and initramfs (``initrd.img``), when its
                               tree has them (``overlay.boot_files``)
    boot/.tmp-<dep_id>/, boot/.trash-<dep_id>/   as for etc
    boot/default               symlink to the default deployment's ``<dep_id>`` directory

None of ``var``, ``etc``, ``boot`` can be a deployment id (``<commit hex>.<serial>``), nor
start with the farms' ``.tmp-``/``.trash-`` prefixes, so cleaning leftover farms never
touches them.

Mounts are staged under the repository's ``tmp/`` (``overlay.staging``).  The
kept pack a deployment is verified from is ``pack.kept.kept_pack_path``.

The trusted keyring is never read from the repository: whoever can write the
disk could point it elsewhere.  It is what the caller names, else
``SYSTEM_KEYRING`` (the boot verifier: its configuration, inside the initramfs).
"""

from __future__ import annotations

import os

from store.record import Frozen
from store.repo import Repository

STATE_FILE = "state.json"
STATE_LOCK = "state.lock"
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
VAR_DIR = "var"
ETC_DIR = "etc"
BOOT_DIR = "boot"
ETC_REPORT_SUFFIX = ".json"
BOOT_DEFAULT = "default"
KERNEL_NAME = "vmlinuz"
INITRD_NAME = "initrd.img"

#: the keyring trusted when the caller names none (the same one the boot verifier uses)
SYSTEM_KEYRING = "/etc/sealtree/keys"


class DeployLayout(Frozen):
    """The absolute paths of one repository's deployments; ``root`` is ``<repo>/deploy``."""

    __slots__ = ("root",)
    _fields = __slots__
    root: str

    def __init__(self, root: str) -> None:
        object.__setattr__(self, "root", root)

    @property
    def state(self) -> str:
        return os.path.join(self.root, STATE_FILE)

    @property
    def state_lock(self) -> str:
        return os.path.join(self.root, STATE_LOCK)

    def farm(self, dep_id: str) -> str:
        """The published farm of deployment ``dep_id``."""
        return os.path.join(self.root, dep_id)

    def farm_in_progress(self, dep_id: str) -> str:
        """Where the farm of ``dep_id`` is built before it is renamed into place."""
        return os.path.join(self.root, TMP_PREFIX + dep_id)

    def trash(self, dep_id: str) -> str:
        """Where the farm of ``dep_id`` is renamed to be removed."""
        return os.path.join(self.root, TRASH_PREFIX + dep_id)

    # -- writable state --------------------------------------------------------------------
    @property
    def var(self) -> str:
        """The persistent /var every deployment shares."""
        return os.path.join(self.root, VAR_DIR)

    @property
    def var_in_progress(self) -> str:
        """Where the shared /var is seeded before it is renamed into place."""
        return os.path.join(self.root, TMP_PREFIX + VAR_DIR)

    @property
    def etc_root(self) -> str:
        return os.path.join(self.root, ETC_DIR)

    def etc(self, dep_id: str) -> str:
        """The writable /etc of deployment ``dep_id``."""
        return os.path.join(self.etc_root, dep_id)

    def etc_in_progress(self, dep_id: str) -> str:
        return os.path.join(self.etc_root, TMP_PREFIX + dep_id)

    def etc_trash(self, dep_id: str) -> str:
        return os.path.join(self.etc_root, TRASH_PREFIX + dep_id)

    def etc_report(self, dep_id: str) -> str:
        """How the writable /etc of ``dep_id`` was made, and the merge's conflicts."""
        return os.path.join(self.etc_root, dep_id + ETC_REPORT_SUFFIX)

    # -- boot files --------------------------------------------------------------------------
    @property
    def boot_root(self) -> str:
        return os.path.join(self.root, BOOT_DIR)

    def boot(self, dep_id: str) -> str:
        """The directory holding ``vmlinuz`` and ``initrd.img`` of deployment ``dep_id``."""
        return os.path.join(self.boot_root, dep_id)

    def boot_in_progress(self, dep_id: str) -> str:
        return os.path.join(self.boot_root, TMP_PREFIX + dep_id)

    def boot_trash(self, dep_id: str) -> str:
        return os.path.join(self.boot_root, TRASH_PREFIX + dep_id)

    @property
    def boot_default(self) -> str:
        """Symlink to the default deployment's boot directory (absent: it has no boot files)."""
        return os.path.join(self.boot_root, BOOT_DEFAULT)


def deploy_layout(repo: Repository) -> DeployLayout:
    return DeployLayout(repo.layout.deploy)


def staging_dir(repo: Repository) -> str:
    """Where mounts of this repository's deployments are staged (the repository's ``tmp/``)."""
    return repo.layout.tmp
