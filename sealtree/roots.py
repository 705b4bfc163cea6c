"""Commits that must stay in the repository besides what refs reach (deployments, kept packs).

Gathered here, in the application layer, because ``store`` knows nothing of
deployments; prune and fsck take them as extra roots.
"""

from __future__ import annotations

from collections.abc import Callable

from store.ids import RawId
from store.repo import Repository


def _deployments(repo: Repository) -> list[tuple[str, RawId]]:
    from overlay.deploy import deployment_roots  # only when prune/fsck run
    return list(deployment_roots(repo))


ROOT_PROVIDERS: list[Callable[[Repository], list[tuple[str, RawId]]]] = [_deployments]


def extra_roots(repo: Repository) -> list[tuple[str, RawId]]:
    roots: list[tuple[str, RawId]] = []
    for provider in ROOT_PROVIDERS:
        roots.extend(provider(repo))
    return roots
