"""sealtree mirror: a verified copy of a site that any server can serve; pulls from it."""

from __future__ import annotations

import json
import os

import pytest

from pack.keys import Keyring
from remote.errors import AllMirrorsFailed, IndexRollback
from remote.mirror import mirror
from remote.pull import pull
from store.errors import SignatureError
from store.fsck import fsck
from tests.helpers import run_cli
from tests.test_pack_support import keyring_dir, make_keys
from tests.test_remote_support import (
    copy_site,
    device,
    make_vendor,
    object_files,
    publish_site,
    release,
    serving,
)

pytestmark = pytest.mark.usefixtures("needs_root")


@pytest.fixture
def vendor(tmp_path):
    made = make_vendor(str(tmp_path))
    publish_site(made)
    return made


def test_mirror_copies_verifies_and_serves(vendor, tmp_path):
    copy = str(tmp_path / "copy")
    with serving(vendor.site) as upstream:
        out = run_cli("mirror", upstream, copy, "--keys", vendor.keys, "--json")
        first = json.loads(out.stdout)
        assert (first["packs_fetched"], first["objects_fetched"], first["index_written"]) == (1, 8, True)
        again = json.loads(run_cli("mirror", upstream, copy, "--json").stdout)
        assert (again["packs_fetched"], again["objects_fetched"], again["index_written"]) == (0, 0, False)
        release(vendor, "2", 1_700_000_100)
        update = mirror(upstream, copy, Keyring.load(vendor.keys))
        assert update.index_written and update.packs_fetched == 1 and 0 < update.objects_fetched <= 8
    with open(os.path.join(copy, "index"), "rb") as a, open(os.path.join(vendor.site, "index"), "rb") as b:
        assert a.read() == b.read()
    assert [os.path.relpath(p, copy) for p in object_files(copy)] == \
        [os.path.relpath(p, vendor.site) for p in object_files(vendor.site)]
    assert not [n for _d, _s, files in os.walk(copy) for n in files if n.startswith(".part-")]
    with serving(copy) as url:
        repo, remote = device(str(tmp_path), "device", [url], vendor.keys)
        pull(repo, remote)
    assert repo.refs.read("os/main") == vendor.repo.refs.read("os/main")
    assert not fsck(repo).problems


def test_mirror_refuses_a_corrupt_object_naming_it(vendor, tmp_path):
    upstream_dir = copy_site(vendor, "corrupt-upstream")
    victim = object_files(upstream_dir)[-1]
    with open(victim, "r+b") as handle:
        handle.write(b"\x00\x00\x00")
    with serving(upstream_dir) as upstream:
        with pytest.raises(AllMirrorsFailed) as caught:
            mirror(upstream, str(tmp_path / "copy"), Keyring.load(vendor.keys))
    assert os.path.relpath(victim, upstream_dir) in str(caught.value)
    assert not os.path.exists(str(tmp_path / "copy" / "index"))


def test_mirror_checks_signatures_and_never_rolls_back(vendor, tmp_path):
    old = copy_site(vendor, "old")
    release(vendor, "2", 1_700_000_100)
    copy = str(tmp_path / "copy")
    stranger = make_keys(str(tmp_path), "stranger")["stranger"]
    with serving(vendor.site) as upstream, serving(old) as old_upstream:
        with pytest.raises(SignatureError):
            mirror(upstream, copy, Keyring.load(keyring_dir(str(tmp_path), "ring", stranger)))
        mirror(upstream, copy, Keyring.load(vendor.keys))
        with pytest.raises(IndexRollback):
            mirror(old_upstream, copy, Keyring.load(vendor.keys))
