"""The forked-worker helper that commit, fsck, digest and deploy share."""

from __future__ import annotations

import os
import time

import pytest

from store.errors import SealtreeError, SourceError
from store.forked import Forked, SharedCounts, collect


def _fail(message: str) -> SealtreeError:
    return SealtreeError(f"worker failed: {message}")


def _count_to(counts: SharedCounts, slot: int, n: int) -> int:
    for i in range(1, n + 1):
        counts.set(slot, i, i * 10)
    return os.getpid()


def test_results_and_progress_come_back_from_the_children():
    counts = SharedCounts(2)
    workers = [Forked(_count_to, counts, slot, 5 + slot, failure=_fail) for slot in range(2)]
    ticks: list[tuple[int, int]] = []
    pids = collect(workers, lambda: ticks.append(counts.total()), interval=0.01)
    assert len(set(pids)) == 2 and os.getpid() not in pids
    assert counts.total() == (11, 110)  # written by the children, read here
    counts.close()


def _raise(path: str) -> None:
    raise SourceError(f"{path}: cannot read: Input/output error", path=path)


def _sleep() -> None:
    time.sleep(60)


def test_a_childs_error_is_raised_here_and_the_others_are_stopped():
    slow = Forked(_sleep, failure=_fail)
    failing = Forked(_raise, "etc/passwd", failure=_fail)
    started = time.monotonic()
    with pytest.raises(SourceError, match="etc/passwd: cannot read") as caught:
        collect([failing, slow])
    assert caught.value.path == "etc/passwd"
    assert slow.pid is None and time.monotonic() - started < 30  # killed, not waited for


def test_a_child_that_dies_is_a_failure_not_a_hang():
    child = Forked(os._exit, 3, failure=_fail)
    with pytest.raises(SealtreeError, match="worker failed: the child process .* failed"):
        child.wait()
