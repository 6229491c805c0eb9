"""The `graft-edge` command line: typer commands, thin over the library."""
