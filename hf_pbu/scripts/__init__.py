"""Entry points of the `hf-pbu` command, one module per subcommand (as TRL's `trl/scripts`)."""
