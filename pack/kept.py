"""Where a repository keeps the packs it imported, and its rollback-protection state.

``packs/<commit hex>.pack`` (its signatures beside it, ``.sig`` appended) and
``packs/freshness.json`` (docs/FORMAT.md, section 7).  Apart from ``pack.importer``
so that what only reads a kept pack (deploy, mount, the boot verifier) does not load
the import's machinery.
"""

from __future__ import annotations

import os

from store.ids import RawId, to_hex
from store.repo import Repository

FRESHNESS_FILE = "freshness.json"


def freshness_path(repo: Repository) -> str:
    """The repository's rollback-protection state (see pack.freshness)."""
    return os.path.join(repo.layout.packs, FRESHNESS_FILE)


def kept_pack_path(repo: Repository, commit_id: RawId) -> str:
    """Where an imported pack is kept; its signatures are beside it with ``.sig`` appended."""
    return os.path.join(repo.layout.packs, f"{to_hex(commit_id)}.pack")
