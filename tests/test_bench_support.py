"""The bench's own tools for the transfer measurements: nginx's byte count and release 2."""

from __future__ import annotations

import os
import shutil
import urllib.request

import pytest

from bench.nginx import serving
from bench.transfer import changed_copy


@pytest.mark.skipif(os.geteuid() != 0 or not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")),
                    reason="needs root and Debian's nginx")
def test_nginx_counts_the_bytes_it_sent_per_top_directory(tmp_path):
    web = tmp_path / "web"
    (web / "site").mkdir(parents=True)
    (web / "ostree").mkdir()
    (web / "site" / "a").write_bytes(b"x" * 100_000)
    (web / "ostree" / "b").write_bytes(b"y" * 5_000)
    with serving(web, tmp_path / "nginx") as server:
        start = server.log_offset()
        for path in ("site/a", "ostree/b", "ostree/b"):
            with urllib.request.urlopen(server.url + path) as response:
                response.read()
        site, site_requests = server.bytes_sent(start, "site")
        ostree, ostree_requests = server.bytes_sent(start, "ostree")
        assert (site_requests, ostree_requests) == (1, 2)
        assert 100_000 < site < 101_000 and 10_000 < ostree < 12_000  # headers included
        assert server.bytes_sent(server.log_offset(), "site") == (0, 0)
    assert server.proc is not None and server.proc.poll() is not None


def test_release_two_changes_the_given_fraction_of_regular_files(tmp_path):
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    for index in range(40):
        (tree / "d" / f"f{index}").write_bytes(b"%d" % index)
    os.symlink("d/f0", tree / "link")
    changed = changed_copy(tree, tmp_path / "two", 0.1, seed=1)
    assert changed == 4
    differ = [f for f in os.listdir(tree / "d")
              if (tree / "d" / f).read_bytes() != (tmp_path / "two" / "d" / f).read_bytes()]
    assert len(differ) == 4
    assert os.readlink(tmp_path / "two" / "link") == "d/f0"
