"""Crash injection (tests/reliability/kills.py), CI slice: every long operation SIGKILLed at
3 seeded points (SEALTREE_LONG=1: 30), then fsck, refs, state, the next operation and
mounts are checked."""

from __future__ import annotations

import os

import pytest

from tests.reliability import settings
from tests.reliability.env import Env
from tests.reliability.kills import OPS, Killer, OpStats

pytestmark = pytest.mark.usefixtures("needs_root")


@pytest.fixture(scope="module")
def killer(tmp_path_factory) -> Killer:
    if os.geteuid() != 0:  # module fixtures run before the needs_root fixture
        pytest.skip("needs root: owners, trusted.* xattrs and mounts")
    base = tmp_path_factory.mktemp("kills")
    env = Env.make(str(base / "env"))
    return Killer(env, str(base / "k"), scale=settings.KILL_SCALE)


RESULTS: dict[str, OpStats] = {}


@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
def test_killed_operation_leaves_a_consistent_repository(killer, op):
    import random

    rng = random.Random(f"{settings.SEED}:{op.name}")
    stats = RESULTS.setdefault(op.name, OpStats())
    for index in range(settings.KILLS_PER_OP):
        killer.kill_one(op, index, rng, stats)
    hard = [p for p in stats.problems if "leftover files" not in p]
    assert hard == []
    assert stats.kills == settings.KILLS_PER_OP


def test_killed_operations_leave_no_temporary_files_after_the_next_one_and_prune():
    if not RESULTS:
        pytest.skip("run with the kill tests")
    assert [p for s in RESULTS.values() for p in s.problems if "leftover files" in p] == []
