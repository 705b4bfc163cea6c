"""The one exception hierarchy of sealtree.

Every error a user can cause (bad input, a corrupt object, a tampered pack, a
mount that fails) is a ``SealtreeError``.  Each error holds its data as fields
(``path``, ``object_id``, ``offset``, ``expected``, ``got``, ...) and renders its
message in one place, ``__str__``: the subject first (``path``, shown with
``store.names.show``), then what went wrong.  Callers never parse a message: they
read the fields or catch a subclass.  An outer layer that knows which file an
inner error is about names it with ``located``.

The CLI maps classes to exit codes (``exit_code``) and to hints that name its own
options (library layers never name a command-line flag).  Bugs are not caught as
these.
"""

from __future__ import annotations

import os
from typing import TypeVar

from .names import show

Name = str | bytes | os.PathLike[str] | os.PathLike[bytes]
E = TypeVar("E", bound="SealtreeError")


class SealtreeError(Exception):
    """Root of every sealtree error.  ``exit_code`` is what the CLI exits with.

    ``message`` says what went wrong, without the subject; ``path`` is the subject
    (a file, a path of a tree, a ref, a key file) and is shown before it, escaped;
    ``file`` is the file on disk behind it when that is not the subject (the object
    file behind a path of the tree), kept as data and not shown.
    """

    exit_code = 1

    def __init__(self, message: str, *, path: Name | None = None,
                 object_id: str | None = None, file: Name | None = None) -> None:
        self.message = message
        self.path = path
        self.object_id = object_id
        self.file = file
        super().__init__(message)

    def detail(self) -> str:
        """What went wrong, without the subject.  Subclasses with fields may build it."""
        return self.message

    def __str__(self) -> str:
        if self.path is None or self.path == "":
            return self.detail()
        return f"{show(self.path)}: {self.detail()}"

    def __reduce__(self) -> tuple[object, ...]:
        """Pickled with its fields (a forked worker's error comes back to the parent whole):
        the default would call ``__init__`` again with the message alone."""
        return _restore, (type(self), self.args, self.__dict__)

    def located(self: E, path: Name) -> E:
        """This error, about ``path`` when it named no subject yet (an outer layer knows
        which file the inner one read).  Returns self, to be raised again."""
        if self.path is None or self.path == "":
            self.path = path
        return self


def _restore(cls: type[E], args: tuple[object, ...], fields: dict[str, object]) -> E:
    """A SealtreeError unpickled: made without ``__init__``, its fields set as they were."""
    err = cls.__new__(cls, *args)
    err.args = args
    err.__dict__.update(fields)
    return err


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
                 path: Name | None = None, object_id: str | None = None,
                 file: Name | None = None) -> None:
        self.expected = expected
        self.got = got
        super().__init__(message, path=path, object_id=object_id, file=file)


class FormatError(SealtreeError):
    """An encoded object (tree, commit, state file) cannot be parsed."""

    exit_code = 7


class NotInTree(SealtreeError):
    """A path the user named is not in the committed tree (their mistake, not damage)."""

    exit_code = 1


class SourceError(SealtreeError):
    """A source tree (directory, tar, git revision) cannot be committed as it is."""

    exit_code = 8


class SpecialFile(SourceError):
    """A source holds a device, FIFO or socket, which a tree cannot hold."""


class CrossDevice(RepositoryError):
    """Hardlinks cannot reach from the repository to the destination's filesystem."""


class VerityError(SealtreeError):
    """The kernel's fs-verity refused an operation for a reason other than lack of support."""

    exit_code = 9


class VerityUnsupported(VerityError):
    """This kernel or filesystem has no fs-verity (ENOTTY, EOPNOTSUPP)."""

    exit_code = 10


class PackError(SealtreeError):
    """A pack is malformed, hostile or inconsistent.  ``offset`` points at the fault."""

    exit_code = 11

    def __init__(self, message: str, *, offset: int | None = None, path: Name | None = None,
                 object_id: str | None = None, file: Name | None = None) -> None:
        self.offset = offset
        super().__init__(message, path=path, object_id=object_id, file=file)


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


class FarmMismatch(VerificationError):
    """The hardlink farm (a directory or a link in it) differs from the signed manifest."""


class ObjectMismatch(VerificationError):
    """A large object's digest or inode metadata differs from the signed manifest."""


class MountError(DeployError):
    """A mount or unmount failed."""

    exit_code = 16


class NotARepository(RepositoryError):
    """The path given as the repository holds no sealtree repository (no config file)."""


class PackNotKept(DeployError):
    """A deployment needs the signed pack of a commit, and the repository keeps none for it."""


class NoKeyring(SignatureError):
    """No keyring was named and the system keyring does not exist: nothing to trust."""


class DeltaError(PackError):
    """A delta (of a pack or of an object) is malformed, truncated, made from another source,
    or does not rebuild the result it names.  ``path`` is the delta file; nothing it would
    have built is kept: the caller fetches the full file instead."""
