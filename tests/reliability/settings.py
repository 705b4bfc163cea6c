"""How much the suites run: a bounded CI slice with fixed seeds, or (SEALTREE_LONG=1) more."""

from __future__ import annotations

import os

LONG = os.environ.get("SEALTREE_LONG") == "1"
SEED = int(os.environ.get("SEALTREE_SEED", "20261130"))
FUZZ_CASES = int(os.environ.get("SEALTREE_FUZZ_CASES", "2000" if LONG else "200"))
FUZZ_WORKERS = int(os.environ.get("SEALTREE_FUZZ_WORKERS", "2"))
KILLS_PER_OP = int(os.environ.get("SEALTREE_KILLS", "30" if LONG else "3"))
KILL_SCALE = 300 if LONG else 150  # files in the tree the long operations work on
