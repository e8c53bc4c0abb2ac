"""The `analytics` subcommands, one module per command group, each with a registrar that
`cli.REGISTRARS` lists: `database` (`migrate`, `db status|start|stop`), `access` (`keys`,
`customers`), `governance` (`export`, `erase`), `feature_flags` (`flags`), `configuration`
(`settings`). `runner` holds what they share: running an async command on one connection,
argument types, output helpers. SQL stays in `store/`, as everywhere.
"""
