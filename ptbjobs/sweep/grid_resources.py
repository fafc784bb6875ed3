"""The [resources] and [targets] tables of a grid: what each job asks the scheduler for, and the
validation-perplexity goals the report marks. Checked as strictly as the rest of the grid: one line
naming the file, line and key for each problem."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from ptbjobs.sweep.grid_lines import KeyLocator

# Words that reach sbatch: no spaces, newlines, ';', '#', quotes or shell metacharacters. A
# constraint also needs Slurm's & | ( ) [ ] * operators: they are passed as one argv element
# (never through a shell), where they mean nothing but to Slurm.
_SAFE_WORD = re.compile(r"[A-Za-z0-9_.:+-]+")
_SAFE_CONSTRAINT = re.compile(r"[A-Za-z0-9_.:&|()\[\]*,+-]+")
_SAFE_SBATCH_OPTION = re.compile(r"--[a-z][a-z0-9-]*(=[A-Za-z0-9_.:,/@%+=-]+)?")
# sbatch options that ptbjobs and submitit set themselves: given again in extra_sbatch they would
# break the requeue before a time limit, the logs status and `logs` read, or the job arrays. Each
# with what to do instead.
_OWN_SBATCH_OPTIONS = {
    "signal": "ptbjobs asks for USR2 before the time limit itself: set timeout_min",
    "time": "set timeout_min (USR2 is asked for before it)",
    "requeue": "a time limit is requeued up to max_requeues times: set max_requeues",
    "no-requeue": "set max_requeues = 0",
    "array": "ptbjobs makes the arrays: set array_parallelism for their %N limit",
    "output": "ptbjobs writes each task's log where `ptbjobs logs` reads it: remove it",
    "error": "ptbjobs writes each task's log where `ptbjobs logs` reads it: remove it",
    "open-mode": "ptbjobs keeps each task's log across requeues: remove it",
    "wrap": "ptbjobs writes the job script: remove it",
    "parsable": "ptbjobs reads sbatch's answer itself: remove it",
    "job-name": "ptbjobs names each array after the sweep, which is how it counts the sweep's jobs and finds "
                "the array of a submit killed before it recorded it: remove it",
}


@dataclass(frozen=True)
class Resources:
    """What one job asks for. The local executor reads runs_per_gpu, cpus_per_task, timeout_min and
    max_requeues."""

    partition: str = ""  # empty: the cluster's default
    account: str = ""
    qos: str = ""
    constraint: str = ""
    gpus_per_node: int = 0
    cpus_per_task: int = 0  # 0: the executor's default
    mem_gb: float = 0.0  # 0: the cluster's default (DefMemPerCPU)
    timeout_min: int = 120
    max_requeues: int = 3
    array_parallelism: int = 0  # the sweep's runs queued or running at once, all arrays together (0: no limit)
    # jobs of this user queued or running at once, below the cluster's own limit (0: the cluster's)
    max_queued: int = 0
    runs_per_gpu: int = 1  # runs packed into one job, sharing its GPU (or splitting its CPUs)
    # each pack's runs of one shape train as one batched model in one process (train/fused.py)
    fuse: bool = False
    # a running run whose heartbeat (progress.json) is older than this shows STALLED (0: never)
    stall_after_min: float = 30.0
    extra_sbatch: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "extra_sbatch": list(self.extra_sbatch)}


@dataclass(frozen=True)
class Targets:
    """Validation-perplexity goals (Zaremba et al.'s study: below 125 without dropout, 100 with)."""

    valid_ppl_no_dropout: float = 125.0
    valid_ppl_dropout: float = 100.0


def parse_resources(table: dict, where: KeyLocator) -> Resources:
    known = {f.name: f for f in dataclasses.fields(Resources)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise where.error("resources", key, "unknown key", "valid keys: " + ", ".join(known))
        default = known[key].default if known[key].default is not dataclasses.MISSING else ()
        if isinstance(default, str):
            pattern = _SAFE_CONSTRAINT if key == "constraint" else _SAFE_WORD
            if not isinstance(value, str) or not pattern.fullmatch(value):
                raise where.error("resources", key, f"{value!r} is not a plain {key} name",
                                  "letters, digits and . _ : + - only: no spaces, newlines, ';' or '#'")
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise where.error("resources", key, f"must be true or false, got {value!r}")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise where.error("resources", key, f"must be a whole number >= 0, got {value!r}")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise where.error("resources", key, f"must be a finite number >= 0, got {value!r}")
            value = float(value)
        else:  # extra_sbatch
            if not isinstance(value, list) or not all(isinstance(v, str) and _SAFE_SBATCH_OPTION.fullmatch(v) for v in value):
                raise where.error("resources", key, f"{value!r} is not a list of --option[=value] strings",
                                  'e.g. extra_sbatch = ["--exclusive", "--mail-type=END"]; no spaces or shell characters')
            for option in value:
                name = option[2:].partition("=")[0]
                if name in _OWN_SBATCH_OPTIONS:
                    raise where.error("resources", key, f"--{name} is set by ptbjobs", _OWN_SBATCH_OPTIONS[name])
            value = tuple(value)
        values[key] = value
    if not 1 <= values.get("runs_per_gpu", 1) <= 64:
        raise where.error("resources", "runs_per_gpu", f"must be from 1 to 64, got {values['runs_per_gpu']}",
                          "a small model leaves a GPU mostly idle: 4 to 8 runs share one well")
    if values.get("fuse") and values.get("runs_per_gpu", 1) < 2:
        raise where.error("resources", "fuse", "fuses the runs of each pack, and runs_per_gpu is 1",
                          "set runs_per_gpu to the runs to train as one model (e.g. 8), or remove fuse")
    if not 1 <= values.get("timeout_min", 1) <= 366 * 24 * 60:
        raise where.error("resources", "timeout_min", f"must be from 1 minute to a year, got {values['timeout_min']}")
    return Resources(**values)


def parse_targets(table: dict, where: KeyLocator) -> Targets:
    known = [f.name for f in dataclasses.fields(Targets)]
    values = {}
    for key, value in table.items():
        if key not in known:
            raise where.error("targets", key, "unknown key", "valid keys: " + ", ".join(known))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 < value < math.inf:
            raise where.error("targets", key, f"must be a perplexity above 1, got {value!r}")
        values[key] = float(value)
    return Targets(**values)


def read_resources(grid_path: Path) -> Resources:
    """The [resources] of a sweep's grid copy, without expanding its runs (a search of many
    samples would draw them all)."""
    text = grid_path.read_text()
    return parse_resources(tomllib.loads(text).get("resources", {}), KeyLocator(grid_path, text))
