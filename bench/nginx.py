"""A loopback nginx for the transfer measurements: Debian's ``nginx-light`` (installed if
missing), run as root with a private configuration, its pid, temp and log files in a
directory of its own, serving one directory on 127.0.0.1 at a free port (no symlinks followed, no dot file
served: a site's staged index stays private).  The tests' nginx is this one too.

Its access log has one line per request, ``URI STATUS BYTES_SENT`` (``$bytes_sent``: headers
and body as sent on the wire), so :meth:`Nginx.bytes_sent` says what a client fetched between
two points, split by the first path component (``site/``, ``ostree/``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from bench.tools import ensure_tool

CONFIG = """
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 512; }}
http {{
    log_format bench '$request_uri $status $bytes_sent';
    access_log {tmp}/access.log bench;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    types {{ }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        autoindex off;
        disable_symlinks on;
        location ~ /\\. {{ return 404; }}
    }}
}}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Nginx:
    """A running nginx (see the module docstring); ``url`` ends with a slash."""

    def __init__(self, root: Path, tmp: Path) -> None:
        self.root = root
        self.tmp = tmp
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = tmp / "access.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Write the configuration, start nginx and wait until it accepts connections."""
        binary = ensure_tool("nginx", "nginx-light")
        self.tmp.mkdir(parents=True, exist_ok=True)
        conf = self.tmp / "nginx.conf"
        conf.write_text(CONFIG.format(tmp=self.tmp, port=self.port, root=self.root))
        self.log.touch()
        self.proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(self.tmp)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"nginx exited: {err.strip()}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not listen on 127.0.0.1:{self.port}")

    def stop(self) -> None:
        """Stop nginx and wait for it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_offset(self) -> int:
        """Where the access log ends now (pass it to :meth:`bytes_sent`)."""
        return os.path.getsize(self.log)

    def bytes_sent(self, since: int, prefix: str) -> tuple[int, int]:
        """Bytes sent (headers included) and requests served since ``since`` for URIs under
        ``/prefix/``."""
        total = requests = 0
        with open(self.log, "rb") as handle:
            handle.seek(since)
            for line in handle.read().decode(errors="replace").splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[0].startswith(f"/{prefix}/") and parts[2].isdigit():
                    total += int(parts[2])
                    requests += 1
        return total, requests


@contextlib.contextmanager
def serving(root: Path, tmp: Path) -> Iterator[Nginx]:
    """nginx serving ``root`` for the duration of the block, stopped whatever happens."""
    server = Nginx(root, tmp)
    server.start()
    try:
        yield server
    finally:
        server.stop()
