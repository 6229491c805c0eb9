"""The `graft-edge` typer app: one line per command, each command thin over the library."""
from __future__ import annotations

import typer

from graft_edge.cli.model_cmds import eval_cmd, init_cmd, inspect_cmd

app = typer.Typer(
    name="graft-edge",
    help="GraFT multimodal re-identification: train, prune, export and measure for the edge.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# --- command registration: one line per command (keep this block; add new commands below) ---
app.command("init")(init_cmd)
app.command("inspect")(inspect_cmd)
app.command("eval")(eval_cmd)
app.command("train")(__import__("graft_edge.cli.train", fromlist=["train_cmd"]).train_cmd)
app.command("synth")(__import__("graft_edge.cli.synth", fromlist=["synth"]).synth)
app.command("bench")(__import__("graft_edge.cli.bench", fromlist=["bench_cmd"]).bench_cmd)
app.command("prune")(__import__("graft_edge.cli.prune", fromlist=["prune_cmd"]).prune_cmd)
app.command("export")(__import__("graft_edge.cli.export", fromlist=["export_cmd"]).export_cmd)
app.command("frontier")(__import__("graft_edge.cli.frontier", fromlist=["frontier_cmd"]).frontier_cmd)
app.command("demo")(__import__("graft_edge.cli.demo", fromlist=["demo_cmd"]).demo_cmd)
# --- end of command registration ---


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
