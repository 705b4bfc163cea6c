"""The image layer's error: an image cannot be built (a tool failed, the tree has no kernel,
the content does not fit the size asked for)."""

from __future__ import annotations

from store.errors import SealtreeError


class ImageError(SealtreeError):
    """A disk image cannot be built; ``path`` names the file, tree path or tool concerned."""

    exit_code = 18
