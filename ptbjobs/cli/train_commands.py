"""The commands about one run and its data: train, eval, bench, data download, data verify."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from ptbjobs.cli.common import DATA_DIR_HELP, DEVICE_HELP, app, data_app
from ptbjobs.cli.config_flags import config_from_flags, escape_help, flag, with_config_flags
from ptbjobs.core.errors import ConfigError, PtbjobsError


@app.command()
@with_config_flags
def train(
    config: Optional[Path] = typer.Option(None, "--config", help="JSON or TOML file of training fields; flags override it"),
    out: Optional[Path] = typer.Option(None, "--out", help=escape_help("run folder [default: runs/CELL-dDROPOUT-sSEED]")),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    *, flags: dict[str, Any],
) -> None:
    """Train one run to the end; the same command on the same --out resumes it."""
    from ptbjobs.sweep.grid import run_key
    from ptbjobs.train.progress import make_reporter
    from ptbjobs.train.runner import run_training

    train_config = config_from_flags(config, flags)
    run_training(train_config, out or Path("runs") / run_key(train_config), data_dir, reporter=make_reporter())


@app.command("eval")
def eval_command(
    target: Path = typer.Argument(..., help="a run folder (its best.pt) or a weights file"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Validation and test perplexity of saved weights."""
    from ptbjobs.train.evaluate import evaluate_saved

    result = evaluate_saved(target, data_dir, device)
    if as_json:
        print(json.dumps(result))
    else:
        print(f"{result['weights']} (epoch {result['epoch']}): valid ppl {result['valid']:.2f}, test ppl {result['test']:.2f}")


@app.command()
def bench(
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    cell: str = typer.Option("lstm", "--cell", help="lstm or gru"),
    steps: int = typer.Option(100, "--steps", min=1, help="training steps per timed round"),
    rounds: int = typer.Option(3, "--rounds", min=1, help="timed rounds of each loop (the median is shown)"),
    fuse: int = typer.Option(0, "--fuse", min=0, max=256, help="time a fused pack of this many runs against one solo run instead"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Tokens/s of the ptbjobs training step vs a plain PyTorch reference loop, same model and data
    (with --fuse K: a fused pack of K runs, all together, vs one solo run)."""
    from ptbjobs.train.config import TrainConfig

    try:
        config = TrainConfig.from_mapping({"device": device, "cell": cell})
    except ConfigError as exc:
        raise ConfigError(None, f"{flag(exc.field)}: {exc.message}") from None
    if fuse:
        from ptbjobs.train.fuse_bench import format_fuse_result, run_fuse_bench

        fused = run_fuse_bench(config, fuse, data_dir, steps=steps, rounds=rounds)
        print(json.dumps(fused.to_dict()) if as_json else format_fuse_result(fused))
        return
    from ptbjobs.train.bench import format_result, run_bench

    result = run_bench(config, data_dir, steps=steps, rounds=rounds)
    print(json.dumps(result.to_dict()) if as_json else format_result(result))


@data_app.command("download")
def data_download(
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    mirror: list[str] = typer.Option([], "--mirror", help="another source to try first: a URL prefix of the three files, or a .tgz"),
) -> None:
    """Fetch ptb.{train,valid,test}.txt, verify their sha256, write them atomically."""
    from ptbjobs.train.ptb_download import DEFAULT_SOURCES, download
    from ptbjobs.train.ptb_files import resolve_data_dir

    folder = resolve_data_dir(data_dir)
    written = download(folder, tuple(mirror) + DEFAULT_SOURCES, log=lambda line: print(line, file=sys.stderr))
    print(f"{folder}: {'all three files verified' if not written else f'{len(written)} file(s) downloaded and verified'}")


@data_app.command("verify")
def data_verify(data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP)) -> None:
    """Check that the folder holds the canonical PTB files (sha256)."""
    from ptbjobs.train.ptb_download import verify_folder
    from ptbjobs.train.ptb_files import missing_data_hint, resolve_data_dir

    folder = resolve_data_dir(data_dir)
    checks = verify_folder(folder)
    for check in checks:
        print(f"{check.path}: {'ok' if check.ok else check.problem}")
    bad = [check for check in checks if not check.ok]
    if bad:
        raise PtbjobsError(f"{len(bad)} of 3 PTB files in {folder} are missing or not canonical",
                           missing_data_hint(folder))
