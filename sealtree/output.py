"""Printing: human text, JSON for scripts, a progress line on terminals.

Names (paths, symlink targets) in human output are shown with ``store.names.show``."""

from __future__ import annotations

import sys
import time
from typing import Any

from store.names import show


def json_text(name: bytes) -> str:
    """A name (a symlink target, an xattr name) as a JSON string: its UTF-8 text, or, when
    it is not valid UTF-8, as messages show it (``store.names.show``)."""
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        return show(name)


def json_path(path: bytes) -> dict[str, str]:
    """A path for JSON: ``path``, plus ``path_base64`` when it is not valid UTF-8."""
    try:
        return {"path": path.decode("utf-8")}
    except UnicodeDecodeError:
        import base64  # noqa: PLC0415 - imported when used: start-up time counts on every command

        return {"path": show(path), "path_base64": base64.b64encode(path).decode()}


def print_json(value: Any) -> None:
    import json  # noqa: PLC0415 - imported when used: start-up time counts on every command

    json.dump(_valid_unicode(value), sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def _valid_unicode(value: Any) -> Any:
    """``value`` with every string made valid Unicode: a file name's undecodable bytes
    (surrogate escapes) shown as ``\\xNN``, as ``store.names.show`` does, never as lone
    surrogates, which strict JSON readers refuse."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return show(value)
        return value
    if isinstance(value, dict):
        return {_valid_unicode(k): _valid_unicode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_valid_unicode(v) for v in value]
    return value


def json_error(message: str, exit_status: int, hint: str | None) -> None:
    """What a command run with --json prints on stdout when it fails (the message and the
    hint go to stderr as well), so that a script reading stdout always gets a JSON document.
    ``hint`` (what to do about it) is null when the CLI has none for the error."""
    print_json({"ok": False, "error": message, "exit_status": exit_status, "hint": hint})


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class Progress:
    """A single updating line on stderr, only when stderr is a terminal."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty()
        self.last = 0.0
        self.shown = False

    def update(self, text: str, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if force or now - self.last > 0.1:
            sys.stderr.write(f"\r\033[K{self.label}: {text}")
            sys.stderr.flush()
            self.last = now
            self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
