"""The commands a user types: publish, serve, remote add/list/remove, pull."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT, run_cli
from tests.test_remote_support import make_vendor

pytestmark = pytest.mark.usefixtures("needs_root")


@pytest.fixture
def served(tmp_path):
    """A vendor published with the CLI, served by `sealtree serve` in a subprocess."""
    vendor = make_vendor(str(tmp_path))
    out = run_cli("publish", vendor.site, "--key", vendor.key, "--json", repo=vendor.repo.path)
    written = json.loads(out.stdout)
    assert written["index_written"] and written["objects_written"] == 8 and written["serial"] == 1
    proc = subprocess.Popen([sys.executable, "-m", "sealtree", "serve", vendor.site, "--listen",
                             "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.stdout is not None
    url = proc.stdout.readline().split()[-1]
    try:
        yield vendor, url
    finally:
        proc.terminate()
        proc.wait(10)


def test_publish_serve_remote_pull(served, tmp_path):
    vendor, url = served
    device = str(tmp_path / "device")
    run_cli("init", repo=device)
    run_cli("remote", "add", "vendor", url, "--mirror", "http://127.0.0.1:9/", "--keys", vendor.keys,
            repo=device)
    listed = json.loads(run_cli("remote", "list", "--json", repo=device).stdout)
    assert listed == [{"name": "vendor", "url": url, "mirrors": ["http://127.0.0.1:9/"],
                       "mirrorlist": None, "keys": os.path.abspath(vendor.keys)}]
    first = json.loads(run_cli("pull", "vendor", "--json", repo=device).stdout)
    assert first["objects_fetched"] == 8 and first["packs_fetched"] == 1
    assert first["bytes_fetched"] == first["servers"][url]["bytes"] > 0
    assert first["refs"][0]["ref"] == "os/main" and first["refs"][0]["updated"]
    second = json.loads(run_cli("pull", "vendor", "os/main", "--json", repo=device).stdout)
    assert (second["objects_fetched"], second["packs_fetched"]) == (0, 0)
    assert "checked" in run_cli("fsck", repo=device).stdout
    human = run_cli("pull", "vendor", repo=device).stdout
    assert "os/main: up to date" in human
    run_cli("remote", "remove", "vendor", repo=device)
    assert json.loads(run_cli("remote", "list", "--json", repo=device).stdout) == []
    gone = run_cli("pull", "vendor", repo=device, check=False)
    assert gone.returncode == 17 and gone.stderr.count("\n") == 1 and "vendor: no such remote" in gone.stderr


def test_expired_index_refused_in_one_line(tmp_path):
    vendor = make_vendor(str(tmp_path))
    run_cli("publish", vendor.site, "--key", vendor.key, "--expires", "0.00001", repo=vendor.repo.path)
    time.sleep(1.2)
    from tests.test_remote_support import serving
    with serving(vendor.site) as url:
        device = str(tmp_path / "device")
        run_cli("init", repo=device)
        run_cli("remote", "add", "vendor", url, "--keys", vendor.keys, repo=device)
        refused = run_cli("pull", "vendor", repo=device, check=False)
        assert refused.returncode == 12, refused.stderr
        error, hint = refused.stderr.splitlines()
        assert f"{url}index: the index expired" in error and hint.startswith("sealtree: hint: ")
        allowed = run_cli("pull", "vendor", "--allow-expired", repo=device, check=False)
        assert allowed.returncode == 0, allowed.stderr


def test_bad_remote_arguments(tmp_path, served):
    vendor, _url = served
    device = str(tmp_path / "device")
    run_cli("init", repo=device)
    for args in (["../x", "http://h/"], ["ok", "ftp://h/"], ["ok", "http://h/?q=1"]):
        bad = run_cli("remote", "add", *args, "--keys", vendor.keys, repo=device, check=False)
        assert bad.returncode == 2, bad.stderr
    run_cli("remote", "add", "ok", "http://h/", "--keys", vendor.keys, repo=device)
    again = run_cli("remote", "add", "ok", "http://h/", "--keys", vendor.keys, repo=device, check=False)
    assert again.returncode == 2 and "exists" in again.stderr


def test_pull_then_deploy_and_mount_equals_the_tree(served, tmp_path):
    from tests.helpers import assert_same_tree

    vendor, url = served
    device = str(tmp_path / "device")
    run_cli("init", repo=device)
    run_cli("remote", "add", "vendor", url, "--keys", vendor.keys, repo=device)
    run_cli("pull", "vendor", repo=device)
    out = run_cli("deploy", "os/main", "--keys", vendor.keys, repo=device).stdout
    dep = out.strip().splitlines()[-1].split()[-1]
    target = tmp_path / "root"
    target.mkdir()
    run_cli("mount", dep, str(target), "--keys", vendor.keys, repo=device)
    try:
        assert_same_tree(vendor.src, str(target))
    finally:
        run_cli("umount", str(target), repo=device)


def test_pull_killed_at_random_points_resumes_and_stays_consistent(tmp_path):
    import random
    import signal

    from pack.keys import load_private_key
    from remote.publish import publish
    from store.fsck import fsck
    from store.repo import Repository
    from tests.test_pack_support import commit_dir
    from tests.test_remote_support import serving, vendor_tree

    vendor = make_vendor(str(tmp_path))
    keys = [load_private_key(vendor.key)]
    publish(vendor.repo, vendor.site, keys)
    old = vendor.repo.refs.read("os/main")
    src = os.path.join(vendor.base, "vendor-src-2")
    os.makedirs(src)
    vendor_tree(src, variant=b"2")
    os.makedirs(os.path.join(src, "usr", "share"))
    for i in range(48):  # 12 MiB in 48 objects, so that a pull takes a while
        with open(os.path.join(src, "usr", "share", f"blob{i}"), "wb") as handle:
            handle.write(os.urandom(256 << 10))
    device = str(tmp_path / "device")
    rng = random.Random(16)
    with serving(vendor.site, delay=0.1) as url:  # about 3 s for the update's 50 objects
        run_cli("init", repo=device)
        run_cli("remote", "add", "vendor", url, "--keys", vendor.keys, repo=device)
        run_cli("pull", "vendor", repo=device)
        new = commit_dir(vendor.repo, src, "os/main", version="2", timestamp=1_700_000_100)
        publish(vendor.repo, vendor.site, keys)
        for _attempt in range(6):
            proc = subprocess.Popen([sys.executable, "-m", "sealtree", "--repo", device, "pull", "vendor",
                                     "--jobs", "2"],
                                    cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.5, 3.0))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            repo = Repository.open(device)
            assert repo.refs.read("os/main") in (old, new)
            assert not fsck(repo).problems
        final = json.loads(run_cli("pull", "vendor", "--json", repo=device).stdout)
    repo = Repository.open(device)
    assert repo.refs.read("os/main") == new
    assert not fsck(repo).problems
    assert final["refs"][0]["commit"] == new.hex()


def test_refs_may_follow_the_options(tmp_path):
    """`publish DIR --key K REF` as a user types it: argparse alone refuses REF there."""
    from tests.test_remote_support import make_vendor
    vendor = make_vendor(str(tmp_path))
    site = tmp_path / "site2"
    run_cli("publish", str(site), "--key", vendor.key, "os/main", repo=vendor.repo.path)
    assert (site / "index").exists()
    proc = run_cli("publish", str(site), "--key", vendor.key, "os/main", "--bogus", repo=vendor.repo.path,
                   check=False)
    assert proc.returncode == 2 and "unrecognized arguments" in proc.stderr


def test_publish_help_states_the_inline_threshold_publish_uses():
    """The default the help text names is the one publish applies (pack.build's constant)."""
    from pack.build import RELEASE_INLINE_MAX  # noqa: PLC0415 - the CLI loads it only to publish

    text = " ".join(run_cli("publish", "--help").stdout.split())
    assert f"(default {RELEASE_INLINE_MAX}:" in text
