"""How a name (a path, a ref, an xattr name, a file the user gave) appears in a message.

One function, used by every layer and by every error: a name is shown as UTF-8 where
it decodes, every other byte as ``\\xNN``, every control character (a newline, an
escape, DEL) as ``\\xNN`` as well, and a backslash doubled, so that no name can
forge a line of output or be mistaken for another name.
"""

from __future__ import annotations

import os

_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]}
_CONTROL[ord("\\")] = "\\\\"


def show(name: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> str:
    """``name`` for a message: printable, one line, unambiguous (see the module's docstring)."""
    raw = os.fsencode(name)  # a str from os.fsdecode keeps its undecodable bytes as surrogates
    text = raw.decode("utf-8", "surrogateescape")
    out = []
    for char in text:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte
            out.append(f"\\x{code - 0xDC00:02x}")
        else:
            out.append(_CONTROL.get(code, char))
    return "".join(out)
