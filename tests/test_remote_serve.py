"""sealtree serve: only regular files below the site, single ranges, no listings."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys

import pytest

from remote.serve import parse_range
from tests.helpers import ROOT
from tests.test_remote_support import serving


@pytest.fixture
def site_dir(tmp_path):
    root = tmp_path / "site"
    (root / "packs").mkdir(parents=True)
    (root / "packs" / "a.pack").write_bytes(bytes(range(256)) * 4)
    (root / ".publish.lock").write_bytes(b"")
    (root / "packs" / ".build-1.pack").write_bytes(b"half")
    (tmp_path / "secret").write_bytes(b"outside")
    os.symlink(str(tmp_path / "secret"), root / "link-out")
    os.symlink(str(tmp_path), root / "dir-out")
    os.symlink("a.pack", root / "packs" / "link-in")
    return str(root)


def get(url, path, method="GET", headers=None):
    host, port = url.split("//")[1].rstrip("/").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_serves_files_and_refuses_everything_else(site_dir):
    data = bytes(range(256)) * 4
    with serving(site_dir) as url:
        assert get(url, "/packs/a.pack")[::2] == (200, data)
        for path in ("/../secret", "/packs/../../secret", "/%2e%2e/secret", "/packs/%2E%2E/a.pack",
                     "/link-out", "/dir-out/secret", "/packs/link-in", "/", "/packs", "/packs/",
                     "/.publish.lock", "/packs/.build-1.pack", "/packs//a.pack", "/nope",
                     "/packs/a.pack%00", "/%ff"):
            status, _headers, body = get(url, path)
            assert status == 404 and b"outside" not in body, path


def test_range_requests(site_dir):
    data = bytes(range(256)) * 4
    with serving(site_dir) as url:
        status, headers, body = get(url, "/packs/a.pack", headers={"Range": "bytes=10-19"})
        assert (status, body, headers["Content-Range"]) == (206, data[10:20], "bytes 10-19/1024")
        assert get(url, "/packs/a.pack", headers={"Range": "bytes=1000-"})[2] == data[1000:]
        assert get(url, "/packs/a.pack", headers={"Range": "bytes=-24"})[2] == data[-24:]
        assert get(url, "/packs/a.pack", headers={"Range": "bytes=1000-5000"})[2] == data[1000:]
        status, headers, _ = get(url, "/packs/a.pack", headers={"Range": "bytes=1024-"})
        assert (status, headers["Content-Range"]) == (416, "bytes */1024")
        assert get(url, "/packs/a.pack", headers={"Range": "bytes=0-1,5-6"})[::2] == (200, data)
        status, headers, body = get(url, "/packs/a.pack", method="HEAD")
        assert (status, headers["Content-Length"], body) == (200, "1024", b"")


def test_parse_range_rules():
    assert parse_range(None, 10) is None
    assert parse_range("bytes=2-4", 10) == (2, 4)
    assert parse_range("bytes=5-2", 10) == "unsatisfiable"
    assert parse_range("bytes=-0", 10) == "unsatisfiable"
    assert parse_range("bytes=-20", 10) == (0, 9)
    assert parse_range("items=1-2", 10) is None


def test_cli_serve_prints_its_address_and_serves(site_dir):
    proc = subprocess.Popen([sys.executable, "-m", "sealtree", "serve", site_dir, "--listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(f"serving {site_dir} at http://127.0.0.1:"), line
        url = line.split()[-1]
        assert get(url, "/packs/a.pack")[0] == 200
        assert get(url, "/../secret")[0] == 404
    finally:
        proc.terminate()
        proc.wait(10)
