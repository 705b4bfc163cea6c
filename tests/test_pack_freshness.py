"""Rollback protection: a repository refuses a pack older than the newest it accepted for
the ref, unless told to allow the downgrade; and import through the CLI."""

from __future__ import annotations

import json
import os

import pytest

from pack import freshness
from pack.importer import freshness_path, import_pack
from pack.keys import Keyring, load_private_key
from pack.signature import sign_pack
from store.errors import DowngradeError, FormatError
from store.repo import Repository
from tests.helpers import run_cli
from tests.test_pack_support import build_sample, keyring_dir, make_keys

pytestmark = pytest.mark.usefixtures("needs_root")


@pytest.fixture
def vendor(tmp_path):
    keys = make_keys(str(tmp_path), "vendor")
    ring = keyring_dir(str(tmp_path), "ring", keys["vendor"])
    key = load_private_key(keys["vendor"])

    def release(version: str, timestamp: int) -> str:
        built = build_sample(str(tmp_path), version=version, timestamp=timestamp)
        sign_pack(built.pack, key)
        return built.pack

    return release, ring, keys["vendor"]


def test_older_pack_refused_then_allowed_with_flag(tmp_path, vendor):
    release, ring, _key = vendor
    v1, v2 = release("1.9", 1000), release("1.10", 900)  # versions compare naturally, first
    device = Repository.init(str(tmp_path / "device"))
    keyring = Keyring.load(ring)
    import_pack(device, v1, keyring)
    new = import_pack(device, v2, keyring)
    with pytest.raises(DowngradeError, match="not newer"):
        import_pack(device, v1, keyring)
    assert device.refs.read("os/main") == new.commit_id  # nothing moved
    old = import_pack(device, v1, keyring, allow_downgrade=True)
    assert device.refs.read("os/main") == old.commit_id
    # The newest ever accepted stays what later packs must beat.
    assert freshness.load(freshness_path(device))["os/main"].version == "1.10"
    with pytest.raises(DowngradeError):
        import_pack(device, v1, keyring)
    import_pack(device, v2, keyring)  # the remembered pack itself is fine


def test_same_version_newer_timestamp_accepted_older_refused(tmp_path, vendor):
    release, ring, _key = vendor
    early, late = release("7", 100), release("7", 200)
    device = Repository.init(str(tmp_path / "device"))
    keyring = Keyring.load(ring)
    import_pack(device, late, keyring)
    with pytest.raises(DowngradeError):
        import_pack(device, early, keyring)


def test_version_ordering():
    key = freshness.version_key
    assert key("") < key("1") < key("1.9") < key("1.10") < key("2") < key("10")
    assert key("2024.1") < key("2024.1.1") < key("2024.2")
    assert key("1.0rc1") < key("1.0rc2")


def test_corrupt_state_fails_closed(tmp_path):
    path = tmp_path / "freshness.json"
    path.write_text("{not json")
    with pytest.raises(FormatError, match="refusing"):
        freshness.load(str(path))
    path.write_text(json.dumps({"format": 1, "refs": {"main": {"commit": "zz", "version": "",
                                                               "timestamp": 0}}}))
    with pytest.raises(FormatError):
        freshness.load(str(path))


def test_cli_import_rollback_and_missing_objects(tmp_path, vendor):
    release, ring, _key = vendor
    v1, v2 = release("1", 1000), release("2", 2000)
    device = str(tmp_path / "device")
    run_cli("init", repo=device)
    out = json.loads(run_cli("pack", "import", v2, "--keys", ring, "--json", repo=device).stdout)
    assert out["ref"] == "os/main" and out["previous"] is None
    assert [m["path"] for m in out["missing"]] == ["/usr/bin/tool"]
    assert out["missing"][0]["digest"].startswith("sha256:")
    assert not os.path.exists(os.path.join(device, out["missing"][0]["object"]))
    proc = run_cli("pack", "import", v1, "--keys", ring, repo=device, check=False)
    assert proc.returncode == 13 and "--allow-downgrade" in proc.stderr
    run_cli("pack", "import", v1, "--keys", ring, "--allow-downgrade", repo=device)
    assert run_cli("ls", "os/main", "/etc", repo=device).returncode == 0
    # An unsigned pack is refused before anything is stored.
    os.unlink(v2 + ".sig")
    assert run_cli("pack", "import", v2, "--keys", ring, repo=device, check=False).returncode == 12
