"""What the tests share, by job: ``cli_runner`` runs the CLI, ``trees`` makes and compares
trees, ``mount_guard`` checks that a mounting test leaves nothing mounted.

Re-exported here so that ``from tests.helpers import X`` keeps working.
"""

from __future__ import annotations

from tests.cli_runner import ROOT, run_cli, run_cli_bytes
from tests.mount_guard import mount_free_dir
from tests.trees import (
                         ODD_NAMES,
                         Node,
                         add_content_twins,
                         assert_same_tree,
                         extra_links,
                         materialise,
                         names,
                         snapshot,
                         trees,
)

__all__ = ["ODD_NAMES", "ROOT", "Node", "add_content_twins", "assert_same_tree", "extra_links",
           "materialise", "mount_free_dir", "names", "run_cli", "run_cli_bytes", "snapshot", "trees"]
