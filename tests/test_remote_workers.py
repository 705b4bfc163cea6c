"""A pull's worker processes (remote.fetching): what crosses between them and the parent."""

from __future__ import annotations

import os

import pytest

from pack.build import RELEASE_INLINE_MAX
from pack.keys import load_private_key
from remote.errors import AllMirrorsFailed, FetchError, WrongBytes
from remote.fetching import Fetching, Wanted
from remote.http import Client, HttpPolicy
from remote.mirrors import Mirrors, SharedDrops
from remote.publish import publish
from store.errors import SealtreeError
from store.forked import Forked
from store.fsverity import digest_file
from store.ids import RawId
from store.model import Meta
from tests.test_pack_support import commit_dir
from tests.test_remote_support import make_vendor, serving


def _fail(message: str) -> SealtreeError:
    return SealtreeError(f"worker failed: {message}")


def _drop_in_child(mirrors: Mirrors, url: str) -> None:
    mirrors.drop(url, WrongBytes("fs-verity digest 00, the signed pack says 11", mirror=url,
                                 path="objects/ab/cd.zst"))


def test_a_server_one_worker_drops_is_dropped_for_the_others_with_its_reason():
    urls = ["http://127.0.0.1:9/a/", "http://127.0.0.1:9/b/"]
    drops = SharedDrops(len(urls))
    mine = Mirrors(urls, Client(HttpPolicy()), shared=drops)
    theirs = Mirrors(urls, Client(HttpPolicy()), shared=drops)
    Forked(_drop_in_child, theirs, urls[0], failure=_fail).wait()
    assert mine.live() == [urls[1]]
    assert "objects/ab/cd.zst" in (mine.stats[urls[0]].failure or "")
    named = str(mine.failed("objects/ef/gh.zst", []))
    assert urls[0] in named and "dropped earlier" in named and "fs-verity digest" in named
    drops.close()


def _raise_all_failed() -> None:
    raise AllMirrorsFailed("no server could serve it", path="objects/ab/cd.zst", failures=(
        FetchError("HTTP status 404", mirror="http://m1/", path="objects/ab/cd.zst", status=404),))


def test_a_workers_error_comes_back_with_its_fields():
    with pytest.raises(AllMirrorsFailed) as caught:
        Forked(_raise_all_failed, failure=_fail).wait()
    failure = caught.value.failures[0]
    assert isinstance(failure, FetchError) and failure.mirror == "http://m1/" and failure.status == 404
    assert caught.value.path == "objects/ab/cd.zst"
    assert str(caught.value) == ("objects/ab/cd.zst: no server could serve it; "
                                 "http://m1/: objects/ab/cd.zst: HTTP status 404")


@pytest.mark.usefixtures("needs_root")
def test_workers_fetch_every_object_once_and_small_ones_leave_no_compressed_file(tmp_path):
    vendor = make_vendor(str(tmp_path))
    src = os.path.join(vendor.base, "many")
    os.makedirs(src)
    for i in range(40):  # more objects than workers, all above the inline size
        with open(os.path.join(src, f"f{i}"), "wb") as handle:
            handle.write(os.urandom(RELEASE_INLINE_MAX + 1 + i))
    commit = commit_dir(vendor.repo, src, "os/main", version="2", timestamp=1_700_000_100)
    publish(vendor.repo, vendor.site, [load_private_key(vendor.key)])
    wanted = [Wanted(RawId(digest_file(os.path.join(src, f"f{i}"))), RELEASE_INLINE_MAX + 1 + i,
                     (Meta(0o100640, 0, 0),)) for i in range(40)]
    directory = str(tmp_path / "partial")
    os.makedirs(directory)
    progress: list[tuple[int, int]] = []
    with serving(vendor.site) as url:
        mirrors = Mirrors([url], Client(HttpPolicy()))
        fetching = Fetching(directory, wanted, mirrors, HttpPolicy(), 4,
                            lambda done, received: progress.append((done, received)))
        try:
            contents = fetching.wait()
        finally:
            fetching.cancel()
    assert commit is not None and fetching.downloaded == 40
    assert sorted(os.listdir(directory)) == sorted(os.path.basename(p) for p in contents.values())
    assert all(os.stat(p).st_mode & 0o7777 == 0o640 for p in contents.values())
    assert mirrors.stats[url].files == 40 and mirrors.stats[url].bytes > 0
    assert progress[-1][0] == 40 and progress[-1][1] == mirrors.stats[url].bytes
