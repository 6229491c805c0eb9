"""The `graft-edge` typer app: one line per command, each command thin over the library.

Commands follow the pipeline: data (synth) -> model (init, inspect) -> train (tune) -> compress (prune)
-> export -> profile (eval, bench, frontier) -> demo (all of it); index (build/add/search) deploys a gallery.
"""
from __future__ import annotations

import typer

from graft_edge.cli.bench import bench_cmd
from graft_edge.cli.demo import demo_cmd
from graft_edge.cli.export import export_cmd
from graft_edge.cli.frontier import frontier_cmd
from graft_edge.cli.index import index_app
from graft_edge.cli.model_cmds import eval_cmd, init_cmd, inspect_cmd
from graft_edge.cli.prune import prune_cmd
from graft_edge.cli.serve import loadtest_cmd, serve_cmd
from graft_edge.cli.synth import synth
from graft_edge.cli.train import train_cmd
from graft_edge.cli.tune import tune_cmd

app = typer.Typer(
    name="graft-edge",
    help="GraFT multimodal re-identification: train, prune, export and measure for the edge.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

app.command("synth")(synth)
app.command("init")(init_cmd)
app.command("inspect")(inspect_cmd)
app.command("train")(train_cmd)
app.command("tune")(tune_cmd)
app.command("prune")(prune_cmd)
app.command("export")(export_cmd)
app.command("eval")(eval_cmd)
app.command("bench")(bench_cmd)
app.command("frontier")(frontier_cmd)
app.command("demo")(demo_cmd)
app.add_typer(index_app, name="index")
app.command("serve")(serve_cmd)
app.command("loadtest")(loadtest_cmd)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
