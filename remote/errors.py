"""The errors of the remote layer; all are ``store.errors.SealtreeError`` subclasses.

A network or site problem is a ``RemoteError`` (exit 17).  Trust problems keep
the exit codes of their pack counterparts: an index that is unsigned or badly
signed is a ``SignatureError`` (12), an expired one ``IndexExpired`` (12), an
older one ``IndexRollback`` (a ``DowngradeError``, 13).
"""

from __future__ import annotations

from store.errors import DowngradeError, FormatError, SealtreeError, SignatureError
from store.names import show


class RemoteError(SealtreeError):
    """A remote is unknown or misconfigured, or no server could serve a file."""

    exit_code = 17


class RemoteNotFound(RemoteError):
    """The repository has no remote of that name."""


class FetchError(RemoteError):
    """One server failed to serve one file (HTTP error, timeout, too slow, too large).

    ``mirror`` is the server's base URL, ``path`` the file's path on the site.
    """

    def __init__(self, message: str, *, mirror: str, path: str, status: int | None = None) -> None:
        self.mirror = mirror
        self.status = status  # the HTTP status when the server answered with an error
        super().__init__(message, path=path)

    def __str__(self) -> str:
        return f"{self.mirror}: {show(self.path or '')}: {self.detail()}"


class WrongBytes(FetchError):
    """A server served bytes whose size or digest is not what the signed data says."""


class Mismatch(RemoteError):
    """Signed files that do not agree: a pack that is not the one the index names (a
    different ref, commit, version or time: mix-and-match of releases)."""


class AllMirrorsFailed(RemoteError):
    """Every server of a remote failed for one file; ``failures`` says how each did."""

    def __init__(self, message: str, *, path: str, failures: tuple[SealtreeError, ...]) -> None:
        self.failures = failures
        super().__init__(message, path=path)

    def detail(self) -> str:
        return "; ".join([self.message, *(str(f) for f in self.failures)])


class IndexFormatError(FormatError):
    """A site index does not parse or breaks a rule of its format."""


class IndexExpired(SignatureError):
    """A site index is past its expiry time (a frozen or stale site)."""


class IndexRollback(DowngradeError):
    """A site index is older than the newest one accepted from that remote."""
