"""Conditional GET of the index: sealtree serve and nginx answer 304, the device reuses the index
it kept, checked again (signatures, expiry, rollback); each server's validators on their own."""

from __future__ import annotations

import email.utils
import json
import os
import shutil

import pytest
import urllib3

from remote import config, site
from remote.errors import AllMirrorsFailed, FetchError, IndexExpired
from remote.pull import PullOptions, pull
from store.errors import SignatureError
from store.fsck import fsck
from tests.test_pack_support import keyring_dir
from tests.test_remote_support import (
    copy_site,
    device,
    hostile,
    make_vendor,
    nginx,
    publish_site,
    release,
    serving,
)

pytestmark = pytest.mark.usefixtures("needs_root")

NOW = 1_800_000_000
DAY = 86400


@pytest.fixture
def vendor(tmp_path):
    made = make_vendor(str(tmp_path))
    publish_site(made, now=NOW)
    return made


def validators(repo, name="vendor"):
    path = os.path.join(config.remote_dir(repo, name), config.VALIDATORS_FILE)
    with open(path) as handle:
        return json.load(handle)["servers"]


def needs_nginx():
    if shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx"):
        pytest.skip("nginx is not installed (apt-get install nginx-light)")


def test_serve_sends_validators_and_answers_304(vendor):
    http = urllib3.PoolManager()
    with serving(vendor.site) as url:
        first = http.request("GET", url + site.INDEX)
        etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
        assert first.status == 200 and etag.startswith('"') and modified.endswith("GMT")
        for headers in ({"If-None-Match": etag}, {"If-None-Match": f'"x", W/{etag}'},
                        {"If-None-Match": "*"}, {"If-Modified-Since": modified},
                        {"If-None-Match": etag, "Range": "bytes=0-3"}):
            again = http.request("GET", url + site.INDEX, headers=headers)
            assert (again.status, again.data, again.headers["ETag"]) == (304, b"", etag), headers
        assert http.request("HEAD", url + site.INDEX, headers={"If-None-Match": etag}).status == 304
        earlier = email.utils.formatdate(os.stat(os.path.join(vendor.site, site.INDEX)).st_mtime - 10,
                                         usegmt=True)
        for headers in ({"If-None-Match": '"other"'}, {"If-Modified-Since": earlier},
                        {"If-Modified-Since": "not a date"},
                        # If-None-Match decides when both are sent (RFC 9110 13.2.2)
                        {"If-None-Match": '"other"', "If-Modified-Since": modified}):
            answer = http.request("GET", url + site.INDEX, headers=headers)
            assert answer.status == 200 and answer.data == first.data, headers
        # a file replaced by rename (as publish replaces the index) gets another ETag
        path = os.path.join(vendor.site, site.INDEX)
        shutil.copy(path, path + ".new")
        os.rename(path + ".new", path)
        assert http.request("GET", url + site.INDEX, headers={"If-None-Match": etag}).status == 200
    http.clear()


@pytest.mark.parametrize("server", ["serve", "nginx"])
def test_second_pull_gets_304_and_reuses_the_kept_index(vendor, tmp_path, server):
    run = tmp_path / "nginx"
    run.mkdir()
    if server == "nginx":
        needs_nginx()
        context = nginx(vendor.site, str(run))
    else:
        context = serving(vendor.site)
    with context as url:
        repo, remote = device(str(tmp_path), "device", [url], vendor.keys)
        first = pull(repo, remote, PullOptions(now=NOW))
        assert not first.index_not_modified and first.objects_fetched == 8
        kept = validators(repo)[url]
        assert kept["etag"] and kept["last_modified"]
        second = pull(repo, remote, PullOptions(now=NOW + 60))
        assert second.index_not_modified and second.bytes_fetched == 0
        assert [r.updated for r in second.refs] == [False]
        # a new release: the server's ETag changes, the new index is fetched and kept
        release(vendor, "2", 1_700_000_100, now=NOW + 120)
        third = pull(repo, remote, PullOptions(now=NOW + 180))
        assert not third.index_not_modified and third.index_serial == 2 and third.refs[0].updated
        assert validators(repo)[url]["etag"] != kept["etag"]
        fourth = pull(repo, remote, PullOptions(now=NOW + 240))
    assert fourth.index_not_modified and fourth.index_serial == 2
    assert not fsck(repo).problems
    if server == "nginx":
        # bench.nginx's access log: "URI STATUS BYTES_SENT" a line
        statuses = [line.split()[1] for line in open(run / "access.log")
                    if line.split()[:1] == ["/index"]]
        assert statuses == ["200", "304", "200", "304"]


def test_a_304_does_not_let_an_expired_index_through(vendor, tmp_path):
    with serving(vendor.site) as url:
        repo, remote = device(str(tmp_path), "device", [url], vendor.keys)
        pull(repo, remote, PullOptions(now=NOW))
        with pytest.raises(IndexExpired, match="expired"):
            pull(repo, remote, PullOptions(now=NOW + 31 * DAY))
        allowed = pull(repo, remote, PullOptions(now=NOW + 31 * DAY, allow_expired=True))
    assert allowed.index_not_modified


def test_a_304_does_not_keep_trusting_a_key_revoked_since(vendor, tmp_path):
    with serving(vendor.site) as url:
        repo, remote = device(str(tmp_path), "device", [url], vendor.keys)
        pull(repo, remote, PullOptions(now=NOW))
        ring = keyring_dir(str(tmp_path), "revoking", vendor.key, revoked=(vendor.key,))
        from pack.keys import Keyring
        with pytest.raises(SignatureError, match="revoked"):
            pull(repo, remote, PullOptions(now=NOW + 60), keyring=Keyring.load(ring))


def test_each_server_keeps_its_own_validators(vendor, tmp_path):
    needs_nginx()
    mirror = copy_site(vendor, "mirror")
    run = tmp_path / "nginx"
    run.mkdir()
    with serving(vendor.site) as first_url, nginx(mirror, str(run)) as second_url:
        repo, remote = device(str(tmp_path), "device", [first_url, second_url], vendor.keys)
        pull(repo, remote, PullOptions(now=NOW))
        assert list(validators(repo)) == [first_url]  # only the server that served it
    # the first server is gone: the mirror is asked unconditionally, its validators added
    with nginx(mirror, str(run)) as second_url:
        _repo, remote2 = repo, config.Remote(remote.name, first_url, (second_url,), remote.keys)
        result = pull(repo, remote2, PullOptions(now=NOW + 60, policy=_quick()))
        assert not result.index_not_modified and result.index_server == second_url
        assert sorted(validators(repo)) == sorted([first_url, second_url])
        again = pull(repo, config.Remote(remote.name, second_url, (), remote.keys),
                     PullOptions(now=NOW + 120))
    assert again.index_not_modified
    with serving(vendor.site) as url:  # a new port: a server it has no validators for
        fresh = pull(repo, config.Remote(remote.name, url, (), remote.keys), PullOptions(now=NOW + 180))
    assert not fresh.index_not_modified


def _quick():
    from remote.http import HttpPolicy
    return HttpPolicy(connect_timeout=2, read_timeout=2, grace=2, retries=0)


def test_a_damaged_cache_is_ignored_and_rewritten(vendor, tmp_path):
    with serving(vendor.site) as url:
        repo, remote = device(str(tmp_path), "device", [url], vendor.keys)
        pull(repo, remote, PullOptions(now=NOW))
        directory = config.remote_dir(repo, remote.name)
        for name, damage in ((config.INDEX_CACHE, b"{}"), (config.INDEX_CACHE_SIGNATURES, b"x"),
                             (config.VALIDATORS_FILE, b"not json")):
            path = os.path.join(directory, name)
            with open(path, "rb") as handle:
                good = handle.read()
            with open(path, "wb") as handle:
                handle.write(damage)
            result = pull(repo, remote, PullOptions(now=NOW + 60))
            assert not result.index_not_modified and result.bytes_fetched > 0, name
            with open(path, "rb") as handle:
                assert handle.read() == good, name  # rewritten from the served index
            assert pull(repo, remote, PullOptions(now=NOW + 60)).index_not_modified


def test_a_server_answering_304_unasked_is_dropped(vendor, tmp_path):
    def not_modified(handler):
        handler.send_response(304)
        handler.end_headers()

    with hostile(not_modified) as liar, serving(vendor.site) as url:
        repo, remote = device(str(tmp_path), "device", [liar, url], vendor.keys)
        result = pull(repo, remote, PullOptions(now=NOW))
        assert result.index_server == url and "304" in str(result.servers[liar]["dropped"])
        # and with validators kept for it, a 304 gives back only the index this device holds
        repo2, remote2 = device(str(tmp_path), "device2", [liar], vendor.keys)
        with pytest.raises((FetchError, AllMirrorsFailed), match="304"):
            pull(repo2, remote2, PullOptions(now=NOW))
