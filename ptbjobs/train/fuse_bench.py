"""`ptbjobs bench --fuse K`: the tokens/s of a fused pack of K runs (all runs together) against
one solo run's, both timed in this process on the same data, in alternating rounds."""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ptbjobs.train.bench import scratch_run, time_trainer, timed
from ptbjobs.train.config import TrainConfig
from ptbjobs.train.corpus import load_corpus
from ptbjobs.train.pack import PackTrainer
from ptbjobs.train.trainer import Trainer


@dataclass
class FuseBenchResult:
    config: TrainConfig
    runs: int
    device: str
    threads: int
    steps: int
    solo: list[float] = field(default_factory=list)  # tokens/s per round
    fused: list[float] = field(default_factory=list)  # tokens/s of all the pack's runs together, per round

    @property
    def ratio(self) -> float:
        return statistics.median(self.fused) / statistics.median(self.solo)

    def to_dict(self) -> dict:
        return {"device": self.device, "threads": self.threads, "torch": torch.__version__, "runs": self.runs,
                "cell": self.config.cell.value, "steps_per_round": self.steps,
                "solo_tokens_per_s": statistics.median(self.solo), "fused_tokens_per_s": statistics.median(self.fused),
                "ratio": self.ratio, "solo_rounds": self.solo, "fused_rounds": self.fused}


def run_fuse_bench(config: TrainConfig, runs: int, data_dir: Path | str | None = None, steps: int = 100,
                   warmup: int = 20, rounds: int = 3) -> FuseBenchResult:
    """Seeds 1..runs for the pack; the solo run is seed 1 with the solo trainer's own step (a CUDA
    graph on a GPU)."""
    corpus = load_corpus(data_dir)
    config = config.replace(checkpoint_every_min=0, checkpoint_every_steps=0, max_steps=0)
    with tempfile.TemporaryDirectory(prefix="ptbjobs-bench-") as scratch:
        solo = Trainer(config, corpus, scratch_run(Path(scratch) / "solo"))
        pack = PackTrainer([Trainer(config.replace(seed=seed), corpus, scratch_run(Path(scratch) / f"fused-{seed}"),
                                    solo_step=False) for seed in range(1, runs + 1)])
        result = FuseBenchResult(config, runs, str(solo.device), torch.get_num_threads(), steps)
        time_trainer(solo, warmup)
        _time_pack(pack, warmup)
        for _ in range(rounds):
            result.solo.append(time_trainer(solo, steps))
            result.fused.append(_time_pack(pack, steps))
    return result


def _time_pack(pack: PackTrainer, steps: int) -> float:
    """tokens/s of `steps` steps of the pack, its runs' tokens added up."""
    first = pack.trainers[0]
    if first.chunk + steps > first.chunks_per_epoch:
        for trainer in pack.trainers:
            trainer.chunk = 0  # wrap around: a fresh epoch
    before = first.epoch_tokens if first.chunk else 0

    def work() -> int:
        pack.run_steps(steps)
        return (first.epoch_tokens - before) * len(pack.trainers)

    return timed(first.device, work)


def format_fuse_result(result: FuseBenchResult) -> str:
    c = result.config
    solo, fused = statistics.median(result.solo), statistics.median(result.fused)
    return "\n".join([
        f"ptbjobs bench --fuse {result.runs}: {c.cell.value.upper()} {c.num_layers}x{c.hidden_size}, bptt {c.bptt}, "
        f"batch {c.batch_size}, on {result.device} ({result.threads} threads), torch {torch.__version__}; "
        f"median of {len(result.solo)} rounds x {result.steps} steps",
        f"  one solo run      {solo:>12,.0f} tokens/s",
        f"  fused pack of {result.runs:<3} {fused:>12,.0f} tokens/s in all ({fused / result.runs:,.0f} per run)",
        f"  ratio             {result.ratio:>12.2f}x",
    ])
