"""One module per command or command group; each has ``register(subparsers)``.

``COMMANDS`` names the modules each command needs, so that ``sealtree deploy``
imports and registers ``deploy_cmds`` alone: start-up time counts on every
deploy and every boot.  ``sealtree --help`` and an unknown command register
every module.  tests/test_cli.py checks the table against what the modules
register.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# Modules (space-separated, registered in that order) and their commands, in --help order.
_GROUPS = {
    "repo_cmds": ["init", "refs", "rev-parse"],
    "commit_cmd source_adapters": ["commit"],  # the adapters add --tar and --git to commit
    "inspect_cmds": ["cat", "diff", "log", "ls", "show"],
    "checkout_cmd": ["checkout"],
    "export_cmd": ["export"],
    "maintenance": ["fsck", "prune"],
    "digest_cmd": ["digest"],
    "keys_cmd": ["keygen"],
    "pack_cmds": ["pack"],
    "deploy_cmds": ["deploy", "mark-good", "mount", "rollback", "set-default", "status", "umount",
                    "undeploy"],
    "remote_cmds": ["mirror", "publish", "pull", "remote", "serve"],
    "demo_cmd": ["demo"],
}
COMMANDS: dict[str, list[str]] = {command: modules.split() for modules, commands in _GROUPS.items()
                                  for command in commands}
MODULE_NAMES = [name for modules in _GROUPS for name in modules.split()]


def command_modules(command: str | None = None) -> list[ModuleType]:
    """The modules to register for ``command``: its own, or all of them (None or unknown)."""
    names = COMMANDS.get(command or "", MODULE_NAMES)
    return [importlib.import_module(f"{__name__}.{name}") for name in names]
