"""One module per ``nommufs`` subcommand (see fusefs/cli.py)."""
