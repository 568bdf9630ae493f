"""One module per `duolm` command group: each holds the cmd_<command>(cfg, parts) functions the CLI
dispatches to (duolm.app.cli.JOBS), imported only when its command runs."""
