"""Offline signing of a site's index: publish --unsigned, index sign, publish --activate,
then devices pulling over loopback HTTP (sealtree serve and nginx)."""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request

import pytest

from pack.keys import Keyring, load_private_key
from pack.signature import read_signatures
from remote import site
from remote.errors import FetchError, IndexExpired, IndexRollback
from remote.offline import activate, encode_bundle, read_bundle, sign_offline
from remote.publish import publish
from remote.pull import PullOptions, pull
from store.errors import ObjectMissing, SignatureError
from store.fsck import fsck
from tests.helpers import assert_same_tree, run_cli
from tests.test_pack_support import commit_dir, keyring_dir, make_keys
from tests.test_remote_support import (
    Vendor,
    device,
    make_vendor,
    nginx,
    object_files,
    publish_site,
    release,
    serving,
)

pytestmark = pytest.mark.usefixtures("needs_root")


@pytest.fixture
def vendor(tmp_path):
    return make_vendor(str(tmp_path))


@pytest.fixture
def two_keys(tmp_path, vendor):
    """The vendor's key and a second one, with a keyring trusting both."""
    second = make_keys(str(tmp_path), "second")["second"]
    return [vendor.key, second], keyring_dir(str(tmp_path), "both-keys", vendor.key, second)


def staged_path(vendor: Vendor) -> str:
    return os.path.join(vendor.site, site.STAGED_INDEX)


def sign_file(vendor: Vendor, key: str, out: str) -> str:
    with open(staged_path(vendor), "rb") as handle:
        data = handle.read()
    existing = read_bundle(out) if os.path.exists(out) else None
    _index, bundle = sign_offline(data, staged_path(vendor), [load_private_key(key)], existing)
    with open(out, "wb") as handle:
        handle.write(encode_bundle(bundle))
    return out


def site_files(directory: str) -> dict[str, bytes]:
    found = {}
    for d, _dirs, files in os.walk(directory):
        for name in files:
            path = os.path.join(d, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, directory)] = handle.read()
    return found


def test_unsigned_publish_offline_sign_with_two_keys_activate_and_pull_from_nginx(vendor, two_keys,
                                                                                   tmp_path):
    if shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx"):
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    keys, keyring = two_keys
    result = publish(vendor.repo, vendor.site, [], unsigned=True)
    assert result.staged and result.index_written and result.objects_written == 8
    assert not os.path.exists(os.path.join(vendor.site, site.INDEX))
    assert not os.listdir(os.path.join(vendor.site, site.SIGNATURES_DIR))
    assert not [f for f in os.listdir(os.path.join(vendor.site, site.PACKS_DIR)) if f.endswith(".sig")]
    run = tmp_path / "nginx"
    run.mkdir()
    with nginx(vendor.site, str(run)) as url:
        repo, remote = device(str(tmp_path), "device", [url], keyring)
        with pytest.raises(FetchError, match="404"):  # nothing live yet: devices see no index
            pull(repo, remote)
        # the offline machine: one bundle per signer, carried back
        first = sign_file(vendor, keys[0], str(tmp_path / "one.sigs"))
        second = sign_file(vendor, keys[1], str(tmp_path / "two.sigs"))
        done = activate(vendor.site, [first, second], Keyring.load(keyring), min_signatures=2)
        assert done.made_live and len(done.index_signers) == 2 and len(done.packs) == 1
        assert not os.path.exists(staged_path(vendor))
        pulled = pull(repo, remote, PullOptions(min_signatures=2))
    assert pulled.objects_fetched == 8 and pulled.index_serial == 1
    assert repo.refs.read("os/main") == vendor.repo.refs.read("os/main")
    assert not fsck(repo).problems
    out = str(tmp_path / "checkout")
    run_cli("checkout", "os/main", out, repo=repo.path)
    assert_same_tree(vendor.src, out)


def test_activation_refuses_bad_bundles_and_changes_nothing(vendor, two_keys, tmp_path):
    keys, keyring = two_keys
    publish(vendor.repo, vendor.site, [], unsigned=True)
    good = sign_file(vendor, keys[0], str(tmp_path / "good.sigs"))
    stranger = make_keys(str(tmp_path), "stranger")["stranger"]
    untrusted = sign_file(vendor, stranger, str(tmp_path / "stranger.sigs"))
    tampered = str(tmp_path / "tampered.sigs")
    doc = json.loads(open(good, "rb").read())
    sig = doc["index"]["signatures"][0]["signature"]
    doc["index"]["signatures"][0]["signature"] = ("0" if sig[0] != "0" else "1") + sig[1:]
    with open(tampered, "wb") as handle:
        handle.write(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
    not_canonical = str(tmp_path / "spaces.sigs")
    with open(not_canonical, "wb") as handle:
        handle.write(json.dumps(json.loads(open(good, "rb").read()), indent=1).encode())
    before = site_files(vendor.site)
    ring = Keyring.load(keyring)
    with pytest.raises(SignatureError, match="not in the keyring") as err:
        activate(vendor.site, [untrusted], ring)
    assert err.value.path == untrusted
    with pytest.raises(SignatureError, match="does not verify"):
        activate(vendor.site, [tampered], ring)
    with pytest.raises(SignatureError, match="canonical"):
        activate(vendor.site, [not_canonical], ring)
    with pytest.raises(SignatureError, match="1 good signature.*2 required"):
        activate(vendor.site, [good], ring, min_signatures=2)
    revoked_ring = keyring_dir(str(tmp_path), "revoking", keys[0], keys[1], revoked=(keys[0],))
    with pytest.raises(SignatureError, match="revoked"):
        activate(vendor.site, [good], Keyring.load(revoked_ring))
    assert site_files(vendor.site) == before  # nothing written, nothing live
    assert activate(vendor.site, [good], ring).made_live


def test_a_bundle_of_another_index_or_a_stale_or_expired_staged_index_is_refused(vendor, tmp_path):
    now = 1_800_000_000
    publish(vendor.repo, vendor.site, [], unsigned=True, now=now)
    old_bundle = sign_file(vendor, vendor.key, str(tmp_path / "old.sigs"))
    ring = Keyring.load(vendor.keys)
    activate(vendor.site, [old_bundle], ring, now=now)
    release(vendor, "2", 1_700_000_100, now=now)  # an online publish: serial 2 live
    # serial 2 again, staged: not newer than what is live
    src = os.path.join(vendor.base, "vendor-src-2")
    with open(os.path.join(src, "new-file"), "w") as handle:
        handle.write("3\n")
    commit_dir(vendor.repo, src, "os/main", version="3", timestamp=1_700_000_200)
    staged = publish(vendor.repo, vendor.site, [], unsigned=True, now=now)
    assert staged.index.serial == 3
    with pytest.raises(SignatureError, match="the site has staged"):
        activate(vendor.site, [old_bundle], ring, now=now)  # signs serial 1's index
    bundle = sign_file(vendor, vendor.key, str(tmp_path / "three.sigs"))
    with pytest.raises(IndexExpired, match="expired"):
        activate(vendor.site, [bundle], ring, now=now + 31 * 86400)
    publish_site(vendor, now=now + 1)  # serial 3 published online meanwhile
    with pytest.raises(IndexRollback, match="serial 3 and the live one 3"):
        activate(vendor.site, [bundle], ring, now=now)


def test_activation_refuses_an_index_naming_a_file_the_site_lacks(vendor, tmp_path):
    publish(vendor.repo, vendor.site, [], unsigned=True)
    bundle = sign_file(vendor, vendor.key, str(tmp_path / "b.sigs"))
    gone = object_files(vendor.site)[0]
    os.rename(gone, gone + ".away")
    with pytest.raises(ObjectMissing) as err:
        activate(vendor.site, [bundle], Keyring.load(vendor.keys))
    assert err.value.path == gone
    assert not os.path.exists(os.path.join(vendor.site, site.INDEX))
    os.rename(gone + ".away", gone)
    assert activate(vendor.site, [bundle], Keyring.load(vendor.keys)).made_live


def test_republishing_unsigned_keeps_the_staged_bytes_and_a_later_signer_adds_to_the_live_index(
        vendor, two_keys, tmp_path):
    keys, keyring = two_keys
    publish(vendor.repo, vendor.site, [], unsigned=True, now=1_800_000_000)
    with open(staged_path(vendor), "rb") as handle:
        staged = handle.read()
    again = publish(vendor.repo, vendor.site, [], unsigned=True, now=1_800_000_500)
    assert again.staged and not again.index_written
    with open(staged_path(vendor), "rb") as handle:
        assert handle.read() == staged  # the signatures being made of it stay good
    first = sign_file(vendor, keys[0], str(tmp_path / "one.sigs"))
    ring = Keyring.load(keyring)
    activate(vendor.site, [first], ring, now=1_800_000_600)
    with open(os.path.join(vendor.site, site.INDEX), "rb") as handle:
        assert handle.read() == staged
    # the second signer signs the same file later: added to the live index, nothing else changes
    with open(staged_path(vendor) + ".copy", "wb") as handle:
        handle.write(staged)
    os.rename(staged_path(vendor) + ".copy", staged_path(vendor))
    second = sign_file(vendor, keys[1], str(tmp_path / "two.sigs"))
    os.unlink(staged_path(vendor))
    later = activate(vendor.site, [second], ring, now=1_800_000_700)
    assert not later.made_live and len(later.index_signers) == 2 and later.signatures_added == 2
    with serving(vendor.site) as url:
        repo, remote = device(str(tmp_path), "device", [url], keyring)
        pulled = pull(repo, remote, PullOptions(min_signatures=2, now=1_800_000_800))
    assert pulled.objects_fetched == 8
    sig = os.path.join(vendor.site, site.pack_signatures(pulled_pack_sha(vendor)))
    assert len(read_signatures(sig)) == 2


def pulled_pack_sha(vendor: Vendor) -> bytes:
    from remote.publish import read_site_index
    index = read_site_index(vendor.site)
    assert index is not None
    return index.refs["os/main"].sha256


def test_the_commands_with_sealtree_serve(vendor, two_keys, tmp_path):
    keys, keyring = two_keys
    out = run_cli("publish", vendor.site, "--unsigned", "--json", repo=vendor.repo.path)
    assert json.loads(out.stdout)["index_staged"] is True
    bundle = str(tmp_path / "os.sigs")
    for key in keys:  # two signers passing one bundle along
        signed = run_cli("index", "sign", staged_path(vendor), "--key", key, "-o", bundle)
        assert "os/main: commit" in signed.stdout
    assert len(read_bundle(bundle).index_signatures) == 2
    refused = run_cli("publish", vendor.site, "--activate", bundle, "--keys", vendor.keys,
                      "--min-signatures", "2", check=False)
    assert refused.returncode == 12
    assert len(refused.stderr.strip().splitlines()) == 1 and "not in the keyring" in refused.stderr
    lacking = run_cli("publish", vendor.site, "--activate", bundle, check=False)
    assert lacking.returncode == 2 and "--keys" in lacking.stderr
    both = run_cli("publish", vendor.site, "--key", vendor.key, "--unsigned", check=False,
                   repo=vendor.repo.path)
    assert both.returncode == 2
    with serving(vendor.site) as url:
        with pytest.raises(urllib.error.HTTPError) as err:  # the staged index is never served
            urllib.request.urlopen(url + site.STAGED_INDEX)  # noqa: S310 - loopback
        assert err.value.code == 404
        done = run_cli("publish", vendor.site, "--activate", bundle, "--keys", keyring,
                       "--min-signatures", "2", "--json")
        assert json.loads(done.stdout)["made_live"] is True
        device_repo = str(tmp_path / "device")
        run_cli("init", repo=device_repo)
        run_cli("remote", "add", "vendor", url, "--keys", keyring, repo=device_repo)
        pulled = run_cli("pull", "vendor", "--min-signatures", "2", "--json", repo=device_repo)
    assert json.loads(pulled.stdout)["objects_fetched"] == 8
