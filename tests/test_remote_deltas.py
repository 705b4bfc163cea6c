"""Deltas over HTTP: publish --deltas-from, pull choosing deltas, falling back to full files."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import pytest

from pack.keys import load_private_key
from pack.signature import write_signatures
from remote import site
from remote.config import add_remote, load_remote, remove_remote
from remote.errors import IndexFormatError
from remote.index import (
    FileRef,
    ObjectDelta,
    PackDelta,
    RefEntry,
    SiteIndex,
    decode_index,
    decode_object_deltas,
    encode_index,
    encode_object_deltas,
    index_sha256,
    sign_index,
)
from remote.mirror import mirror
from remote.publish import PublishResult, publish, read_site_index
from remote.pull import PullOptions, PullResult, pull
from store.atomic import atomic_write
from store.fsck import fsck
from store.repo import Repository
from tests.helpers import assert_same_tree, run_cli
from tests.test_pack_support import commit_dir
from tests.test_remote_support import Vendor, copy_site, device, make_vendor, nginx, serving, vendor_tree

pytestmark = pytest.mark.usefixtures("needs_root")

LARGE_CHANGED = 7  # vendor_tree: six libraries and one object stored twice, all changed by a variant


def publish_release(vendor: Vendor, version: str, timestamp: int, deltas_from: int = 1) -> PublishResult:
    src = os.path.join(vendor.base, f"vendor-src-{version}")
    os.makedirs(src)
    vendor_tree(src, variant=version.encode())
    commit_dir(vendor.repo, src, "os/main", version=version, timestamp=timestamp)
    return publish(vendor.repo, vendor.site, [load_private_key(vendor.key)], deltas_from=deltas_from)


@pytest.fixture
def vendor(tmp_path):
    made = make_vendor(str(tmp_path))
    publish(made.repo, made.site, [load_private_key(made.key)], deltas_from=1)
    return made


def holding_release_1(vendor: Vendor, base: str, name: str, urls: list[str]) -> Repository:
    repo, remote = device(base, name, urls, vendor.keys)
    pull(repo, remote)
    return repo


def pull_again(repo: Repository, **options: object) -> PullResult:
    return pull(repo, load_remote(repo, "vendor"), PullOptions(**{"workers": 2, **options}))  # type: ignore[arg-type]


def checkout_equals(repo: Repository, src: str, out: str) -> None:
    run_cli("checkout", "os/main", out, repo=repo.path)
    assert_same_tree(src, out)


def resign(vendor: Vendor, change) -> None:  # type: ignore[no-untyped-def]
    """Publish, as the vendor, an index changed by ``change(entry) -> entry`` (serial + 1)."""
    old = read_site_index(vendor.site)
    assert old is not None
    refs = {ref: change(entry) for ref, entry in old.refs.items()}
    index = SiteIndex(old.serial + 1, old.timestamp, old.expires, refs)
    data = encode_index(index)
    write_signatures(os.path.join(vendor.site, site.index_signatures(index_sha256(data))),
                     [sign_index(data, load_private_key(vendor.key))])
    atomic_write(os.path.join(vendor.site, site.INDEX), data, 0o644)


def object_deltas(vendor: Vendor, delta: PackDelta) -> tuple[ObjectDelta, ...]:
    assert delta.objects is not None
    with open(os.path.join(vendor.site, site.object_delta_list(delta.objects.sha256)), "rb") as handle:
        data = handle.read()
    assert (hashlib.sha256(data).digest(), len(data)) == (delta.objects.sha256, delta.objects.size)
    return decode_object_deltas(data, "list")


def garbage_delta(vendor: Vendor, name: str, size: int) -> tuple[bytes, int]:
    """A delta file the index may list (right SHA-256 and size) that applies to nothing."""
    data = (b"not a delta " * size)[:size]
    sha256 = hashlib.sha256(data).digest()
    with open(os.path.join(vendor.site, site.DELTAS_DIR, sha256.hex() + name), "wb") as handle:
        handle.write(data)
    return sha256, len(data)


# -- publishing ------------------------------------------------------------------------------

def test_publish_lists_deltas_from_the_previous_releases_with_their_digests(vendor):
    first = read_site_index(vendor.site).refs["os/main"]
    assert first.history == () and first.deltas == ()
    second_result = publish_release(vendor, "2", 1_700_000_100)
    assert second_result.deltas_written == 1 + LARGE_CHANGED
    second = read_site_index(vendor.site).refs["os/main"]
    assert [r.sha256 for r in second.history] == [first.sha256]
    [delta] = second.deltas
    assert delta.from_ == first.sha256 and delta.size < second.size
    listed = object_deltas(vendor, delta)
    assert len(listed) == LARGE_CHANGED
    for path, sha256, size in [(site.pack_delta(delta.sha256), delta.sha256, delta.size)] + [
            (site.object_delta(o.sha256), o.sha256, o.size) for o in listed]:
        with open(os.path.join(vendor.site, path), "rb") as handle:
            data = handle.read()
        assert (hashlib.sha256(data).digest(), len(data)) == (sha256, size)
    assert all(o.size < o.full for o in listed)
    assert len(encode_index(read_site_index(vendor.site))) < 2048  # the lists stay out of the index
    again = publish(vendor.repo, vendor.site, [load_private_key(vendor.key)], deltas_from=1)
    assert (again.index_written, again.deltas_written, again.bytes_written) == (False, 0, 0)
    publish_release(vendor, "3", 1_700_000_200, deltas_from=2)
    third = read_site_index(vendor.site).refs["os/main"]
    assert [r.sha256 for r in third.history] == [second.sha256, first.sha256]
    assert [d.from_ for d in third.deltas] == [second.sha256, first.sha256]
    assert not [n for n in os.listdir(os.path.join(vendor.site, site.DELTAS_DIR)) if n.startswith(".")]


def test_index_with_deltas_round_trips_and_empty_lists_are_not_canonical(vendor):
    publish_release(vendor, "2", 1_700_000_100)
    with open(os.path.join(vendor.site, site.INDEX), "rb") as handle:
        data = handle.read()
    assert encode_index(decode_index(data, "index")) == data
    doc = json.loads(data)
    doc["refs"]["os/main"]["deltas"] = []
    with pytest.raises(IndexFormatError):
        decode_index(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode(), "index")
    doc["refs"]["os/main"].pop("deltas")
    doc["refs"]["os/main"]["surprise"] = 1
    with pytest.raises(IndexFormatError, match="unexpected keys"):
        decode_index(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode(), "index")


# -- pulling ---------------------------------------------------------------------------------

def test_a_device_holding_release_1_pulls_release_2_by_deltas_equal_to_a_full_pull(vendor, tmp_path):
    base = str(tmp_path)
    with serving(vendor.site) as url:
        by_delta = holding_release_1(vendor, base, "by-delta", [url])
        whole = holding_release_1(vendor, base, "whole", [url])
        publish_release(vendor, "2", 1_700_000_100)
        used = pull_again(by_delta)
        full = pull_again(whole, no_deltas=True)
        poll = pull_again(by_delta)
    assert poll.bytes_fetched < 2048 and poll.deltas_used == 0  # the index stays small
    assert used.deltas_used == 1 + LARGE_CHANGED and not used.fallbacks
    assert used.bytes_fetched < used.bytes_full
    assert used.bytes_full == full.bytes_fetched == full.bytes_full and full.deltas_used == 0
    assert used.objects_fetched == 0 and full.objects_fetched == LARGE_CHANGED
    assert by_delta.refs.read("os/main") == whole.refs.read("os/main") == vendor.repo.refs.read("os/main")
    for repo in (by_delta, whole):
        assert not fsck(repo).problems
        checkout_equals(repo, os.path.join(base, "vendor-src-2"), os.path.join(base, f"co-{id(repo)}"))
    assert not os.listdir(os.path.join(by_delta.path, "tmp", "pull", "deltas"))


def test_a_device_without_release_1_fetches_full_files(vendor, tmp_path):
    publish_release(vendor, "2", 1_700_000_100)
    with serving(vendor.site) as url:
        repo, remote = device(str(tmp_path), "fresh", [url], vendor.keys)
        result = pull(repo, remote)
    assert result.deltas_used == 0 and result.bytes_fetched == result.bytes_full
    assert result.packs_fetched == 1 and not result.fallbacks
    assert not fsck(repo).problems


def test_a_mirror_serving_a_corrupted_delta_is_refused_deltas_and_the_delta_comes_from_the_next(
        vendor, tmp_path):
    base = str(tmp_path)
    with serving(vendor.site) as url:
        repo = holding_release_1(vendor, base, "device", [url])
    publish_release(vendor, "2", 1_700_000_100)
    delta = read_site_index(vendor.site).refs["os/main"].deltas[0]
    liar = copy_site(vendor, "liar")
    with open(os.path.join(liar, site.pack_delta(delta.sha256)), "r+b") as handle:
        handle.seek(130)
        handle.write(b"\xff\xfe")
    with serving(liar) as bad, serving(vendor.site) as good:
        remove_remote(repo, "vendor")
        add_remote(repo, "vendor", bad, [good], vendor.keys)
        result = pull_again(repo, workers=1)
    refused = result.servers[bad]["deltas_refused"]
    assert refused is not None and site.pack_delta(delta.sha256) in refused and "SHA-256" in refused
    assert bad in refused and result.servers[bad]["dropped"] is None
    assert result.servers[good]["dropped"] is None and result.servers[good]["deltas_refused"] is None
    assert result.deltas_used == 1 + LARGE_CHANGED
    assert not fsck(repo).problems


def test_a_corrupted_delta_on_the_only_server_falls_back_to_full_files(vendor, tmp_path):
    base = str(tmp_path)
    with serving(vendor.site) as url:
        repo = holding_release_1(vendor, base, "device", [url])
        publish_release(vendor, "2", 1_700_000_100)
        delta = read_site_index(vendor.site).refs["os/main"].deltas[0]
        with open(os.path.join(vendor.site, site.pack_delta(delta.sha256)), "r+b") as handle:
            handle.seek(130)
            handle.write(b"\xff\xfe")
        result = pull_again(repo)
    refused = result.servers[url]["deltas_refused"]
    assert refused is not None and site.pack_delta(delta.sha256) in refused
    assert result.servers[url]["dropped"] is None
    assert result.fallbacks[0].path == site.pack_delta(delta.sha256) and result.fallbacks[0].blamed_server
    assert result.deltas_used == 0 and result.packs_fetched == 1
    assert result.objects_fetched == LARGE_CHANGED
    assert result.bytes_full == result.bytes_fetched - delta.size
    assert repo.refs.read("os/main") == vendor.repo.refs.read("os/main")
    assert not fsck(repo).problems


def test_deltas_that_do_not_apply_fall_back_to_full_files_without_blaming_the_server(vendor, tmp_path):
    base = str(tmp_path)
    with serving(vendor.site) as url:
        repo = holding_release_1(vendor, base, "device", [url])
        publish_release(vendor, "2", 1_700_000_100)
        entry = read_site_index(vendor.site).refs["os/main"]
        pack_sha, pack_size = garbage_delta(vendor, site.PACK_DELTA_SUFFIX, entry.deltas[0].size)
        listed = object_deltas(vendor, entry.deltas[0])
        object_sha, object_size = garbage_delta(vendor, site.OBJECT_DELTA_SUFFIX, listed[0].size)
        data = encode_object_deltas((dataclasses.replace(listed[0], sha256=object_sha, size=object_size),
                                     *listed[1:]))
        list_ref = FileRef(hashlib.sha256(data).digest(), len(data))
        with open(os.path.join(vendor.site, site.object_delta_list(list_ref.sha256)), "wb") as handle:
            handle.write(data)

        def broken(e: RefEntry) -> RefEntry:
            [d] = e.deltas
            return dataclasses.replace(e, deltas=(dataclasses.replace(
                d, sha256=pack_sha, size=pack_size, objects=list_ref),))

        resign(vendor, broken)
        result = pull_again(repo)
    assert result.servers[url]["dropped"] is None and result.servers[url]["deltas_refused"] is None
    assert sorted(f.path for f in result.fallbacks) == sorted(
        [site.pack_delta(pack_sha), site.object_delta(object_sha)])
    assert not any(f.blamed_server for f in result.fallbacks)
    assert result.packs_fetched == 1 and result.objects_fetched == 1
    assert result.deltas_used == LARGE_CHANGED - 1
    assert result.bytes_fetched < result.bytes_full + pack_size + object_size
    assert repo.refs.read("os/main") == vendor.repo.refs.read("os/main")
    assert not fsck(repo).problems
    checkout_equals(repo, os.path.join(base, "vendor-src-2"), os.path.join(base, "co"))


def test_cli_pull_json_reports_deltas_and_no_deltas_fetches_full_over_nginx(vendor, tmp_path):
    base = str(tmp_path)
    run_dir = os.path.join(base, "nginx")
    os.makedirs(run_dir)
    with nginx(vendor.site, run_dir) as url:
        repos = []
        for name in ("by-delta", "whole"):
            repo = os.path.join(base, name)
            run_cli("init", repo=repo)
            run_cli("remote", "add", "vendor", url, "--keys", vendor.keys, repo=repo)
            run_cli("pull", "vendor", repo=repo)
            repos.append(repo)
        src = os.path.join(base, "vendor-src-2")
        os.makedirs(src)
        vendor_tree(src, variant=b"2")
        commit_dir(vendor.repo, src, "os/main", version="2", timestamp=1_700_000_100)
        published = run_cli("publish", vendor.site, "--key", vendor.key, "--deltas-from", "1",
                            repo=vendor.repo.path)
        assert f"{1 + LARGE_CHANGED} delta(s)" in published.stdout
        used = json.loads(run_cli("pull", "vendor", "--json", repo=repos[0]).stdout)
        full = json.loads(run_cli("pull", "vendor", "--no-deltas", "--json", repo=repos[1]).stdout)
    assert used["deltas_used"] == 1 + LARGE_CHANGED and used["delta_fallbacks"] == []
    assert used["bytes_fetched"] < used["bytes_full"] == full["bytes_fetched"] == full["bytes_full"]
    assert full["deltas_used"] == 0 and full["objects_fetched"] == LARGE_CHANGED
    for repo in repos:
        run_cli("fsck", repo=repo)
        out = os.path.join(base, f"co-{os.path.basename(repo)}")
        run_cli("checkout", "os/main", out, repo=repo)
        assert_same_tree(src, out)


def test_a_mirror_copies_the_deltas_and_devices_use_them_from_it(vendor, tmp_path):
    base = str(tmp_path)
    copy = os.path.join(base, "copy")
    with serving(vendor.site) as upstream:
        repo = holding_release_1(vendor, base, "device", [upstream])
        publish_release(vendor, "2", 1_700_000_100)
        copied = mirror(upstream, copy)
    assert copied.deltas_fetched == 1 + 1 + LARGE_CHANGED  # pack delta, list, object deltas
    with serving(copy) as url:
        remove_remote(repo, "vendor")
        add_remote(repo, "vendor", url, [], vendor.keys)
        result = pull_again(repo)
    assert result.deltas_used == 1 + LARGE_CHANGED and not result.fallbacks
    assert not fsck(repo).problems


def test_deltas_are_cross_checked_like_any_file(vendor, tmp_path):
    base = str(tmp_path)
    with serving(vendor.site) as url:
        repo = holding_release_1(vendor, base, "device", [url])
    publish_release(vendor, "2", 1_700_000_100)
    other = copy_site(vendor, "other")
    with serving(vendor.site) as first, serving(other) as second:
        remove_remote(repo, "vendor")
        add_remote(repo, "vendor", first, [second], vendor.keys)
        result = pull_again(repo, cross_check=2, seed=1)
    assert result.deltas_used == 1 + LARGE_CHANGED and not result.fallbacks
    assert all(s["bytes"] > 0 and s["dropped"] is None for s in result.servers.values())
    assert not fsck(repo).problems


def test_a_pull_interrupted_after_rebuilding_continues_from_what_it_rebuilt(vendor, tmp_path, monkeypatch):
    import remote.pull

    base = str(tmp_path)
    with serving(vendor.site) as url:
        repo = holding_release_1(vendor, base, "device", [url])
        publish_release(vendor, "2", 1_700_000_100)

        def killed(*_args: object, **_kwargs: object) -> None:
            raise KeyboardInterrupt

        with monkeypatch.context() as patched:
            # after every object is rebuilt or fetched (the fetch runs while the import
            # stages the pack), before any is stored
            patched.setattr(remote.pull, "_stage_objects", killed)
            with pytest.raises(KeyboardInterrupt):
                pull_again(repo)
        assert repo.refs.read("os/main") != vendor.repo.refs.read("os/main")
        again = pull_again(repo)
    assert again.refs[0].updated and again.objects_fetched == 0 and again.refs[0].pack_bytes < 1024
    assert again.bytes_fetched < 2048 + 1024  # the index, its signatures, the pack's signatures
    assert repo.refs.read("os/main") == vendor.repo.refs.read("os/main")
    assert not fsck(repo).problems
    checkout_equals(repo, os.path.join(base, "vendor-src-2"), os.path.join(base, "co"))
