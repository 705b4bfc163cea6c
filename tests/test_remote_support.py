"""Shared by the remote tests: a vendor repository with a published site, servers on
loopback (``sealtree serve`` in a thread, hostile servers, nginx), devices."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bench.nginx import serving as nginx_serving
from pack.keys import load_private_key
from remote.config import Remote, add_remote
from remote.publish import PublishResult, publish
from remote.serve import make_server
from store.repo import Repository
from tests.test_pack_support import commit_dir, keyring_dir, make_keys, sample_tree


@dataclass
class Vendor:
    base: str
    repo: Repository
    src: str
    key: str  # private key path
    keys: str  # a keyring trusting it
    site: str


def vendor_tree(src: str, *, variant: bytes = b"") -> None:
    """The pack tests' sample tree plus several large objects, one of them stored with two
    different metadata (two inodes, one published object)."""
    sample_tree(src, big=40000)
    os.makedirs(os.path.join(src, "usr", "lib"), exist_ok=True)
    for i in range(6):  # incompressible, as most large files of a system are not
        with open(os.path.join(src, "usr", "lib", f"lib{i}.so"), "wb") as handle:
            handle.write(random.Random(i).randbytes(40000 + 4096 * i) + variant)
    same = bytes(range(256)) * 160 + variant
    for name, mode in (("same-a", 0o644), ("same-b", 0o600)):
        path = os.path.join(src, "usr", "lib", name)
        with open(path, "wb") as handle:
            handle.write(same)
        os.chmod(path, mode)


def make_vendor(base: str, *, version: str = "1", timestamp: int = 1_700_000_000) -> Vendor:
    src = os.path.join(base, "vendor-src")
    os.makedirs(src)
    vendor_tree(src)
    repo = Repository.init(os.path.join(base, "vendor-repo"))
    commit_dir(repo, src, "os/main", version=version, timestamp=timestamp)
    key = make_keys(base, "vendor")["vendor"]
    return Vendor(base, repo, src, key, keyring_dir(base, "vendor-keys", key), os.path.join(base, "site"))


def release(vendor: Vendor, version: str, timestamp: int, *, now: int | None = None,
            expires_days: float = 30) -> PublishResult:
    """Commit a changed tree as ``version`` and publish it."""
    src = os.path.join(vendor.base, f"vendor-src-{version}")
    os.makedirs(src)
    vendor_tree(src, variant=version.encode())
    commit_dir(vendor.repo, src, "os/main", version=version, timestamp=timestamp)
    return publish(vendor.repo, vendor.site, [load_private_key(vendor.key)], now=now,
                   expires_days=expires_days)


def publish_site(vendor: Vendor, **options: object) -> PublishResult:
    return publish(vendor.repo, vendor.site, [load_private_key(vendor.key)], **options)  # type: ignore[arg-type]


@contextlib.contextmanager
def serving(directory: str, *, delay: float = 0.0) -> Iterator[str]:
    """``directory`` served by remote.serve on a free loopback port (each GET answered after
    ``delay`` seconds); yields its URL."""
    server = make_server(directory, "127.0.0.1:0")
    if delay:
        base = server.RequestHandlerClass

        def slow_get(handler: BaseHTTPRequestHandler) -> None:
            time.sleep(delay)
            base.do_GET(handler)  # type: ignore[attr-defined]

        server.RequestHandlerClass = type("SlowHandler", (base,), {"do_GET": slow_get})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.url
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextlib.contextmanager
def hostile(answer: Callable[[BaseHTTPRequestHandler], None]) -> Iterator[str]:
    """A server whose every GET is answered by ``answer(handler)``; yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            with contextlib.suppress(OSError):
                answer(self)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def device(base: str, name: str, urls: list[str], keys: str,
           remote: str = "vendor") -> tuple[Repository, Remote]:
    repo = Repository.init(os.path.join(base, name))
    return repo, add_remote(repo, remote, urls[0], urls[1:], keys)


def copy_site(vendor: Vendor, name: str) -> str:
    """A copy of the vendor's site as it is now (a mirror, or a snapshot to replay)."""
    target = os.path.join(vendor.base, name)
    shutil.copytree(vendor.site, target)
    return target


def object_files(site_dir: str) -> list[str]:
    root = os.path.join(site_dir, "objects")
    return sorted(os.path.join(d, f) for d, _dirs, files in os.walk(root) for f in files)


@contextlib.contextmanager
def nginx(directory: str, tmp: str) -> Iterator[str]:
    """Debian's nginx serving ``directory`` on a free loopback port (bench.nginx: a private
    config, its pid and log files in ``tmp``); yields its URL."""
    with nginx_serving(Path(directory), Path(tmp)) as server:
        yield server.url
