from fusefs.cli import entry

entry()
