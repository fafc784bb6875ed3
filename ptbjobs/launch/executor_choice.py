"""Which executor a command uses: the one named, else the sweep's own, else Slurm where there is
one, else the local machine."""

from __future__ import annotations

from ptbjobs.core.errors import ConfigError, PtbjobsError
from ptbjobs.executors import slurm_commands
from ptbjobs.executors.base import Executor
from ptbjobs.sweep.folder import Sweep


def get_executor(name: str, max_parallel: int | None = None, submitting: bool = True,
                 sweep: Sweep | None = None) -> Executor:
    """"auto" is the executor of the sweep's last submission, if it has one (a sweep run locally
    stays local, as `retry` keeps each run's executor); else Slurm where sbatch is on PATH, else the
    local machine. With `submitting` False (asking about jobs, reading their logs), Slurm's
    executor is given even without sbatch."""
    if name == "auto":
        kept = last_executor(sweep) if sweep is not None else None
        if kept == "slurm" and submitting and not slurm_commands.have_slurm():
            raise PtbjobsError(f"--executor auto: the sweep {sweep.path} runs on Slurm, and sbatch is not on PATH",
                               "run on the cluster's login node, or give --executor local to run the rest here")
        name = kept or ("slurm" if slurm_commands.have_slurm() else "local")
    if name == "local":
        from ptbjobs.executors.local import LocalExecutor

        return LocalExecutor(max_parallel)
    if name == "slurm":
        if submitting and not slurm_commands.have_slurm():
            raise PtbjobsError("--executor slurm: sbatch is not on PATH",
                               "run on a cluster's login node, or bring up a local cluster: sudo bash slurm/up.sh")
        if max_parallel is not None:
            raise ConfigError(None, "--max-parallel is for the local executor",
                              "on Slurm, set array_parallelism in the grid's [resources]")
        from ptbjobs.executors.slurm import SlurmExecutor  # imports submitit: only where it is used

        return SlurmExecutor()
    raise ConfigError(None, f"--executor: must be auto, local or slurm, got {name!r}")


def last_executor(sweep: Sweep) -> str | None:
    """The executor the sweep's most recent job went to, or None for a sweep with no jobs yet."""
    jobs = [job for entry in sweep.read_manifest()["runs"].values() for job in entry.get("jobs", [])]
    return max(jobs, key=lambda job: job["submitted"])["executor"] if jobs else None
