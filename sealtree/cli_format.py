"""The help formatter every parser uses: descriptions and examples keep their line breaks."""

from __future__ import annotations

import argparse
import os
import sys


def terminal_columns() -> int:
    """The width help is wrapped to, as ``shutil.get_terminal_size`` finds it ($COLUMNS, else
    the terminal on stdout, else 80), without importing shutil: argparse makes a formatter
    for every option it registers, and shutil's imports (bz2, lzma) cost start-up time on
    every command."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=terminal_columns() - 2)
