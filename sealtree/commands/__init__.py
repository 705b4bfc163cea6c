"""One module per command or command group; each has ``register(subparsers)``.

``COMMANDS`` says which module registers each command, so that ``sealtree deploy``
imports and registers ``deploy_cmds`` alone: start-up time counts on every deploy
and every boot.  ``sealtree --help`` and an unknown command register every
module.  tests/test_cli.py checks the table against what the modules register.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

# One importer per module: the import runs only when the module's commands are asked for.


def _repo_cmds() -> ModuleType:
    from . import repo_cmds
    return repo_cmds


def _commit_cmd() -> ModuleType:
    from . import commit_cmd
    return commit_cmd


def _inspect_cmds() -> ModuleType:
    from . import inspect_cmds
    return inspect_cmds


def _checkout_cmd() -> ModuleType:
    from . import checkout_cmd
    return checkout_cmd


def _export_cmd() -> ModuleType:
    from . import export_cmd
    return export_cmd


def _fsck_prune_cmds() -> ModuleType:
    from . import fsck_prune_cmds
    return fsck_prune_cmds


def _digest_cmd() -> ModuleType:
    from . import digest_cmd
    return digest_cmd


def _keys_cmd() -> ModuleType:
    from . import keys_cmd
    return keys_cmd


def _pack_cmds() -> ModuleType:
    from . import pack_cmds
    return pack_cmds


def _deploy_cmds() -> ModuleType:
    from . import deploy_cmds
    return deploy_cmds


def _demo_cmd() -> ModuleType:
    from . import demo_cmd
    return demo_cmd


# Each module's importer and its commands, in --help order.
_GROUPS: list[tuple[Callable[[], ModuleType], list[str]]] = [
    (_repo_cmds, ["init", "refs", "rev-parse"]),
    (_commit_cmd, ["commit"]),
    (_inspect_cmds, ["cat", "diff", "log", "ls", "show"]),
    (_checkout_cmd, ["checkout"]),
    (_export_cmd, ["export"]),
    (_fsck_prune_cmds, ["fsck", "prune"]),
    (_digest_cmd, ["digest"]),
    (_keys_cmd, ["keygen"]),
    (_pack_cmds, ["pack"]),
    (_deploy_cmds, ["deploy", "mark-good", "mount", "rollback", "set-default", "status", "umount",
                    "undeploy"]),
    (_demo_cmd, ["demo"]),
]
COMMANDS: dict[str, Callable[[], ModuleType]] = {command: load for load, commands in _GROUPS
                                                 for command in commands}


def command_modules(command: str | None = None) -> list[ModuleType]:
    """The modules to register for ``command``: its own, or all of them (None or unknown)."""
    if command in COMMANDS:
        return [COMMANDS[command]()]
    return [load() for load, _commands in _GROUPS]
