"""Timing and memory: medians of several runs, sealtree and its peer side by side.

A :class:`Trial` is one side of a measurement: an untimed ``setup``, a timed
``body`` that runs one or more commands through :func:`bench.proc.run` and
returns what they produced, and an untimed ``teardown``.  A sample's time is
the sum of the wall times of the body's commands (glue code between them is
not counted); its memory is the largest peak RSS among them, its disk reads
the sum of theirs (both from GNU time, see ``bench.proc``).

:func:`measure_pair` runs the two sides alternately, sealtree first on even
runs and the peer first on odd runs, so that drift (thermal, page cache, a
neighbour's load) does not favour one side.

Before every timed body the page cache is flushed (``sync``) and, in cold mode,
dropped (``echo 3 > /proc/sys/vm/drop_caches``) so that each run reads its
input from disk.  Whether dropping is permitted is probed once: inside an
unprivileged container it is not, and the report then says "warm".
"""

from __future__ import annotations

import logging
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.proc import Completed

log = logging.getLogger("bench")

DROP_CACHES = "/proc/sys/vm/drop_caches"


@dataclass(frozen=True)
class Sample:
    """One timed run of one side."""

    seconds: float
    maxrss_kib: int
    read_bytes: int


@dataclass
class Trial:
    """One side of a measurement (see the module docstring)."""

    body: Callable[[int], list[Completed]]
    setup: Callable[[int], None] = lambda _i: None
    teardown: Callable[[int], None] = lambda _i: None


@dataclass
class SideResult:
    """The samples of one side, or why there are none."""

    status: str = "ok"  # "ok" | "not available yet" | "no peer"
    note: str = ""
    samples: list[Sample] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)  # bytes per run, for size measurements

    @property
    def median_size(self) -> float | None:
        """Median over the runs of ``sizes`` (e.g. bytes sent over the network)."""
        return statistics.median(self.sizes) if self.sizes else None

    @property
    def median_s(self) -> float | None:
        """Median wall time over the runs."""
        return statistics.median(s.seconds for s in self.samples) if self.samples else None

    @property
    def peak_rss_mib(self) -> float | None:
        """Largest peak RSS over the runs, in MiB."""
        return max(s.maxrss_kib for s in self.samples) / 1024 if self.samples else None

    @property
    def read_mib(self) -> float | None:
        """Median over the runs of what was read from disk, in MiB."""
        return statistics.median(s.read_bytes for s in self.samples) / (1 << 20) if self.samples else None

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "status": self.status,
            "note": self.note,
            "median_s": self.median_s,
            "runs_s": [round(s.seconds, 6) for s in self.samples],
            "peak_rss_mib": self.peak_rss_mib,
            "runs_rss_kib": [s.maxrss_kib for s in self.samples],
            "read_mib": self.read_mib,
            "runs_read_bytes": [s.read_bytes for s in self.samples],
            **({"runs_bytes": self.sizes, "median_bytes": self.median_size} if self.sizes else {}),
        }


class CachePolicy:
    """Flush (and in cold mode drop) the page cache before each timed run."""

    def __init__(self, cold: bool) -> None:
        self.cold = cold and self._can_drop()
        self.requested_cold = cold

    @staticmethod
    def _can_drop() -> bool:
        try:
            os.sync()
            with open(DROP_CACHES, "w") as handle:
                handle.write("3\n")
        except OSError as exc:
            log.warning("cannot drop caches (%s): measuring with a warm cache", exc)
            return False
        return True

    def before_run(self) -> None:
        """Write back dirty pages from setup; drop clean ones when cold."""
        os.sync()
        if self.cold:
            with open(DROP_CACHES, "w") as handle:
                handle.write("3\n")

    def describe(self) -> str:
        """"cold" or "warm" plus why, for the report."""
        if self.cold:
            return "cold: sync + drop_caches before every timed run"
        if self.requested_cold:
            return "warm: drop_caches not permitted here; sync before every timed run"
        return "warm: sync before every timed run, caches kept"


LOAD_SEEN: list[float] = []  # the 1-minute load average before each timed run


def sample(trial: Trial, index: int, cache: CachePolicy) -> Sample:
    """Set up, time the body, tear down; return the sample."""
    LOAD_SEEN.append(os.getloadavg()[0])
    trial.setup(index)
    try:
        cache.before_run()
        done = trial.body(index)
    finally:
        trial.teardown(index)
    if not done:
        raise ValueError("a trial body ran no command")
    return Sample(sum(c.seconds for c in done), max(c.maxrss_kib for c in done),
                  sum(c.read_bytes for c in done))


def measure_pair(ours: Trial | None, peer: Trial | None, repeats: int, cache: CachePolicy,
                 ) -> tuple[SideResult, SideResult]:
    """Run both sides ``repeats`` times each, alternating which goes first."""
    mine, theirs = SideResult(), SideResult()
    for index in range(repeats):
        order = [(ours, mine), (peer, theirs)]
        if index % 2:
            order.reverse()
        for trial, result in order:
            if trial is not None:
                result.samples.append(sample(trial, index, cache))
    return mine, theirs


def measure_one(trial: Trial, repeats: int, cache: CachePolicy) -> SideResult:
    """Run one side ``repeats`` times."""
    result = SideResult()
    for index in range(repeats):
        result.samples.append(sample(trial, index, cache))
    return result
