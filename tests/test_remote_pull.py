"""Publish -> pull over loopback HTTP: the trust chain end to end, failover, resume."""

from __future__ import annotations

import os
import shutil

import pytest
import zstandard

from pack.keys import load_private_key
from remote import site
from remote.config import Remote, load_accepted
from remote.errors import AllMirrorsFailed, IndexExpired, IndexRollback, WrongBytes
from remote.http import USER_AGENT, Client, HttpPolicy, NoHash
from remote.publish import publish
from remote.pull import PullOptions, partial_dir, pull
from store.errors import SignatureError
from store.fsck import fsck
from tests.helpers import assert_same_tree, run_cli
from tests.test_pack_support import keyring_dir, make_keys
from tests.test_remote_support import (
    copy_site,
    device,
    hostile,
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
    made = make_vendor(str(tmp_path))
    publish_site(made)
    return made


def checkout_equals(repo, ref, src, tmp_path):
    out = str(tmp_path / f"checkout-{os.path.basename(repo.path)}")
    run_cli("checkout", ref, out, repo=repo.path)
    assert_same_tree(src, out)


def test_pull_into_empty_repository_gives_the_same_tree_and_a_second_pull_fetches_nothing(vendor, tmp_path):
    with serving(vendor.site) as url:
        repo, remote = device(str(tmp_path), "device", [url], vendor.keys)
        first = pull(repo, remote)
        assert first.packs_fetched == 1
        assert first.objects_fetched == len(object_files(vendor.site)) == 8  # same-a/-b: one object
        assert first.bytes_fetched == first.servers[url]["bytes"] > 0
        assert repo.refs.read("os/main") == vendor.repo.refs.read("os/main")
        assert not fsck(repo).problems
        checkout_equals(repo, "os/main", vendor.src, tmp_path)
        second = pull(repo, remote)
    assert (second.packs_fetched, second.objects_fetched) == (0, 0)
    assert [r.updated for r in second.refs] == [False]
    assert second.bytes_fetched < 1024  # the index and its signatures only
    assert not os.listdir(os.path.join(partial_dir(repo), "objects"))


def test_update_fetches_only_changed_objects_and_index_state_advances(vendor, tmp_path):
    with serving(vendor.site) as url:
        repo, remote = device(str(tmp_path), "device", [url], vendor.keys)
        pull(repo, remote)
        result = release(vendor, "2", 1_700_000_100)
        assert result.index.serial == 2
        second = pull(repo, remote)
    assert second.refs[0].updated and second.refs[0].previous != second.refs[0].commit
    assert 0 < second.objects_fetched <= 8
    assert load_accepted(repo, "vendor").serial == 2
    assert not fsck(repo).problems


def test_republishing_unchanged_content_rewrites_nothing(vendor):
    before = {p: os.stat(p).st_mtime_ns for p in object_files(vendor.site)}
    index = os.path.join(vendor.site, site.INDEX)
    index_stat = os.stat(index)
    again = publish_site(vendor)
    assert (again.index_written, again.packs_written, again.objects_written, again.bytes_written) == \
        (False, 0, 0, 0)
    assert {p: os.stat(p).st_mtime_ns for p in object_files(vendor.site)} == before
    assert os.stat(index).st_ino == index_stat.st_ino


def test_corrupt_object_on_one_mirror_is_named_dropped_and_the_pull_succeeds(vendor, tmp_path):
    liar = copy_site(vendor, "liar")
    victim = object_files(liar)[0]
    with open(victim, "r+b") as handle:
        handle.seek(100)
        handle.write(b"\xff\xfe")
    with serving(liar) as bad, serving(vendor.site) as good:
        repo, remote = device(str(tmp_path), "device", [bad, good], vendor.keys)
        result = pull(repo, remote, PullOptions(workers=1))
    dropped = result.servers[bad]["dropped"]
    assert dropped is not None and bad in dropped
    assert os.path.relpath(victim, liar) in dropped and "fs-verity digest" in dropped
    assert result.servers[good]["dropped"] is None and result.servers[good]["bytes"] > 0
    assert not fsck(repo).problems
    checkout_equals(repo, "os/main", vendor.src, tmp_path)


def test_object_decompressing_past_its_signed_size_is_refused_and_nothing_is_kept(vendor, tmp_path):
    victim = object_files(vendor.site)[0]
    with open(victim, "rb") as handle:
        size = len(zstandard.ZstdDecompressor().decompress(handle.read()))
    with open(victim, "wb") as handle:  # the content, then more: still within the compressed cap
        handle.write(zstandard.ZstdCompressor().compress(bytes(size + (8 << 20))))
    with serving(vendor.site) as url:
        repo, remote = device(str(tmp_path), "device", [url], vendor.keys)
        with pytest.raises(AllMirrorsFailed) as caught:
            pull(repo, remote, PullOptions(workers=1))
    assert "more than the signed size" in str(caught.value)
    assert repo.refs.read("os/main") is None
    name = os.path.basename(os.path.dirname(victim)) + os.path.basename(victim).split(".")[0]
    assert not [f for f in os.listdir(os.path.join(partial_dir(repo), "objects")) if f.startswith(name)]


def test_tampered_pack_on_the_only_server_is_refused_naming_server_and_file(vendor, tmp_path):
    pack = next(p for p in os.listdir(os.path.join(vendor.site, "packs")) if p.endswith(".pack"))
    with open(os.path.join(vendor.site, "packs", pack), "r+b") as handle:
        handle.seek(40)
        handle.write(b"\x00\x01")
    with serving(vendor.site) as url:
        repo, remote = device(str(tmp_path), "device", [url], vendor.keys)
        with pytest.raises(AllMirrorsFailed) as caught:
            pull(repo, remote)
    message = str(caught.value)
    assert f"packs/{pack}" in message and url in message and "SHA-256" in message
    assert "\n" not in message
    assert repo.refs.read("os/main") is None


def test_expired_index_is_refused_unless_allowed(vendor, tmp_path):
    with serving(vendor.site) as url:
        repo, remote = device(str(tmp_path), "device", [url], vendor.keys)
        later = 2**40
        with pytest.raises(IndexExpired, match="expired"):
            pull(repo, remote, PullOptions(now=later))
        assert repo.refs.read("os/main") is None
        pull(repo, remote, PullOptions(now=later, allow_expired=True))
    assert repo.refs.read("os/main") is not None


def test_replayed_older_index_is_refused(vendor, tmp_path):
    old = copy_site(vendor, "old-site")
    release(vendor, "2", 1_700_000_100)
    with serving(vendor.site) as new_url, serving(old) as old_url:
        repo, remote = device(str(tmp_path), "device", [new_url], vendor.keys)
        pull(repo, remote)
        replay = Remote(remote.name, old_url, (), remote.keys)
        with pytest.raises(IndexRollback, match="older than serial 2"):
            pull(repo, replay)
        # a mirror that serves the old index is dropped; the next one serves the new
        result = pull(repo, Remote(remote.name, old_url, (new_url,), remote.keys))
    assert result.servers[old_url]["dropped"] and result.index_server == new_url


def test_unsigned_and_untrusted_indexes_are_refused(vendor, tmp_path):
    with serving(vendor.site) as url:
        repo, remote = device(str(tmp_path), "device", [url], vendor.keys)
        stranger = make_keys(str(tmp_path), "stranger")["stranger"]
        ring = keyring_dir(str(tmp_path), "stranger-keys", stranger)
        with pytest.raises(SignatureError, match="0 good signature"):
            pull(repo, Remote(remote.name, url, (), ring))
        shutil.rmtree(os.path.join(vendor.site, site.SIGNATURES_DIR))
        with pytest.raises(SignatureError, match="not signed"):
            pull(repo, remote)
    assert repo.refs.read("os/main") is None


def test_revoked_key_is_refused(vendor, tmp_path):
    ring = keyring_dir(str(tmp_path), "revoking", vendor.key, revoked=(vendor.key,))
    with serving(vendor.site) as url:
        repo, remote = device(str(tmp_path), "device", [url], ring)
        with pytest.raises(SignatureError, match="revoked"):
            pull(repo, remote)


def test_two_keys_sign_and_one_is_enough_or_both_are_required(vendor, tmp_path):
    second = make_keys(str(tmp_path), "second")["second"]
    again = publish(vendor.repo, vendor.site, [load_private_key(vendor.key), load_private_key(second)])
    assert not again.index_written and again.signatures_added == 2  # index and pack, by the new key
    ring = keyring_dir(str(tmp_path), "both", vendor.key, second)
    with serving(vendor.site) as url:
        repo, remote = device(str(tmp_path), "device", [url], ring)
        pull(repo, remote, PullOptions(min_signatures=2))
    assert repo.refs.read("os/main") is not None


def test_interrupted_download_resumes_with_a_range_request(vendor, tmp_path):
    with serving(vendor.site) as url:
        repo, remote = device(str(tmp_path), "device", [url], vendor.keys)
        objects = object_files(vendor.site)
        largest = max(objects, key=os.path.getsize)
        size = os.path.getsize(largest)
        partial = os.path.join(partial_dir(repo), "objects")
        os.makedirs(partial, exist_ok=True)
        digest_hex = os.path.relpath(largest, os.path.join(vendor.site, "objects")).replace("/", "")[:64]
        with open(largest, "rb") as src, open(os.path.join(partial, digest_hex + ".zst"), "wb") as out:
            out.write(src.read(size // 2))
        # a second partial file with wrong bytes: refetched whole from the same server, not blamed
        other = min(objects, key=os.path.getsize)
        other_hex = os.path.relpath(other, os.path.join(vendor.site, "objects")).replace("/", "")[:64]
        with open(os.path.join(partial, other_hex + ".zst"), "wb") as out:
            out.write(b"garbage")
        full = sum(os.path.getsize(p) for p in objects)
        result = pull(repo, remote)
    assert result.servers[url]["dropped"] is None
    object_bytes = result.refs[0].object_bytes
    # the half present is not fetched again; the garbage one costs its rest, then all of it
    other_size = os.path.getsize(other)
    assert object_bytes == full - size // 2 + other_size - len(b"garbage"), (object_bytes, full, size)
    assert not fsck(repo).problems


def test_slow_server_is_given_up_and_the_next_mirror_used(vendor, tmp_path):
    import time

    from tests.test_remote_support import hostile

    def slow(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        for _ in range(50):
            handler.wfile.write(b"x")
            handler.wfile.flush()
            time.sleep(0.1)

    with hostile(slow) as slow_url, serving(vendor.site) as good:
        repo, remote = device(str(tmp_path), "device", [slow_url, good], vendor.keys)
        started = time.monotonic()
        result = pull(repo, remote, PullOptions(policy=HttpPolicy(grace=0.5, read_timeout=2,
                                                                  min_rate=1 << 20)))
    assert time.monotonic() - started < 4
    assert "too slow" in result.servers[slow_url]["dropped"]
    assert repo.refs.read("os/main") is not None


def test_endless_data_is_never_read_past_the_cap(tmp_path):
    from remote.http import Client
    from tests.test_remote_support import hostile

    sent = {"n": 0}

    def endless(handler):
        handler.send_response(200)
        handler.end_headers()  # no Content-Length: the body ends when the server closes
        chunk = b"z" * 65536
        while sent["n"] < 1 << 30:
            handler.wfile.write(chunk)
            sent["n"] += len(chunk)

    client = Client(HttpPolicy(grace=5))
    with hostile(endless) as url:
        with pytest.raises(WrongBytes, match="more than the 100000 bytes"):
            client.get_bytes(url, "index", 100000)
        dest = str(tmp_path / "part")
        hasher, got = client.get_file(url, "objects/x", dest, 5000, __import__("hashlib").sha256)
        assert got == 5000 and os.path.getsize(dest) == 5000
    assert sent["n"] < 1 << 30


def test_pull_from_nginx(vendor, tmp_path):
    if shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx"):
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    run = tmp_path / "nginx"
    run.mkdir()
    with nginx(vendor.site, str(run)) as url:
        repo, remote = device(str(tmp_path), "device", [url], vendor.keys)
        result = pull(repo, remote)
        assert result.objects_fetched == 8
        again = pull(repo, remote)
    assert again.objects_fetched == 0
    assert not fsck(repo).problems
    checkout_equals(repo, "os/main", vendor.src, tmp_path)


def test_cross_check_over_three_mirrors_names_the_one_that_lies(vendor, tmp_path):
    liar = copy_site(vendor, "liar")
    victim = max(object_files(liar), key=os.path.getsize)
    with open(victim, "r+b") as handle:
        data = handle.read()
        handle.seek(0)
        handle.write(bytes(b ^ 0x5A for b in data))  # every byte it serves of this object is a lie
    second = copy_site(vendor, "second")
    with serving(vendor.site) as one, serving(second) as two, serving(liar) as bad:
        repo, remote = device(str(tmp_path), "device", [one, two, bad], vendor.keys)
        result = pull(repo, remote, PullOptions(cross_check=3, seed=1, workers=1))
    dropped = result.servers[bad]["dropped"]
    assert dropped is not None and os.path.relpath(victim, liar) in dropped and "cross-check" in dropped
    assert result.servers[one]["dropped"] is None and result.servers[two]["dropped"] is None
    assert all(result.servers[url]["bytes"] > 0 for url in (one, two, bad))
    assert not fsck(repo).problems
    checkout_equals(repo, "os/main", vendor.src, tmp_path)


def test_cross_check_splits_every_file_so_no_server_serves_a_whole_one(vendor, tmp_path):
    second = copy_site(vendor, "second")
    third = copy_site(vendor, "third")
    with serving(vendor.site) as one, serving(second) as two, serving(third) as three:
        repo, remote = device(str(tmp_path), "device", [one, two, three], vendor.keys)
        result = pull(repo, remote, PullOptions(cross_check=3))
    assert result.bytes_fetched == sum(s["bytes"] for s in result.servers.values())
    objects = sum(os.path.getsize(p) for p in object_files(vendor.site))
    for url in (one, two, three):  # each served about a third of every file, none a whole one
        assert 0.3 * objects < result.servers[url]["bytes"] < 0.4 * objects + 4096, url


def test_mirrorlist_adds_servers_tried_after_the_configured_ones(vendor, tmp_path):
    from remote.config import add_remote
    from store.repo import Repository

    lists = tmp_path / "lists"
    lists.mkdir()
    with serving(vendor.site) as good, serving(str(lists)) as list_server:
        (lists / "mirrors.txt").write_text(f"# mirrors of the vendor\n\n{good}  # the good one\n")
        repo = Repository.init(str(tmp_path / "device"))
        remote = add_remote(repo, "vendor", "http://127.0.0.1:9/", [], vendor.keys,
                            mirrorlist=f"{list_server}mirrors.txt")
        result = pull(repo, remote)
    assert result.servers["http://127.0.0.1:9/"]["dropped"] is not None
    assert result.index_server == good and repo.refs.read("os/main") is not None


def test_mirrorlist_that_is_not_a_list_is_refused(tmp_path):
    from remote.config import parse_mirrorlist
    from store.errors import FormatError

    assert parse_mirrorlist(b"http://a/\n#c\nhttps://b/x # d\n", "l") == ["http://a/", "https://b/x"]
    for bad in (b"ftp://a/\n", b"\xff\n", b"".join(b"http://h%d/\n" % i for i in range(65))):
        with pytest.raises(FormatError):
            parse_mirrorlist(bad, "l")


def test_index_naming_another_refs_pack_is_refused_as_mix_and_match(vendor, tmp_path):
    from dataclasses import replace

    from pack.signature import write_signatures
    from remote.errors import Mismatch
    from remote.index import decode_index, encode_index, index_sha256, sign_index

    vendor.repo.refs.update("os/dev", vendor.repo.refs.read("os/main"), None)
    publish(vendor.repo, vendor.site, [load_private_key(vendor.key)], ["os/dev"])
    with open(os.path.join(vendor.site, site.INDEX), "rb") as handle:
        index = decode_index(handle.read(), "index")
    swapped = {"os/main": index.refs["os/dev"], "os/dev": index.refs["os/main"]}
    forged = encode_index(replace(index, serial=index.serial + 1, refs=swapped))
    write_signatures(os.path.join(vendor.site, site.index_signatures(index_sha256(forged))),
                     [sign_index(forged, load_private_key(vendor.key))])
    with open(os.path.join(vendor.site, site.INDEX), "wb") as handle:
        handle.write(forged)
    with serving(vendor.site) as url:
        repo, remote = device(str(tmp_path), "device", [url], vendor.keys)
        with pytest.raises(Mismatch, match="the pack is of ref os/dev"):
            pull(repo, remote, PullOptions(refs=["os/main"]))
    assert repo.refs.read("os/main") is None


def test_cross_check_over_nginx_and_serve(vendor, tmp_path):
    if shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx"):
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    run = tmp_path / "nginx"
    run.mkdir()
    copy = copy_site(vendor, "copy")
    with nginx(vendor.site, str(run)) as one, serving(copy) as two:
        repo, remote = device(str(tmp_path), "device", [one, two], vendor.keys)
        result = pull(repo, remote, PullOptions(cross_check=2))
    assert all(s["dropped"] is None and s["bytes"] > 0 for s in result.servers.values())
    assert not fsck(repo).problems


def test_a_server_that_redirects_every_file_elsewhere_is_followed(vendor, tmp_path):
    """A front (a CDN's edge, say) answers every GET with a redirect to the server that has the
    file: the pull follows it, and a Range request still says who asks."""
    seen: list[tuple[str, str | None, str | None]] = []
    with serving(vendor.site) as origin:
        def redirect(handler):
            seen.append((handler.path, handler.headers.get("User-Agent"), handler.headers.get("Range")))
            handler.send_response(302)
            handler.send_header("Location", origin.rstrip("/") + handler.path)
            handler.send_header("Content-Length", "0")
            handler.end_headers()

        with hostile(redirect) as front:
            repo, remote = device(str(tmp_path), "device", [front], vendor.keys)
            result = pull(repo, remote)
            objects = object_files(vendor.site)
            partial = os.path.join(partial_dir(repo), "objects")
            largest = max(objects, key=os.path.getsize)
            client = Client(HttpPolicy())
            try:
                with open(largest, "rb") as src:
                    half = src.read(os.path.getsize(largest) // 2)
                dest = os.path.join(partial, "resumed")
                with open(dest, "wb") as out:
                    out.write(half)
                rel = os.path.relpath(largest, vendor.site)
                client.get_file(front, rel, dest, os.path.getsize(largest), NoHash)
            finally:
                client.close()
    assert result.refs[0].updated and result.objects_fetched == len(objects)
    assert result.servers[front]["dropped"] is None
    assert repo.refs.read("os/main") == vendor.repo.refs.read("os/main")
    assert not fsck(repo).problems
    with open(dest, "rb") as got, open(largest, "rb") as want:
        assert got.read() == want.read()
    assert all(agent == USER_AGENT for _path, agent, _range in seen)
    assert seen[-1] == ("/" + rel, USER_AGENT, f"bytes={len(half)}-")
