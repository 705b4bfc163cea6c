"""A read-only HTTP server for a published site (isolated networks, tests).

GET and HEAD of regular files below the site's directory, with a single
``Range`` (several ranges: the whole file, as RFC 9110 allows).  Refused with
404: any path component that is empty, ``.``, ``..`` or starts with ``.``
(temporary and lock files of a publish), a symlink anywhere below the
directory (every component is opened ``O_NOFOLLOW`` relative to its parent,
so nothing outside the directory is ever reached), directories (no listings)
and anything but a regular file.  Every answer carries an ``ETag`` (the
file's inode, modification time in nanoseconds and size: a file replaced by
rename, as the index is, gets a new one) and a ``Last-Modified``; a GET or HEAD
whose ``If-None-Match`` matches the ETag (or, without ``If-None-Match``, whose
``If-Modified-Since`` is not before the modification time) is answered 304 Not
Modified without a body, whatever its ``Range``.  At most ``max_connections`` requests are
served at once (the accept loop waits for a free slot; the kernel's backlog
queues the rest), and an idle connection is closed after ``timeout`` seconds.
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import os
import re
import socket
import stat
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_TIMEOUT = 30.0
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class NotServed(Exception):
    """The request names nothing this server serves (answered 404)."""


def open_in(root_fd: int, url_path: str) -> int:
    """An fd of the regular file at ``url_path`` below the directory ``root_fd``, opened without
    following any symlink; NotServed for anything else (see the module docstring)."""
    path = urllib.parse.unquote(url_path.split("?", 1)[0].split("#", 1)[0], errors="strict")
    if not path.startswith("/") or "\0" in path:
        raise NotServed(path)
    parts = path[1:].split("/")
    if any(not part or part.startswith(".") for part in parts):
        raise NotServed(path)
    fd = os.dup(root_fd)
    try:
        for part in parts[:-1]:
            following = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                dir_fd=fd)
            os.close(fd)
            fd = following
        last = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EACCES, errno.ENAMETOOLONG):
            raise NotServed(path) from None
        raise
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(last).st_mode):
        os.close(last)
        raise NotServed(path)
    return last


def entity_tag(st: os.stat_result) -> str:
    """The strong ETag of a file: inode, modification time (ns) and size."""
    return f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"'


def not_modified(if_none_match: str | None, if_modified_since: str | None, st: os.stat_result) -> bool:
    """Whether a GET with these conditions is answered 304 (RFC 9110 13.1.2, 13.1.3: the weak
    comparison of entity tags; If-Modified-Since only without If-None-Match; a date that does
    not parse is ignored)."""
    if if_none_match is not None:
        wanted = entity_tag(st)
        tags = [t.strip() for t in if_none_match.split(",")]
        return any(t == "*" or t.removeprefix("W/") == wanted for t in tags)
    if if_modified_since is None:
        return False
    try:
        since = email.utils.parsedate_to_datetime(if_modified_since)
    except (TypeError, ValueError, IndexError):
        return False
    if since.tzinfo is None:
        return False
    return int(st.st_mtime) <= since.timestamp()


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """(first, last) of a single satisfiable range; None to send the whole file; "unsatisfiable"."""
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None  # several ranges or another unit: ignored, the whole file is sent
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        return "unsatisfiable"
    return start, end


class SiteHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every answer has a Content-Length
    server_version = "sealtree-serve"
    sys_version = ""
    server: SiteServer

    timeout = DEFAULT_TIMEOUT  # seconds a connection may sit idle (slow clients hold a slot)
    # TCP_NODELAY: the headers are one write and the body a sendfile; with Nagle's algorithm
    # the body's first segment waited for the client's delayed ACK of the headers (40 ms),
    # once per response: a pull of 2,000 objects took 20 s instead of 2.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.log is not None:
            self.server.log(f"{self.address_string()} {format % args}")

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _answer(self, *, body: bool) -> None:
        try:
            fd = open_in(self.server.root_fd, self.path)
        except (NotServed, UnicodeDecodeError):
            self._empty(404)
            return
        with os.fdopen(fd, "rb") as handle:
            st = os.fstat(fd)
            size = st.st_size
            validators = {"ETag": entity_tag(st),
                          "Last-Modified": email.utils.formatdate(st.st_mtime, usegmt=True)}
            if not_modified(self.headers.get("If-None-Match"), self.headers.get("If-Modified-Since"), st):
                self.send_response(304)
                for name, value in validators.items():
                    self.send_header(name, value)
                self.end_headers()
                return
            wanted = parse_range(self.headers.get("Range"), size)
            if wanted == "unsatisfiable":
                self._empty(416, {"Content-Range": f"bytes */{size}"})
                return
            if isinstance(wanted, tuple):
                first, last = wanted
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
            else:
                first, last = 0, size - 1
                self.send_response(200)
            count = last - first + 1
            for name, value in validators.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(count))
            self.end_headers()
            if body and count > 0:
                self.wfile.flush()
                self.connection.sendfile(handle, first, count)


class SiteServer(ThreadingHTTPServer):
    """Serves the directory ``root`` (see the module docstring) on ``address``."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, root: str, address: tuple[str, int], *,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, idle_timeout: float = DEFAULT_TIMEOUT,
                 log: Any = None) -> None:
        self.root_fd = os.open(os.path.realpath(root), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.log = log
        self._slots = threading.BoundedSemaphore(max_connections)
        try:
            handler = type("SiteHandler", (SiteHandler,), {"timeout": idle_timeout})
            super().__init__(address, handler)
        except BaseException:
            os.close(self.root_fd)
            raise

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else str(host)
        shown = f"[{name}]" if ":" in name else name
        return f"http://{shown}:{port}/"

    def process_request(self, request: Any, client_address: Any) -> None:
        self._slots.acquire()  # bounded: wait for a free slot before taking more
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that goes away mid-answer is not an error of the server's."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    def server_close(self) -> None:
        super().server_close()
        with contextlib.suppress(OSError):
            os.close(self.root_fd)


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as a socket address; ValueError if it is not one."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise ValueError(f"not HOST:PORT: {text}")
    return host.strip("[]"), int(port)


class SiteServer6(SiteServer):
    address_family = socket.AF_INET6


def make_server(root: str, listen: str, **options: Any) -> SiteServer:
    """A server for ``root`` bound to ``listen`` (HOST:PORT; port 0 picks a free one)."""
    host, port = parse_listen(listen)
    cls = SiteServer6 if ":" in host else SiteServer
    return cls(root, (host, port), **options)
