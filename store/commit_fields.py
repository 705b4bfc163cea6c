"""What a new commit's fields may hold: a timestamp a date can show, valid UTF-8, and a
subject and version that are one bounded line (docs/FORMAT.md, section 5).

Checked when a commit is made (``store.history.finish_commit``), and by the
CLI before it reads a source tree; readers accept what older commits hold.
"""

from __future__ import annotations

import os
import time

from .commits import MAX_TIMESTAMP, MIN_TIMESTAMP
from .errors import UsageError

MAX_SUBJECT = 4096  # bytes of UTF-8
MAX_VERSION = 128  # bytes of UTF-8


def check_timestamp(value: int, source: str) -> int:
    """``value`` if a commit may have it as its timestamp (years 1 to 9999), else UsageError."""
    if not MIN_TIMESTAMP <= value <= MAX_TIMESTAMP:
        raise UsageError(f"{source} {value} is out of range: a commit timestamp must be "
                         f"{MIN_TIMESTAMP} .. {MAX_TIMESTAMP} (years 1 to 9999 UTC)")
    return value


def requested_timestamp(explicit: int | None = None, source: str = "timestamp") -> int | None:
    """``explicit`` (called ``source`` in errors), else SOURCE_DATE_EPOCH, else None for now;
    checked, so that a command can refuse a bad one before it reads its source tree."""
    if explicit is not None:
        return check_timestamp(explicit, source)
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env:
        try:
            value = int(env)
        except ValueError:
            raise UsageError(f"SOURCE_DATE_EPOCH is not an integer: {_quoted(env)}") from None
        return check_timestamp(value, "SOURCE_DATE_EPOCH")
    return None


def commit_timestamp(explicit: int | None = None, source: str = "timestamp") -> int:
    """``explicit``, else SOURCE_DATE_EPOCH, else now (seconds since the epoch)."""
    requested = requested_timestamp(explicit, source)
    return int(time.time()) if requested is None else requested


def _quoted(value: str) -> str:
    """A text value (not a name: names go through ``store.names.show``) quoted on one line as
    Python writes a string, its undecodable bytes (surrogate escapes) as ``\\xNN``."""
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that stands for no byte
        return ascii(value)
    text = raw.decode("utf-8", "backslashreplace")
    return "'" + "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text) + "'"


def check_text(field: str, value: str) -> str:
    """``value`` if it can be stored as UTF-8 (no lone surrogates, as undecodable
    command-line bytes become), else UsageError naming ``field`` and the bytes."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{field} is not valid UTF-8: {_quoted(value)}") from None
    return value


def check_one_line(field: str, value: str, limit: int) -> str:
    """``value`` if it is valid UTF-8 (``check_text``), one line (no line break of any kind
    ``str.splitlines`` knows) and at most ``limit`` bytes; else UsageError naming ``field``."""
    check_text(field, value)
    if len(f"x{value}x".splitlines()) != 1:
        raise UsageError(f"{field} must be one line: {_quoted(value[:80])}")
    size = len(value.encode("utf-8"))
    if size > limit:
        raise UsageError(f"{field} is {size} bytes long; at most {limit} are allowed")
    return value


def check_subject(field: str, value: str) -> str:
    """A commit subject: one line of at most MAX_SUBJECT bytes (``check_one_line``)."""
    return check_one_line(field, value, MAX_SUBJECT)


def check_version(field: str, value: str) -> str:
    """A commit version: one line of at most MAX_VERSION bytes (``check_one_line``)."""
    return check_one_line(field, value, MAX_VERSION)


def check_commit_text(subject: str, body: str, version: str,
                      metadata: tuple[tuple[str, str], ...]) -> None:
    """Refuse any commit text that cannot be stored: not UTF-8 (``check_text``), or a subject
    or version that is not one bounded line."""
    check_subject("subject", subject)
    check_text("body", body)
    check_version("version", version)
    for key, value in metadata:
        check_text("metadata key", key)
        check_text(f"metadata value of {_quoted(key)}", value)
