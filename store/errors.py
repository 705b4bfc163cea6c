"""The one exception hierarchy of sealtree.

Every error a user can cause (bad input, a corrupt object, a tampered pack, a
mount that fails) is a ``SealtreeError``.  Each subsystem has its own subclass
carrying the object id or path it is about; the CLI maps classes to exit codes
in one place (``exit_code``).  Bugs are not caught as these.
"""

from __future__ import annotations

import os


class SealtreeError(Exception):
    """Root of every sealtree error.  ``exit_code`` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str, *, path: str | os.PathLike[str] | bytes | None = None,
                 object_id: str | None = None) -> None:
        self.path = path
        self.object_id = object_id
        super().__init__(message)


class UsageError(SealtreeError):
    """The command line or an argument is wrong."""

    exit_code = 2


class RepositoryError(SealtreeError):
    """The repository is missing, locked, or not a sealtree repository."""

    exit_code = 3


class RefError(RepositoryError):
    """A ref does not exist, is malformed, or changed under us."""

    exit_code = 4


class ObjectMissing(RepositoryError):
    """An object that a tree or commit names is not in the store."""

    exit_code = 5


class ObjectCorrupt(RepositoryError):
    """An object's bytes or metadata do not match its id."""

    exit_code = 6

    def __init__(self, message: str, *, expected: str | None = None, got: str | None = None,
                 **kwargs: object) -> None:
        self.expected = expected
        self.got = got
        super().__init__(message, **kwargs)  # type: ignore[arg-type]


class FormatError(SealtreeError):
    """An encoded object (tree, commit, state file) cannot be parsed."""

    exit_code = 7


class SourceError(SealtreeError):
    """A source tree (directory, tar, git revision) cannot be committed as it is."""

    exit_code = 8


class VerityError(SealtreeError):
    """The kernel's fs-verity refused an operation for a reason other than lack of support."""

    exit_code = 9


class VerityUnsupported(VerityError):
    """This kernel or filesystem has no fs-verity (ENOTTY, EOPNOTSUPP)."""

    exit_code = 10


class PackError(SealtreeError):
    """A pack is malformed, hostile or inconsistent.  ``offset`` points at the fault."""

    exit_code = 11

    def __init__(self, message: str, *, offset: int | None = None, **kwargs: object) -> None:
        self.offset = offset
        super().__init__(message, **kwargs)  # type: ignore[arg-type]


class SignatureError(SealtreeError):
    """A signature is missing, invalid, untrusted, revoked or below the threshold."""

    exit_code = 12


class DowngradeError(SignatureError):
    """A pack is older than the newest one accepted for its ref."""

    exit_code = 13


class DeployError(SealtreeError):
    """A deployment cannot be built, verified, mounted or found."""

    exit_code = 14


class VerificationError(DeployError):
    """A deployed object or pack does not match what the signed manifest says."""

    exit_code = 15


class MountError(DeployError):
    """A mount or unmount failed."""

    exit_code = 16
