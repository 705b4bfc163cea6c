"""Where everything lives in a repository: the one place its paths are spelled.

Layout::

    config          "sealtree-repo <format version>\\n"
    lock            shared by writers and deploy, exclusive for prune
    objects/        content-addressed objects (store.objects)
    bundles/        bundles of small objects a pack's import wrote (store.bundles); made by
                    the first transaction that publishes one
    refs/heads/     refs (store.refs); refs/lock serialises ref updates
    tmp/            staging directories of operations in progress (removed when stale)
    packs/          signed packs kept for deployment (pack.importer), and their freshness
    deploy/         deployments (overlay.layout spells what is inside)

Other layers add their files under the directories named here and nowhere else.
"""

from __future__ import annotations

import os

from .record import Frozen

CONFIG = "config"
LOCK = "lock"
OBJECTS = "objects"
REFS = "refs"
REFS_HEADS = os.path.join(REFS, "heads")
REFS_LOCK = os.path.join(REFS, "lock")
TMP = "tmp"
BUNDLES = "bundles"
PACKS = "packs"
DEPLOY = "deploy"

#: the directories ``init`` creates
CREATED = (OBJECTS, REFS_HEADS, TMP)


class RepoLayout(Frozen):
    """The absolute paths of one repository's parts."""

    __slots__ = ("root",)
    _fields = __slots__
    root: str

    def __init__(self, root: str) -> None:
        object.__setattr__(self, "root", root)

    @property
    def config(self) -> str:
        return os.path.join(self.root, CONFIG)

    @property
    def lock(self) -> str:
        return os.path.join(self.root, LOCK)

    @property
    def objects(self) -> str:
        return os.path.join(self.root, OBJECTS)

    @property
    def bundles(self) -> str:
        return os.path.join(self.root, BUNDLES)

    @property
    def refs_heads(self) -> str:
        return os.path.join(self.root, REFS_HEADS)

    @property
    def refs_lock(self) -> str:
        return os.path.join(self.root, REFS_LOCK)

    @property
    def tmp(self) -> str:
        return os.path.join(self.root, TMP)

    @property
    def packs(self) -> str:
        return os.path.join(self.root, PACKS)

    @property
    def deploy(self) -> str:
        return os.path.join(self.root, DEPLOY)
