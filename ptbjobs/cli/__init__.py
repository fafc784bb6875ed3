"""The `ptbjobs` command line: wiring only. Every command parses its flags, calls the library, and
prints the result; errors the user can fix come back as one line and a non-zero exit code.

    common.py           the typer apps, shared help texts, the console
    config_flags.py     `train`'s flags made from the TrainConfig dataclass
    train_commands.py   train, eval, bench, data download / verify
    sweep_commands.py   submit, status, cancel, retry, logs, report
    main.py             main() and the console script's entry()
"""

from ptbjobs.cli.common import app
from ptbjobs.cli.main import entry, main

__all__ = ["app", "entry", "main"]
