"""store.versions: natural order of commit versions, for any stored version (issue 14)."""

from __future__ import annotations

import pytest

from store.versions import compare_versions, version_key


@pytest.mark.parametrize("older, newer", [
    ("", "0"), ("1.9", "1.10"), ("1.0", "1.0a"), ("1", "1.0"), ("a", "1"), ("1.2-rc1", "1.2-rc2"),
    ("9" * 5000, "1" + "0" * 5000), ("1." + "9" * 4400, "1." + "1" + "0" * 4400),
    ("2", "١٠"),  # Arabic-Indic "10": any decimal digit counts, as int() counts it
])
def test_order(older, newer):
    assert compare_versions(older, newer) == -1
    assert compare_versions(newer, older) == 1
    assert version_key(older) < version_key(newer)


def test_leading_zeros_and_equal():
    assert compare_versions("1.01", "1.1") == 0
    assert compare_versions("0" * 5000 + "7", "7") == 0
    assert compare_versions("x" * 5000, "x" * 5000) == 0


def test_a_5000_digit_version_is_compared_without_int():
    """int() refuses more than 4,300 digits; the comparison must not use it."""
    huge = "7" * 5000
    with pytest.raises(ValueError):
        int(huge)
    assert compare_versions(huge, huge + "1") == -1


def test_digits_that_are_not_decimal_are_text():
    """'²' is a digit to str.isdigit but not to \\d: it is text, and compares without error."""
    assert compare_versions("1²", "1²") == 0
    assert compare_versions("1", "1²") == -1
