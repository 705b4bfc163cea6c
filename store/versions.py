"""Ordering commit versions naturally, for any stored version however long.

Runs of decimal digits compare as numbers, other runs as text, a digit run
sorts after a text run at the same place, and a version after its own prefix:
``1.9 < 1.10``, ``"" < anything``.  Numbers are compared without ``int()``
(Python refuses to convert more than 4,300 digits): by their digits without
leading zeros, the shorter first, then digit by digit.
"""

from __future__ import annotations

import re

_RUNS = re.compile(r"(\d+)|(\D+)")

#: one run of a version as it sorts: (0, text) or (1, (digit count, digits))
Run = tuple[int, str | tuple[int, str]]
VersionKey = tuple[Run, ...]


def _number(run: str) -> tuple[int, str]:
    """A digit run as (significant digit count, its digits in ASCII): such pairs sort as the
    numbers do.  Any Unicode decimal digit counts, as ``\\d`` and ``int()`` count it."""
    if run.isascii():
        digits = run.lstrip("0")
    else:
        import unicodedata  # noqa: PLC0415 - a library of its own, for non-ASCII digits only

        digits = "".join(str(unicodedata.decimal(char)) for char in run).lstrip("0")
    return len(digits), digits


def version_key(version: str) -> VersionKey:
    """A key that sorts versions in the natural order (see the module's docstring)."""
    return tuple((1, _number(digits)) if digits else (0, text)
                 for digits, text in _RUNS.findall(version))


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as version ``a`` is older than, as new as, or newer than ``b``."""
    key_a, key_b = version_key(a), version_key(b)
    return (key_a > key_b) - (key_a < key_b)
