"""From a sweep's run folders to the results table: one row per run-epoch, one per run, one per
variant (the runs that differ only in their seed).

A run counts once it has its final record (test perplexity at the best-validation epoch); runs still
going, failed or cut short are listed as incomplete, runs whose loss became NaN or infinite as
diverged (with the epoch), and both are left out of the aggregates unless asked.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ptbjobs.core import states
from ptbjobs.core.errors import ConfigError, PtbjobsError, first_line
from ptbjobs.sweep.folder import Sweep, run_config
from ptbjobs.sweep.grid import Targets, parse_grid
from ptbjobs.train.config import FIELD_DEFAULTS, RESUME_NEUTRAL_FIELDS
from ptbjobs.train.run_dir import DamagedFile, RunDir

PTB_VOCAB = 10_000
# Zaremba et al. (2014), small non-regularised LSTM: the row shown beside the matching variant
ZAREMBA_SMALL = {"valid_ppl": 120.7, "test_ppl": 114.5, "source": "Zaremba et al. (2014) small"}
# Fields that never define a variant: the seed is folded, execution details do not change results
_NOT_A_VARIANT = RESUME_NEUTRAL_FIELDS | {"seed", "max_steps"}
_SIZE_FIELDS = {"emb_size", "hidden_size", "num_layers"}
# In a variant's label wherever it is on (a rate: with its value), even where every run has it
_NAMED_WHEN_ON = {"tie_weights": "tied", "variational_dropout": "variational", "recurrent_dropout": "recurrent dropout",
                  "word_dropout": "word dropout", "weight_decay": "weight decay"}
# the published 2 x 200 results `report --references` shows: package data, found wherever ptbjobs is installed
REFERENCES_RESOURCE = "references.csv"
# the trainer's DivergedError message, which state.json keeps: "training diverged: loss is nan at epoch 4, step ..."
_DIVERGED_AT = re.compile(r"\bat epoch (\d+)\b")
EPOCH_COLUMNS = ("key", "epoch", "lr", "train_ppl", "valid_ppl", "tokens_per_s", "elapsed_s", "steps")


@dataclass
class SweepData:
    epochs: pd.DataFrame  # one row per run-epoch: key, epoch, lr, train_ppl, valid_ppl, elapsed_s, ...
    runs: pd.DataFrame  # one row per run: key, config fields, complete, final numbers
    variant_fields: list[str]  # the config fields that tell variants apart (cell, dropout, ...)
    targets: Targets
    name: str
    damaged: dict[str, str] = field(default_factory=dict)  # run key -> which file cannot be read, and why
    diverged: dict[str, int] = field(default_factory=dict)  # run key -> the epoch its loss became NaN or infinite


def load_sweep(sweep: Sweep) -> SweepData:
    manifest = sweep.read_manifest()
    targets = Targets()
    if sweep.grid_path.is_file():
        targets = parse_grid(sweep.grid_path.read_text(), sweep.grid_path).targets
    # the epochs as columns, not a dict per epoch: a sweep of 100,000 runs has 1.3 million of them
    epoch_columns: dict[str, list] = {name: [] for name in EPOCH_COLUMNS}
    run_rows, damaged, diverged = [], {}, {}
    for key, entry in manifest["runs"].items():
        run = RunDir(sweep.run_dir(key))
        try:  # a run whose files cannot be read is left out, and named; the others are reported
            records = run.read_metrics()
            final = records[-1] if records and records[-1].get("final") else None
            # a run that finished says all in its final record; state.json only for the others
            state = {} if final and not final.get("truncated") else run.read_state() or {}
        except DamagedFile as exc:
            damaged[key] = f"{exc.path} {exc.problem}"
            continue
        epochs = [r for r in records if "epoch" in r]
        for record in epochs:
            record["key"] = key
            for name, column in epoch_columns.items():
                column.append(record.get(name))
        run_rows.append(_run_row(key, run_config(manifest, entry), epochs, final, state.get("device")))
        if state.get("state") == states.DIVERGED and not run_rows[-1]["complete"]:
            diverged[key] = diverged_epoch(state, epochs)
    runs = pd.DataFrame(run_rows)
    epochs_frame = pd.DataFrame(epoch_columns)
    if epochs_frame.empty:
        raise PtbjobsError(f"no run of {sweep.path} has finished an epoch yet",
                           "wait for the first epochs (see `ptbjobs status`)")
    return SweepData(epochs=epochs_frame, runs=runs, variant_fields=_variant_fields(runs),
                     targets=targets, name=manifest.get("name", sweep.path.name), damaged=damaged,
                     diverged=diverged)


def diverged_epoch(state: dict[str, Any], epochs: list[dict]) -> int:
    """The epoch a diverged run was in when its loss became NaN or infinite: the one its state.json
    message names, else the one after its last recorded epoch (a diverged epoch is never recorded)."""
    found = _DIVERGED_AT.search(str(state.get("message", "")))
    return int(found.group(1)) if found else max((int(r["epoch"]) for r in epochs), default=0) + 1


def _run_row(key: str, config: dict[str, Any], epochs: list[dict], final: dict | None,
             device: str | None) -> dict[str, Any]:
    complete = final is not None and not final.get("truncated", False)
    best = min(epochs, key=lambda r: r["valid_ppl"]) if epochs else None
    hours = (final or (epochs[-1] if epochs else {})).get("elapsed_s", 0.0) / 3600
    # the final record says where the run ended; state.json where an unfinished one last ran
    on_gpu = ((final or {}).get("device") or device) == "cuda"
    return {
        "key": key, **config, "complete": complete, "epochs_done": len(epochs),
        "final_train_ppl": epochs[-1]["train_ppl"] if epochs else math.nan,
        "min_valid_ppl": best["valid_ppl"] if best else math.nan,
        "min_valid_epoch": best["epoch"] if best else math.nan,
        # the run measures test once, with the weights of its best validation epoch
        "test_ppl": final["test_ppl"] if final else math.nan,
        "gpu_hours": hours if on_gpu else 0.0, "cpu_hours": 0.0 if on_gpu else hours,
        "parameters": parameter_count(config, (final or {}).get("vocab_size", PTB_VOCAB)),
    }


def _variant_fields(runs: pd.DataFrame) -> list[str]:
    """cell and dropout always; then tied weights, variational or recurrent dropout wherever a run has them;
    then a model size wherever it varies in the sweep (like tied weights in a pilot, a size may be
    tried at rates of its own, which no other run shares); then any other config field that still
    varies among runs of the same cell and dropout (a field set per cell, like the GRU's own lr, or
    per rate, like a longer schedule with dropout, adds nothing)."""
    fields = ["cell", "dropout"]
    for name in FIELD_DEFAULTS:
        if name in fields or name in _NOT_A_VARIANT:
            continue
        if name in _NAMED_WHEN_ON and runs[name].astype(bool).any():
            fields.append(name)  # "tied" says what a figure shows, even where every run is tied
        elif name in _SIZE_FIELDS and runs[name].astype(str).nunique() > 1:
            fields.append(name)
        elif (runs.groupby(fields)[name].agg(lambda values: values.astype(str).nunique()) > 1).any():
            fields.append(name)
    return fields


def parameter_count(config: dict[str, Any], vocab: int = PTB_VOCAB) -> int:
    """Trainable parameters as PyTorch counts them: two bias vectors per gate in each recurrent
    layer (an LSTM layer of 200 on 200 inputs: 321,600; the single-bias count would be 320,800);
    a tied embedding counted once."""
    gates = 4 if config["cell"] == "lstm" else 3
    hidden, emb = config["hidden_size"], config["emb_size"]
    recurrent = sum(gates * ((emb if i == 0 else hidden) * hidden + hidden * hidden + 2 * hidden)
                    for i in range(config["num_layers"]))
    decoder = (0 if config["tie_weights"] else hidden * vocab) + vocab
    return vocab * emb + recurrent + decoder


def variant_label(row: pd.Series | dict[str, Any], fields: list[str]) -> str:
    parts = [f"{str(row['cell']).upper()}", f"dropout {row['dropout']:g}"]
    for name in fields[2:]:
        value = row[name]
        if name in _NAMED_WHEN_ON:
            if value:
                parts.append(_NAMED_WHEN_ON[name] + ("" if isinstance(value, (bool, np.bool_)) else f" {value:g}"))
        elif isinstance(value, (bool, np.bool_)):
            if value:
                parts.append(name)
        else:
            parts.append(f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}")
    return ", ".join(parts)


def target_for(dropout: float, targets: Targets) -> float:
    return targets.valid_ppl_dropout if dropout > 0 else targets.valid_ppl_no_dropout


def results_table(data: SweepData, include_incomplete: bool = False) -> pd.DataFrame:
    """One row per variant: seeds, mean and std of final train, min valid and test perplexity,
    the epoch of the minimum, the target and whether the mean meets it, compute, parameters."""
    runs = data.runs if include_incomplete else data.runs[data.runs["complete"]]
    runs = runs[runs["epochs_done"] > 0]
    rows = []
    for _, group in runs.groupby(data.variant_fields, sort=False, dropna=False):
        first = group.iloc[0]
        target = target_for(first["dropout"], data.targets)
        row = {"variant": variant_label(first, data.variant_fields),
               **{name: first[name] for name in data.variant_fields},
               "seeds": len(group), "finished": int(group["complete"].sum())}
        for column in ("final_train_ppl", "min_valid_ppl", "test_ppl"):
            row[f"{column}_mean"] = group[column].mean()
            row[f"{column}_std"] = group[column].std(ddof=1) if len(group) > 1 else math.nan
        row["min_valid_epoch"] = ", ".join(str(int(e)) for e in group["min_valid_epoch"])
        row["target_valid_ppl"] = target
        row["target_met"] = bool(row["min_valid_ppl_mean"] < target)
        row["gpu_hours"] = group["gpu_hours"].sum()
        row["cpu_hours"] = group["cpu_hours"].sum()
        row["parameters"] = int(first["parameters"])
        row["reference"] = _reference_for(first)
        # with --include-incomplete: the epochs of the variant's runs that diverged, "" where none did
        row["diverged_epochs"] = ", ".join(str(data.diverged[key]) for key in group["key"] if key in data.diverged)
        rows.append(row)
    return pd.DataFrame(rows)


def _reference_for(run: pd.Series) -> str:
    """Zaremba's small model where the variant is that model: LSTM 2 x 200, no dropout, untied."""
    faithful = (run["cell"] == "lstm" and run["dropout"] == 0 and run["num_layers"] == 2 and run["hidden_size"] == 200
                and run["emb_size"] == 200 and not run["tie_weights"])
    return f"{ZAREMBA_SMALL['valid_ppl']} / {ZAREMBA_SMALL['test_ppl']}" if faithful else ""


def incomplete_runs(data: SweepData) -> list[str]:
    """Runs not (yet) finished: still going, failed or cut short; not the diverged ones."""
    runs = data.runs
    return runs.loc[~runs["complete"].astype(bool) & ~runs["key"].isin(list(data.diverged)), "key"].tolist()


def published_references() -> pd.DataFrame:
    """`--references`: the published 2 x 200 results shipped in the package (ptbjobs/analysis/references.csv)."""
    from importlib.resources import files

    shipped = files("ptbjobs.analysis").joinpath(REFERENCES_RESOURCE)
    try:
        with shipped.open("r", encoding="utf-8") as handle:
            return pd.read_csv(handle, comment="#")
    except FileNotFoundError:
        raise PtbjobsError(f"--references: ptbjobs/analysis/{REFERENCES_RESOURCE} is missing from this installation",
                           "reinstall ptbjobs, or give a CSV of references with --references-file") from None


def load_references(path: Path | str) -> pd.DataFrame:
    """`--references-file`: a CSV of references; an error names the path as the user gave it."""
    try:
        return pd.read_csv(Path(path), comment="#")
    except FileNotFoundError:
        raise ConfigError(None, f"--references-file: no file at {path}", "give the path of a CSV of references") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:  # a folder, a malformed CSV, binary
        raise ConfigError(None, f"--references-file {path}: not a readable CSV of references ({first_line(exc)})") from None


def to_json_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-able dicts, NaN as null."""
    return json.loads(frame.to_json(orient="records"))
