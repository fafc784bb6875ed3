"""What one Slurm array task runs: a run folder, trained to the end or to its next requeue.

Kept apart from the executor so that submitting, asking and cancelling never import submitit's job
machinery, and so that the pickled call names a small importable class.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import submitit


class CheckpointableRun(submitit.helpers.Checkpointable):
    """What a Slurm task runs: one run folder, trained to the end or to the next requeue."""

    def __call__(self, run_dir: str) -> dict[str, Any]:
        from ptbjobs.job import run_job
        from ptbjobs.train import TrainingInterrupted

        _use_allocated_cpus()
        try:
            return run_job(Path(run_dir))
        except TrainingInterrupted as exc:
            if signal.SIGUSR2 in exc.signals and signal.SIGTERM not in exc.signals:
                # (TERM as well means a cancel, or Slurm's own requeue on preemption: no requeue of ours.)
                # The runner caught USR2 and saved the state at a step boundary (the trainer's weights
                # are never half-updated in the checkpoint); now let submitit's own USR2 handler, which
                # the runner put back, do what it does: count the timeout, pickle `checkpoint()`'s call
                # and `scontrol requeue` this task. It exits the process.
                handler = signal.getsignal(signal.SIGUSR2)
                if callable(handler):
                    handler(signal.SIGUSR2, None)
            raise

    # submitit's Checkpointable.checkpoint returns the same call with the same run folder: the
    # state lives in the folder's checkpoints, so nothing else needs pickling.


def _use_allocated_cpus() -> None:
    """One torch thread per CPU Slurm gave the task, not one per CPU of the node."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("SLURM_JOB_CPUS_PER_NODE", "")
    if cpus.isdigit() and int(cpus) > 0:
        import torch

        torch.set_num_threads(int(cpus))
