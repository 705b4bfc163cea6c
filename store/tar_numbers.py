"""The numbers of a tar archive, parsed as strictly as GNU tar parses them.

Python's ``tarfile`` is lenient: a PAX ``uid`` of ``abc`` or ``1e3`` becomes 0
(root), a negative PAX ``size`` is taken as it is, and a header field such as
``-7`` or ``0o7`` passes its octal parser.  These functions refuse what GNU tar
refuses, with the field named:

- a header field (``mode``, ``uid``, ``gid``, ``size``, ``mtime``) is octal
  digits, after optional leading spaces, ended by a space or NUL or the end of
  the field; or base-256 (first byte 0x80, or 0xff for a negative number, which
  only ``mtime`` may be).  An all-NUL field is 0, as GNU tar reads it.
- a PAX ``size``, ``uid``, ``gid`` (and the GNU sparse numbers) is decimal
  digits only; ``mtime``, ``atime`` and ``ctime`` are decimal with an optional
  sign and fraction.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .errors import SourceError
from .names import show

BLOCK = 512
MAX_SIZE = (1 << 63) - 1  # GNU tar's off_t
SPACES = b" \t\n\v\f\r"
OCTAL = b"01234567"

# (name, start, end) of the numeric fields of a ustar/GNU header.
HEADER_FIELDS = (("mode", 100, 108), ("uid", 108, 116), ("gid", 116, 124),
                 ("size", 124, 136), ("mtime", 136, 148))
DEVICE_FIELDS = (("devmajor", 329, 337), ("devminor", 337, 345))
DEVICE_TYPES = (b"3", b"4")
OLD_GNU_SPARSE = b"S"
# An old GNU sparse header: four (offset, size) pairs from byte 386, the real size at 483.
SPARSE_FIELDS = tuple((f"sparse {what} {i}", 386 + 24 * i + shift, 386 + 24 * i + shift + 12)
                      for i in range(4) for what, shift in (("offset", 0), ("size", 12)))
REALSIZE_FIELD = ("realsize", 483, 495)

# mode, uid, gid, size and mtime (bytes 100 to 148) as GNU tar and Python write them: octal
# digits, each field ended by a NUL or a space.  Such a header needs no closer look.
_PLAIN_NUMBERS = re.compile(rb"(?:[0-7]{7}[\0 ]){3}(?:[0-7]{11}[\0 ]){2}")
_UNSIGNED = re.compile(r"[0-9]+")
_TIME = re.compile(r"-?[0-9]+(\.[0-9]+)?")
PAX_UNSIGNED = ("size", "uid", "gid", "GNU.sparse.size", "GNU.sparse.realsize",
                "GNU.sparse.numblocks", "GNU.sparse.offset", "GNU.sparse.numbytes",
                "GNU.sparse.major", "GNU.sparse.minor")
PAX_TIMES = ("mtime", "atime", "ctime")
PAX_SPARSE_MAP = "GNU.sparse.map"


def header_number(field: bytes, what: str, *, signed: bool = False) -> int:
    """The number in a header field; SourceError when GNU tar would not read one there."""
    if field[:1] in (b"\x80", b"\xff"):  # base-256, big-endian
        value = (int.from_bytes(field, "big", signed=True) if field[0] == 0xFF
                 else int.from_bytes(field[1:], "big"))
        if value < 0 and not signed:
            raise SourceError(f"the {what} field holds a negative number ({value})")
        return value
    i = 1 if field[:1] == b"\0" else 0  # a tar of unknown vintage wrote a leading NUL
    while i < len(field) and field[i] in SPACES:
        i += 1
    if i == len(field):
        raise SourceError(f"the {what} field is blank")
    start = i
    while i < len(field) and field[i] in OCTAL:
        i += 1
    if i < len(field) and field[i] != 0 and field[i] not in SPACES:
        shown = show(field.rstrip(b"\0"))
        raise SourceError(f"the {what} field is not an octal number ({shown})")
    return int(field[start:i], 8) if i > start else 0


def check_header(block: bytes) -> None:
    """Every number a header block holds parses as GNU tar parses it (see the module);
    SourceError naming the header (by its name field) otherwise."""
    try:
        if not _PLAIN_NUMBERS.fullmatch(block, 100, 148):
            for what, start, end in HEADER_FIELDS:
                header_number(block[start:end], what, signed=what == "mtime")
        kind = block[156:157]
        if kind in DEVICE_TYPES:
            for what, start, end in DEVICE_FIELDS:
                header_number(block[start:end], what)
        if kind == OLD_GNU_SPARSE:
            for what, start, end in (*SPARSE_FIELDS, REALSIZE_FIELD):
                if block[start:end].strip(b"\0"):
                    header_number(block[start:end], what)
    except SourceError as err:
        name = block[:100].split(b"\0", 1)[0]
        raise SourceError(f"header of {show(name)}: {err.message}") from None


def check_pax(records: Mapping[str, str]) -> None:
    """The numbers among a member's PAX records are numbers (see the module)."""
    for key in PAX_UNSIGNED:
        value = records.get(key)
        if value is not None and not _UNSIGNED.fullmatch(value):
            raise SourceError(f"PAX record {key} is not a non-negative decimal number "
                              f"({show(value)})")
        if value is not None and (len(value) > len(str(MAX_SIZE)) or int(value) > MAX_SIZE):
            shown = value if len(value) <= 40 else f"{value[:40]}... ({len(value)} digits)"
            raise SourceError(f"PAX record {key} is out of range ({shown})")
    for key in PAX_TIMES:
        value = records.get(key)
        if value is not None and not _TIME.fullmatch(value):
            raise SourceError(f"PAX record {key} is not a decimal time ({show(value)})")
    value = records.get(PAX_SPARSE_MAP)
    if value is not None and value and not all(_UNSIGNED.fullmatch(n) for n in value.split(",")):
        raise SourceError(f"PAX record {PAX_SPARSE_MAP} is not a list of decimal numbers")
