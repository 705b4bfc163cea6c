"""Shared fixtures: Hypothesis profiles, a fresh repository, skips for what the host lacks, and the
deployment tests' directory and published site.

The checkout's own packages are imported (``pythonpath`` in pyproject.toml), not the installed ones."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, settings

from store.repo import Repository
from tests.mount_guard import mount_free_dir

# "ci" is deterministic (derandomize) so a red CI run reproduces; "dev" explores.
settings.register_profile("ci", derandomize=True, deadline=None, max_examples=25,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.function_scoped_fixture])
settings.register_profile("dev", deadline=None, max_examples=60,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def repo(tmp_path):
    return Repository.init(str(tmp_path / "repo"))


@pytest.fixture
def needs_root():
    if os.geteuid() != 0:
        pytest.skip("needs root: owners, trusted.* xattrs and mounts")


@pytest.fixture
def fsverity_tool():
    tool = shutil.which("fsverity")
    if tool is None:
        pytest.skip("the fsverity tool (Debian package fsverity) is not installed; .ci/run installs it")
    return tool


@pytest.fixture(scope="session")
def minbase():
    """A real Debian tree: the bench's cached bookworm minbase, built with debootstrap (as
    bench/ does) when missing."""
    path = os.path.join(os.environ.get("SEALTREE_BENCH_CACHE",
                                       os.path.expanduser("~/.cache/sealtree-bench")), "minbase")
    if not os.path.isdir(path):
        if shutil.which("debootstrap") is None or os.geteuid() != 0:
            pytest.skip("needs root and debootstrap (.ci/run installs it) to build the Debian tree")
        subprocess.run([sys.executable, "-c", "from bench.corpora import debian_minbase; debian_minbase()"],
                       check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return path


@pytest.fixture
def base_name():
    """The name of ``base`` below ``tmp_path``: spaces, a comma and a colon, which mount options
    must escape.  A module overrides this fixture for another name."""
    return "site a,b:c"


@pytest.fixture
def base(tmp_path, base_name):
    """``tmp_path/<base_name>`` as a string; afterwards whatever is left mounted below
    ``tmp_path`` is unmounted and the test fails (tests.mount_guard)."""
    yield from mount_free_dir(tmp_path, base_name)


@pytest.fixture
def site(base):
    """tests.test_deploy_cli.Site in ``base``: the sample tree committed as os/main 1.0, packed,
    signed with the vendor key and imported; a vendor keyring and a rogue one."""
    # Imported when used: tests.test_deploy_cli pulls in the whole deploy path.
    from tests.test_deploy_cli import published_site

    return published_site(base)
