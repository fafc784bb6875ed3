"""What the CLI's commands share: the typer apps, help texts, and the console they print to."""

from __future__ import annotations

import typer

from ptbjobs.cli.config_flags import escape_help

app = typer.Typer(help="Zaremba-small LSTM/GRU language-model sweeps on Penn Treebank, locally or on Slurm.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Get and check the Penn Treebank files.", no_args_is_help=True)
app.add_typer(data_app, name="data")

DATA_DIR_HELP = "folder with ptb.{train,valid,test}.txt \\[default: $PTBJOBS_DATA, else the per-user cache]"
SWEEP_DIR_HELP = escape_help("the sweep folder [default: the newest sweep under ./runs]")
DEVICE_HELP = "auto, cpu, cuda or cuda:N"


def console():
    """A terminal gets tables at its own width; a pipe or file gets them whole, not squeezed to 80."""
    from rich.console import Console

    terminal = Console()
    return terminal if terminal.is_terminal else Console(width=200)
