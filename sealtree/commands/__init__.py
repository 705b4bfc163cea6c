"""One module per command or command group; each has ``register(subparsers)``.

``COMMANDS`` says which module registers each command, so that ``sealtree deploy``
imports and registers ``deploy_cmds`` alone: start-up time counts on every deploy
and every boot.  ``sealtree --help`` and an unknown command register every
module.  tests/test_cli.py checks the table against what the modules register.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# Each module and its commands, in --help order; a module is imported only when one of its
# commands is asked for (or for --help).
_GROUPS: dict[str, list[str]] = {
    "repo_cmds": ["init", "refs", "rev-parse"],
    "commit_cmd": ["commit"],
    "inspect_cmds": ["cat", "diff", "log", "ls", "show"],
    "checkout_cmd": ["checkout"],
    "export_cmd": ["export"],
    "fsck_prune_cmds": ["fsck", "prune"],
    "digest_cmd": ["digest"],
    "keys_cmd": ["keygen"],
    "pack_cmds": ["pack"],
    "deploy_cmds": ["deploy", "mark-good", "mount", "rollback", "set-default", "status", "umount",
                    "undeploy"],
    "boot_check_cmd": ["boot-check"],
    "remote_cmds": ["mirror", "publish", "pull", "remote", "serve"],
    "index_cmds": ["index"],
    "image_cmd": ["image"],
    "demo_cmd": ["demo"],
}
COMMANDS: dict[str, str] = {command: module for module, commands in _GROUPS.items()
                            for command in commands}


def command_modules(command: str | None = None) -> list[ModuleType]:
    """The modules to register for ``command``: its own, or all of them (None or unknown)."""
    names = [COMMANDS[command]] if command in COMMANDS else list(_GROUPS)
    return [importlib.import_module(f"{__name__}.{name}") for name in names]
