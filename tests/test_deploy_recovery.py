"""What a killed deploy leaves behind, and how later commands cope: mountinfo, not the state
file's record, says which deployment a mount shows.

A real SIGKILL (the process kills itself where it would write the state file)
after the farm is published and the overlay mounted; real tmpfs and overlay
mounts, as root.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from overlay import mounts
from overlay.mounted_farms import deployment_mounts
from store.repo import Repository
from tests.helpers import ROOT
from tests.test_deploy_cli import Site, _leftovers

pytestmark = pytest.mark.usefixtures("needs_root")


# `sealtree ARGS`, killed (SIGKILL) the moment it would write the deployment state.
KILLED_AT_STATE_WRITE = """
import os, signal, sys
import overlay.state
def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
overlay.state.atomic_write = killed
from sealtree.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _killed_deploy(site: Site, *extra: str) -> None:
    proc = subprocess.run([sys.executable, "-c", KILLED_AT_STATE_WRITE, "--repo", site.repo,
                           "deploy", "os/main", "--keys", site.keys, *extra],
                          capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == -9, proc.stderr


def _status(site: Site) -> dict:  # type: ignore[type-arg]
    return json.loads(site.cli("status", "--json").stdout)  # type: ignore[no-any-return]


def _farms(site: Site) -> list[str]:
    return sorted(n for n in os.listdir(os.path.join(site.repo, "deploy")) if n.startswith(site.commit))


def _staging_dirs(site: Site) -> list[str]:
    return [n for n in os.listdir(os.path.join(site.repo, "tmp")) if n.startswith("mount-")]


def test_a_deploy_killed_before_recording_blocks_nothing(site):
    _killed_deploy(site)
    assert _farms(site) == [f"{site.commit}.1"] and _status(site)["deployments"] == []
    dep = site.deploy()  # the unrecorded farm is removed, its serial used again
    assert dep == f"{site.commit}.1" and _farms(site) == [dep]
    assert [d["id"] for d in _status(site)["deployments"]] == [dep]


def test_a_deploy_mount_killed_before_recording_is_cleaned_up(site):
    other = os.path.join(site.base, "other")
    os.mkdir(other)
    _killed_deploy(site, "--mount", site.target, "--read-only")  # the overlay alone
    lost = f"{site.commit}.1"
    # Left: the overlay at the target (unrecorded) and its staging tmpfs, still attached.
    assert deployment_mounts(os.path.join(site.repo, "deploy")) == {lost: [os.path.realpath(site.target)]}
    assert len(_staging_dirs(site)) == 1 and len(_leftovers(site.base)) == 2
    # The next deploy detaches the stale staging tmpfs, keeps the farm the overlay uses and
    # takes the next serial.
    dep = site.deploy("--mount", other, "--read-only")
    assert dep == f"{site.commit}.2" and _farms(site) == [lost, dep]
    assert sorted(_leftovers(site.base)) == sorted(os.fsencode(os.path.realpath(p))
                                                   for p in (site.target, other))
    assert _staging_dirs(site) == []
    assert os.listdir(site.target)  # the old overlay still works: its layers are its own
    # status shows only recorded deployments, each with where mountinfo says it is mounted.
    assert [(d["id"], d["mounted_at"]) for d in _status(site)["deployments"]] == \
        [(dep, [os.path.realpath(other)])]
    # umount recognises the unrecorded overlay as a deployment of this repository.
    out = site.cli("umount", site.target).stdout
    assert "unmounted" in out and mounts.is_mount_point(site.target) is None
    site.cli("umount", other)
    site.deploy("--no-default")  # the farm nothing uses any more goes
    assert lost not in _farms(site)
    assert _leftovers(site.base) == []


def test_undeploy_refuses_a_deployment_mounted_anywhere(site):
    first = site.deploy()
    second = site.deploy()
    place = os.path.join(site.base, "pp")
    os.makedirs(os.path.join(place, "q"))
    site.cli("mount", first, os.path.join(place, "q"), "--keys", site.keys)
    moved = os.path.join(site.base, "pp2")
    os.rename(place, moved)  # the recorded mount point no longer exists
    try:
        proc = site.cli("undeploy", first, check=False)
        assert proc.returncode == 14, proc.stderr
        assert f"is mounted at {os.path.realpath(moved)}/q" in proc.stderr
        assert os.listdir(os.path.join(moved, "q", "usr"))  # nothing was removed
        doc = _status(site)
        assert {d["id"]: d["mounted_at"] for d in doc["deployments"]} == \
            {first: [os.path.realpath(moved) + "/q"], second: []}
    finally:
        site.cli("umount", os.path.join(moved, "q"))
    site.cli("undeploy", first)
    assert first not in _farms(site)


def test_umount_refuses_mounts_that_are_not_a_deployments(site):
    site.deploy()
    layers = [os.path.join(site.base, n) for n in ("upper layer", "lower layer", "foreign")]
    for path in layers:
        os.mkdir(path)
    foreign = layers[2]
    mounts.mount_overlay(foreign, mounts.OverlaySpec(layers[:2]))
    try:
        for repo_args in ((), ("--repo", site.repo)):
            proc = subprocess.run([sys.executable, "-m", "sealtree", *repo_args, "umount", foreign],
                                  capture_output=True, text=True, cwd=ROOT,
                                  env=dict(os.environ, PYTHONPATH=ROOT))
            assert proc.returncode == 16 and "not a sealtree deployment's" in proc.stderr
            assert mounts.is_mount_point(foreign) is not None
    finally:
        mounts.umount(foreign)
    with mounts.tmpfs(foreign):
        proc = site.cli("umount", foreign, check=False)
        assert proc.returncode == 16 and "a tmpfs mount" in proc.stderr


def test_umount_refuses_another_repositorys_deployment(site):
    site.cli("deploy", "os/main", "--keys", site.keys, "--mount", site.target)
    other = os.path.join(site.base, "other repo")
    site_repo = site.repo
    try:
        subprocess.run([sys.executable, "-m", "sealtree", "--repo", other, "init"], check=True,
                       cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True)
        proc = subprocess.run([sys.executable, "-m", "sealtree", "--repo", other, "umount", site.target],
                              capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
        assert proc.returncode == 16 and "another repository" in proc.stderr
        assert site_repo in proc.stderr and mounts.is_mount_point(site.target) is not None
    finally:
        site.cli("umount", site.target)


@pytest.mark.parametrize("inside", ["objects", "deploy", "."])
def test_mount_targets_inside_the_repository_are_refused(site, inside):
    target = os.path.join(site.repo, inside)
    proc = site.cli("deploy", "os/main", "--keys", site.keys, "--mount", target, check=False)
    assert proc.returncode == 16 and "inside the repository" in proc.stderr
    assert _leftovers(site.base) == [] and _status(site)["deployments"] == []


def test_prune_waits_for_a_deploy_and_keeps_what_it_recorded(site):
    """A deploy holds the writers' lock until it has recorded its deployment; prune reads
    the deployments only once it holds the lock, so it keeps the new deployment's objects
    even when no ref reaches them any more."""
    os.unlink(os.path.join(site.repo, "refs", "heads", "os", "main"))
    repo = Repository.open(site.repo)
    with repo.shared():  # as a deploy in progress
        pruning = subprocess.Popen([sys.executable, "-m", "sealtree", "--repo", site.repo, "prune"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                   env=dict(os.environ, PYTHONPATH=ROOT))
        time.sleep(1.0)
        assert pruning.poll() is None  # waiting for the lock
        site.cli("deploy", site.commit, "--keys", site.keys)  # shares the lock, records
    out, err = pruning.communicate(timeout=60)
    assert pruning.returncode == 0, err
    assert out.startswith("deleted 0 objects"), out
    site.cli("fsck")


@pytest.mark.parametrize("api", ["new", "legacy"])
def test_overlay_layers_are_read_back_exactly_from_mountinfo(tmp_path, api):
    base = str(tmp_path)
    names = ["lo w,e:r\\x=y", "farm\tdir", "m\u00e9 re"]
    layers = [os.path.join(base, n) for n in names[:2]]
    target = os.path.join(base, names[2])
    for path in layers + [target]:
        os.mkdir(path)
    assert mounts.mount_overlay(target, mounts.OverlaySpec(layers), api) == api
    try:
        info = mounts.is_mount_point(target)
        assert info is not None
        assert mounts.overlay_lower_layers(info) == [os.fsencode(p) for p in layers]
    finally:
        mounts.umount(target)


def test_the_demo_unmounts_when_a_step_after_mount_fails(tmp_path):
    """`status` made to fail (exit 14) right after the demo's mount: nothing stays mounted."""
    script = """
import sys
from sealtree.commands import deploy_cmds
from store.errors import DeployError
def broken(args):
    raise DeployError("status broken on purpose")
deploy_cmds.cmd_status = broken
from sealtree.cli import main
sys.exit(main(sys.argv[1:]))
"""
    base = str(tmp_path)
    work = os.path.join(base, "demo")
    proc = subprocess.run([sys.executable, "-c", script, "demo", "--workdir", work], capture_output=True,
                          text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 14, proc.stdout + proc.stderr
    assert "status broken on purpose" in proc.stderr and "# step failed" in proc.stdout
    assert "unmounted" in proc.stdout and _leftovers(base) == []
