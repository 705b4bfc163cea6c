"""The structure-aware pack fuzzer (tests/reliability/fuzz.py), CI slice: fixed seed, about
200 mutated packs re-signed with the trusted key, each through pack inspect / verify /
import and deploy --mount (SEALTREE_LONG=1: 2000; `python3 -m tests.reliability.run --long`
for the full run with a summary)."""

from __future__ import annotations

import os

import pytest

from tests.reliability import settings
from tests.reliability.env import Env
from tests.reliability.fuzz import Stats, fuzz

pytestmark = pytest.mark.usefixtures("needs_root")


@pytest.fixture(scope="module")
def stats(tmp_path_factory) -> Stats:
    if os.geteuid() != 0:  # module fixtures run before the needs_root fixture
        pytest.skip("needs root: owners, trusted.* xattrs and mounts")
    base = tmp_path_factory.mktemp("fuzz")
    env = Env.make(str(base / "env"))
    return fuzz(env, str(base / "work"), cases=settings.FUZZ_CASES, seed=settings.SEED,
                workers=settings.FUZZ_WORKERS)


def _failures(stats: Stats, *kinds: str) -> list[str]:
    return [f for f in stats.failures if any(f"): {k}" in f for k in kinds)]


def test_every_mutation_kind_was_tried(stats):
    from tests.reliability.fuzz import MUTATORS
    assert set(stats.by_mutation) == set(MUTATORS)
    assert stats.tried == settings.FUZZ_CASES


def test_no_crash_and_only_documented_exit_statuses(stats):
    assert _failures(stats, "crash", "undocumented") == []


def test_no_pack_that_breaks_the_format_is_accepted(stats):
    assert _failures(stats, "wrongly") == []
    assert stats.refused_everywhere > stats.tried // 2  # most mutations must break something


def test_nothing_is_written_outside_the_target_and_no_mount_is_left(stats):
    assert _failures(stats, "written outside", "mounts left", "umount failed") == []


def test_valid_mutations_deploy(stats):
    """Some mutations keep the pack valid (other compression, other inline content with its
    digest): those must deploy, so the fuzzer also reaches the mount path."""
    assert stats.deployed_and_matched > 0


def test_every_refusal_is_one_clean_error_line(stats):
    assert _failures(stats, "unclean") == []


def test_the_mounted_view_equals_the_manifest(stats):
    assert _failures(stats, "mounted view") == []


def test_the_forked_runner_agrees_with_python_m_sealtree(tmp_path):
    """The suites fork a pre-imported child per command; a real `python3 -m sealtree` gives the
    same exit status and the same error line for the same mutated packs."""
    import os

    from tests.reliability import packcodec as pc
    from tests.reliability.cli import Cli
    from tests.reliability.fuzz import make_case

    env = Env.make(str(tmp_path / "env"))
    with open(env.pack_path(env.commit), "rb") as handle:
        original = handle.read()
    with open(env.key("vendor"), "rb") as handle:
        private = handle.read()
    for index in range(0, 40, 5):
        case = make_case(index, settings.SEED, original, str(tmp_path))
        path = str(tmp_path / f"{index}.pack")
        with open(path, "wb") as handle:
            handle.write(case.data)
        with open(path + ".sig", "wb") as handle:
            handle.write(pc.sign_bytes(case.data, private))
        forked = Cli(exec_=False)("pack", "verify", path, "--keys", env.keys)
        execed = Cli(exec_=True)("pack", "verify", path, "--keys", env.keys)
        assert (forked.code, forked.stderr) == (execed.code, execed.stderr), case.mutation
        os.unlink(path)
