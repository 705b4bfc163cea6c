"""One module per command or command group; each has ``register(subparsers)``."""

from . import (
    checkout_cmd,
    commit_cmd,
    demo_cmd,
    deploy_cmds,
    digest_cmd,
    export_cmd,
    inspect_cmds,
    keys_cmd,
    maintenance,
    pack_cmds,
    repo_cmds,
    source_adapters,
)

COMMAND_MODULES = [repo_cmds, commit_cmd, source_adapters, inspect_cmds, checkout_cmd, export_cmd,
                   maintenance, digest_cmd, keys_cmd, pack_cmds, deploy_cmds, demo_cmd]
