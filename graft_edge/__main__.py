"""`python -m graft_edge ...` (also what torchrun launches) runs the CLI."""
from graft_edge.cli.main import main

main()
