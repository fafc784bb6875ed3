"""The entry point: run the app, and turn errors into one line and an exit code (a traceback only
with PTBJOBS_DEBUG=1)."""

from __future__ import annotations

import logging
import os
import sys

import typer

# importing a commands module registers its commands, in --help in this order
# isort: off
from ptbjobs.cli import train_commands  # noqa: F401
from ptbjobs.cli import sweep_commands  # noqa: F401
# isort: on
from ptbjobs.cli.common import app
from ptbjobs.core.errors import PtbjobsError


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code. Errors print one line: `ptbjobs: error: ...`."""
    debug = os.environ.get("PTBJOBS_DEBUG") == "1"
    logging.basicConfig(format="ptbjobs: %(levelname)s: %(message)s", level=logging.DEBUG if debug else logging.WARNING)
    try:
        # outside standalone mode, click hands back the code of a `typer.Exit(code)` (submit --wait,
        # status --watch) as the return value instead of raising it
        returned = app(args=argv, prog_name="ptbjobs", standalone_mode=False)
    except PtbjobsError as exc:
        if debug:
            raise
        print(f"ptbjobs: {'error: ' if exc.is_error else ''}{exc}", file=sys.stderr)
        return exc.exit_code
    except typer.TyperException as exc:  # usage errors: unknown option, missing argument, bad int
        if debug:
            raise
        if exc.format_message():  # empty when a bare command group has just printed its help
            print(f"ptbjobs: error: {exc.format_message()} (see --help)", file=sys.stderr)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("ptbjobs: aborted", file=sys.stderr)
        return 130
    return returned if isinstance(returned, int) else 0


def entry() -> None:
    sys.exit(main())
