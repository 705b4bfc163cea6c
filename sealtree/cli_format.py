"""The help formatter every parser uses: descriptions and examples keep their line breaks."""

from __future__ import annotations

import argparse
import os
import sys


def terminal_width() -> int:
    """``shutil.get_terminal_size().columns`` without importing ``shutil`` (and with it the
    compression modules: argparse makes a formatter for every option it adds, so every
    command paid for them at start-up): $COLUMNS, else the terminal's, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=terminal_width() - 2)
