"""Where the deployments live: the one place their paths are spelled (docs/FORMAT.md, 9).

Inside the repository's ``deploy/`` (``store.layout``)::

    state.json                 the deployment state (``overlay.state``)
    state.lock                 flock held by every writer of state.json
    <dep_id>/                  a deployment's hardlink farm (``overlay.farm``)
    .tmp-<dep_id>/             a farm being built
    .trash-<dep_id>/           a farm being removed

Mounts are staged under the repository's ``tmp/`` (``overlay.staging``).  The
kept pack a deployment is verified from is ``pack.importer.kept_pack_path``.

The trusted keyring is never read from the repository: whoever can write the
disk could point it elsewhere.  It is what the caller names, else
``SYSTEM_KEYRING`` (the boot verifier: its configuration, inside the initramfs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from store.repo import Repository

STATE_FILE = "state.json"
STATE_LOCK = "state.lock"
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"

#: the keyring trusted when the caller names none (the same one the boot verifier uses)
SYSTEM_KEYRING = "/etc/sealtree/keys"


@dataclass(frozen=True)
class DeployLayout:
    """The absolute paths of one repository's deployments; ``root`` is ``<repo>/deploy``."""

    root: str

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


def deploy_layout(repo: Repository) -> DeployLayout:
    return DeployLayout(repo.layout.deploy)


def staging_dir(repo: Repository) -> str:
    """Where mounts of this repository's deployments are staged (the repository's ``tmp/``)."""
    return repo.layout.tmp
