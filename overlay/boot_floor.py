"""The freshness floor of the boot verifier: rollback protection that does not trust the disk.

``packs/freshness.json`` on the disk is as writable as the packs are, and the
previous deployment, which boot counting must be able to fall back to, is by
design older than the newest pack.  So the floor is a file in the initramfs
(``pack.freshness`` format), which ``sealtree-boot write-floor REPO FILE``
writes when the initramfs is built: per ref, the oldest of the default and
previous deployments.
"""

from __future__ import annotations

import os

from pack import freshness
from store.errors import DeployError, DowngradeError
from store.ids import RawId
from store.repo import Repository

from .boot_config import BootConfig
from .state import state_file


def boot_floor(repo: Repository) -> dict[str, freshness.Accepted]:
    """Per ref, the oldest of the default and previous deployments (what must stay bootable)."""
    state = state_file(repo).read()
    floor: dict[str, freshness.Accepted] = {}
    for dep_id in (state.default, state.previous):
        if dep_id is None:
            continue
        dep = state.get(dep_id)
        commit_id = RawId(bytes.fromhex(dep.commit))
        accepted = freshness.Accepted.of(commit_id, repo.objects.read_commit(commit_id))
        known = floor.get(dep.ref)
        if known is None or accepted.key() < known.key():
            floor[dep.ref] = accepted
    return floor


def write_floor(repo_path: str, out: str) -> dict[str, freshness.Accepted]:
    """Write ``boot_floor`` of the repository at ``repo_path`` to ``out``; return it."""
    floor = boot_floor(Repository.open(repo_path))
    freshness.save(out, floor)
    return floor


def check_floor(floor: dict[str, freshness.Accepted], ref: str, candidate: freshness.Accepted,
                where: str) -> None:
    """Raise DowngradeError if ``candidate`` is older than the floor baked in for ``ref``."""
    newest = floor.get(ref)
    if newest is not None and not freshness.is_acceptable(candidate, newest):
        raise DowngradeError(f"the pack ({candidate.describe()}) is older than the oldest release "
                             f"this initramfs boots for {ref} ({newest.describe()})", path=where)


def load_floor(config: BootConfig) -> dict[str, freshness.Accepted]:
    """The floor the configuration names ({} when it names none)."""
    if config.freshness is None:
        return {}
    if not os.path.exists(config.freshness):
        raise DeployError("the freshness floor named by the configuration "
                          "is missing; refusing to boot without rollback protection",
                          path=config.freshness)
    return freshness.load(config.freshness)


