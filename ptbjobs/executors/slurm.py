"""The Slurm executor: a sweep's runs as Slurm job arrays, through submitit.

    <sweep>/slurm/
      <array id>/          submitit's folder per job array (or plain job): the array's pickled calls
                           (<array id>_array.pkl, linked as each task's <job id>_submitted.pkl),
                           each task's <job id>_0_log.out
      cancelled.json       array tasks `ptbjobs cancel` cancelled (a pending task cancelled before
                           it started leaves no trace in sacct)
      last_states.json     what Slurm last said of every job: shown when the controller is down

Runs with equal resources (all the runs of one submit) go out as one job array per MaxArraySize
tasks, a task per run, or per pack of `runs_per_gpu` runs. Each task is a `CheckpointableRun` (slurm_tasks.py): on USR2 (Slurm's warning before the time limit, or a
preemption where the cluster sends it) the trainer saves its exact state at the next step boundary,
then submitit requeues the task, which resumes from that state, up to `max_requeues` time limits.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from ptbjobs.core import states
from ptbjobs.core.atomic import atomic_write_json, flush_filesystem, read_json_if_any, replace_unsynced
from ptbjobs.core.errors import PtbjobsError
from ptbjobs.core.interrupts import interrupt_held
from ptbjobs.executors import slurm_answers, slurm_commands, slurm_limits, slurm_refusals
from ptbjobs.executors.base import Executor, JobStates, PartialSubmission, SendLedger
from ptbjobs.sweep.folder import Sweep
from ptbjobs.sweep.grid import Resources

# USR2 is asked for this long before the time limit (submitit's default). slurmctld looks at time
# limits every 30 s and sends the warning at the first look within delay + 30 s of the end, so it
# comes up to 30 s earlier than asked. A short limit gets a quarter of it: with one minute, USR2
# comes 15 to 45 s in, never before the run has started, and always a look (30 s) before the kill.
SIGNAL_DELAY_S = 90
LIMITS_KEPT_S = 600.0  # the cluster's limits are asked again after this long
NOTHING_SENT_HINT = "nothing was submitted; try again when Slurm answers (scontrol ping)"


def sbatch_parameters(resources: Resources, job_name: str, array_size_limit: int) -> dict[str, Any]:
    """The grid's [resources] as submitit's SlurmExecutor parameters."""
    timeout_s = resources.timeout_min * 60
    params: dict[str, Any] = {
        "job_name": job_name,
        "time": int(resources.timeout_min),  # integer minutes: submitit mis-reads "HH:MM:SS" strings
        "signal_delay_s": min(SIGNAL_DELAY_S, max(10, timeout_s // 4)),
        "array_parallelism": resources.array_parallelism or array_size_limit,
        "wckey": "",
        "stderr_to_stdout": True,
    }
    for name in ("partition", "account", "qos", "constraint"):
        if getattr(resources, name):
            params[name] = getattr(resources, name)
    if resources.gpus_per_node:
        params["gpus_per_node"] = resources.gpus_per_node
    if resources.cpus_per_task:
        params["cpus_per_task"] = resources.cpus_per_task
    if resources.mem_gb:
        params["mem"] = f"{max(1, round(resources.mem_gb * 1024))}M"
    extra = {}
    for option in resources.extra_sbatch:
        name, _, value = option.lstrip("-").partition("=")
        extra[name] = value if value else True
    if extra:
        params["additional_parameters"] = extra
    return params


class SlurmExecutor(Executor):
    name = "slurm"

    def submit(self, sweep: Sweep, keys: list[str], resources: Resources,
               ledger: SendLedger | None = None) -> dict[str, str]:
        """One job array per MaxArraySize runs; returns run key -> job id ("123_4"). Returns as soon
        as sbatch has accepted them. Each array carries its batch token in its job name
        (`ptbjobs-<sweep>:<token>`), where `find_sent` looks for it after a kill."""
        import submitit  # here, not at the top: status and cancel need none of it

        from ptbjobs.executors.slurm_tasks import CheckpointableRun, PackedRuns

        limit = self.limits(sweep, resources).max_array_size
        executor = submitit.SlurmExecutor(folder=_folder(sweep) / "%A", max_num_timeout=resources.max_requeues)
        try:
            executor.update_parameters(**sbatch_parameters(resources, job_name(sweep), limit))
        except ValueError as exc:
            raise PtbjobsError(f"[resources]: submitit refused them: {str(exc).splitlines()[0]}") from None
        size = resources.runs_per_gpu
        packs = _packs(keys, size)
        root = sweep.path.resolve()  # once: resolving 100,000 run folders one by one costs seconds
        run_dirs = {key: os.path.join(root, key) for key in keys}
        ids: dict[str, str] = {}
        for start in range(0, len(packs), limit):
            if interrupt_held():  # Ctrl-C or TERM while sending: what went out is kept, no more goes
                raise PartialSubmission(f"interrupted: {len(ids)} of {len(keys)} runs were submitted before it", ids,
                                        "`ptbjobs submit` again sends the rest")
            chunk = packs[start:start + limit]
            calls = [submitit.helpers.DelayedSubmission(CheckpointableRun(), run_dirs[pack[0]]) if size == 1 else
                     submitit.helpers.DelayedSubmission(PackedRuns(resources.fuse), [run_dirs[key] for key in pack])
                     for pack in chunk]
            token = secrets.token_hex(4)
            if ledger:
                ledger.sending(token, [key for pack in chunk for key in pack], size)
            executor.update_parameters(job_name=f"{job_name(sweep)}:{token}")
            try:
                # submitit prints sbatch's stderr itself before raising: the error below says it once
                with contextlib.redirect_stderr(io.StringIO()):
                    job_ids = submit_array(executor, calls)
            except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError, OSError,
                    RuntimeError) as exc:
                # the batch stays marked as being sent: the next send asks Slurm whether it went out
                done = f" ({len(ids)} runs were submitted before it)" if ids else ""
                message, hint = slurm_refusals.explain(str(exc), resources)
                raise PartialSubmission(message + done, ids, hint) from None
            sent = _ids_of_runs(chunk, job_ids)
            if ledger:
                ledger.sent(token, sent)
            ids.update(sent)
        return ids

    def find_sent(self, sweep: Sweep, token: str, keys: list[str], per_job: int, since: float) -> dict[str, str]:
        """The array named with the batch's token, from squeue (or sacct, where it has ended and
        left the queue): its tasks in the order of the batch's runs, packed by runs_per_gpu."""
        try:
            found = slurm_limits.job_named(f"{job_name(sweep)}:{token}", since)
        except slurm_commands.SlurmUnavailable as exc:
            raise PtbjobsError(f"cannot tell whether {len(keys)} runs a killed submit was sending went out "
                               f"({exc.message})", NOTHING_SENT_HINT) from None
        if found is None:
            return {}
        packs = _packs(keys, per_job)
        return _ids_of_runs(packs, [found] if len(packs) == 1 else [f"{found}_{index}" for index in range(len(packs))])

    def limits(self, sweep: Sweep, resources: Resources) -> slurm_limits.ClusterLimits:
        """The cluster's limits, asked at most every LIMITS_KEPT_S (they are a site's settings)."""
        path = _folder(sweep) / "limits.json"
        kept = read_json_if_any(path)
        if isinstance(kept, dict) and time.time() - kept.get("time", 0) < LIMITS_KEPT_S and kept.get("qos") == resources.qos:
            return slurm_limits.ClusterLimits(**kept["limits"])
        try:
            limits = slurm_limits.cluster_limits(resources.qos)
        except slurm_commands.SlurmUnavailable as exc:
            raise PtbjobsError(f"cannot read the cluster's limits ({exc.message})",
                               NOTHING_SENT_HINT) from None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, {"time": time.time(), "qos": resources.qos, "limits": limits.__dict__})
        except OSError:
            pass  # a cache
        return limits

    def room(self, sweep: Sweep, resources: Resources) -> int | None:
        """How many more runs may go out now: the user's jobs below MaxSubmitJobs (the
        association's, the QOS's, or the grid's max_queued, the smallest), every job below the
        cluster's MaxJobCount, and the sweep's own below array_parallelism; a pack of runs_per_gpu
        runs is one job. One squeue call."""
        limits = self.limits(sweep, resources)
        try:
            census = slurm_limits.queue_census(job_name(sweep))
        except slurm_commands.SlurmUnavailable as exc:
            raise PtbjobsError(f"cannot count the jobs queued ({exc.message})",
                               NOTHING_SENT_HINT) from None
        caps = [cap - held for cap, held in ((limits.max_submit_jobs, census.user_active),
                                             (resources.max_queued, census.user_active),
                                             (limits.max_job_count, census.held),
                                             (resources.array_parallelism, census.named_active)) if cap]
        return max(0, min(caps)) * resources.runs_per_gpu if caps else None

    def feeder_possible(self, sweep: Sweep, resources: Resources) -> bool:
        """The feeder holds one of the user's slots: under a limit of 1 it would hold the only one,
        and the runs would wait for ever."""
        limits = self.limits(sweep, resources)
        caps = [cap for cap in (limits.max_submit_jobs, resources.max_queued, limits.max_job_count) if cap]
        return not caps or min(caps) >= 2

    def feeder_alive(self, sweep: Sweep) -> bool:
        feeder = read_json_if_any(_folder(sweep) / "feeder.json") or {}
        if not feeder.get("job_id"):
            return False
        try:
            held = slurm_commands.squeue_states([feeder["job_id"]])
        except slurm_commands.SlurmUnavailable:
            return True  # cannot tell: never a second feeder on a guess
        return states.is_active(held.get(feeder["job_id"], states.COMPLETED))

    def start_feeder(self, sweep: Sweep, resources: Resources) -> None:
        """The feeder: a job of one CPU that sends the runs waiting for room (`ptbjobs feed
        --as-feeder`), then requeues itself while any still wait. A requeued job waits out the
        credential lifetime (2 minutes by default) before it starts again: one look per couple of
        minutes, holding one slot of the user's allowance, pending nearly all the time."""
        folder = _folder(sweep)
        options = [f"--job-name=ptbjobs-feed-{sweep.path.name}", "--ntasks=1", "--cpus-per-task=1", "--mem=500M",
                   "--time=10", "--requeue", f"--output={folder.resolve() / 'feeder.log'}", "--open-mode=append"]
        options += [f"--{name}={getattr(resources, name)}" for name in ("partition", "account", "qos") if getattr(resources, name)]
        command = f"{shlex.quote(sys.executable)} -m ptbjobs feed --sweep-dir {shlex.quote(str(sweep.path.resolve()))} --as-feeder"
        try:
            job_id = slurm_commands.sbatch(options, command)
        except slurm_commands.SlurmUnavailable as exc:
            raise PtbjobsError(f"could not queue the sweep's feeder ({exc.message})",
                               "the waiting runs go out when a run ends, or at the next `ptbjobs submit`") from None
        atomic_write_json(folder / "feeder.json", {"job_id": job_id, "submitted": time.time()})

    def query(self, sweep: Sweep, job_ids: list[str], max_age_s: float = 0.0) -> JobStates:
        """Every job's state in one sacct call (plus one squeue call for jobs sacct does not list
        yet), or the sweep's last answer where it is younger than `max_age_s` (slurm_answers.py);
        the last known states, marked stale, when Slurm does not answer."""
        if not job_ids:
            return JobStates({})
        folder = _folder(sweep)
        answer = slurm_answers.shared_answer(folder, job_ids, max_age_s, slurm_commands.job_states)
        slow = answer.slow_note()
        if answer.failure is not None:
            last = read_json_if_any(folder / "last_states.json") or {}
            failure = f"Slurm did not answer ({answer.failure})"
            return JobStates({j: last.get(j, states.UNKNOWN) for j in job_ids},
                             note="; ".join(filter(None, [f"{failure}: showing the last known states", slow])),
                             stale=failure)
        report = slurm_commands.StateReport({j: answer.states[j] for j in job_ids if j in answer.states},
                                            "; ".join(filter(None, [answer.note, slow])) or None, answer.attempts)
        found = report.states
        cancelled = set(read_json_if_any(folder / "cancelled.json") or [])
        result = {}
        for job_id in job_ids:
            state = found.get(job_id)
            if job_id in cancelled and state in (None, states.PENDING):
                # a pending array task cancelled before it started has no record of its own, and
                # accounting may still list it in its array's stale "PENDING" range
                state = states.CANCELLED
            result[job_id] = state or states.LOST
        _remember(folder / "last_states.json", result)
        return JobStates(result, note=report.note, attempts={j: n for j, n in report.attempts.items() if n > 1})

    def still_held(self, sweep: Sweep, job_ids: list[str]) -> dict[str, str]:
        """squeue's word on jobs accounting calls ended. After a node failure the controller
        requeues a job at once, while sacct says NODE_FAIL for some seconds more: resubmitting
        then would start a second job for the run."""
        if not job_ids:
            return {}
        try:
            held = slurm_commands.squeue_states(job_ids)
        except slurm_commands.SlurmUnavailable as exc:
            raise PtbjobsError(f"squeue could not confirm that the jobs to resubmit have ended ({exc.message})",
                               NOTHING_SENT_HINT) from None
        return {j: held[j] for j in job_ids if j in held and states.is_active(held[j])}

    def cancel(self, sweep: Sweep, job_ids: list[str]) -> None:
        """scancel each job or array task; a running one gets SIGTERM and saves its state first.
        Only what scancel accepted is recorded as cancelled."""
        folder = _folder(sweep)
        before = set(read_json_if_any(folder / "cancelled.json") or [])
        # written before scancel: a task scancel stops before it starts leaves no other trace, so
        # a cancel killed right after scancel must find it recorded already
        _record_cancelled(folder, before | set(job_ids))
        slurm_answers.forget(folder)  # a status right after the cancel must not show the jobs still running
        try:
            slurm_commands.scancel(job_ids)
        except slurm_commands.CancelRefused as exc:
            # what scancel refused is still queued or running: recorded as cancelled, a pending
            # task would read CANCELLED and `retry` would start a second job for its run
            _record_cancelled(folder, before | set(exc.accepted))
            raise PtbjobsError(f"{exc.message}; those jobs were not cancelled",
                               "run `ptbjobs cancel` again once `scontrol ping` answers") from None

    def log_paths(self, sweep: Sweep, key: str, job_ids: list[str]) -> list[Path]:
        # per attempt: a packed run's own log in its folder (when it has one), then the task's log
        # (the run's lines for a task of one run; for a pack, how the pack ended, and submitit's)
        paths = []
        for job_id in job_ids:
            own = sweep.run_dir(key) / "logs" / f"{job_id}.log"
            paths += ([own] if own.exists() else []) + [task_folder(sweep, job_id) / f"{job_id}_0_log.out"]
        return paths


    @staticmethod
    def split_attempts(log_text: str) -> list[str]:
        # each start of a task (the first, and each after a requeue) opens with submitit's line
        # "submitit INFO (...) - Starting with JobEnvironment(job_id=..., ...)"
        return _split_before(log_text, "Starting with JobEnvironment(")


def submit_array(executor: Any, calls: list[Any]) -> list[str]:
    """Submit `calls` (submitit DelayedSubmissions of Checkpointable callables) as one job array
    through submitit's executor, whose folder is per array (`%A`); returns the tasks' job ids. A
    single call goes out as submitit sends it (a plain job).

    An array's calls go into one pickle (`ArrayTasks`: task i runs call i), and each task's pickle,
    where submitit's task loader looks, is a hard link to it, made once sbatch has answered (a task
    that starts first waits for it, as with submitit's own batches). submitit's batch pickles each
    call to a temp file and moves it into a folder of its own: about 0.35 ms and two new files a
    task, over a minute of a 100,000-run submit on a slow disk; a link is one directory entry."""
    import pickle

    import submitit

    from ptbjobs.executors.slurm_tasks import ArrayTasks

    if len(calls) == 1:
        with executor.batch():
            job = executor.submit(calls[0].function, *calls[0].args)
        return [job.job_id]
    array = submitit.SlurmExecutor(executor.folder, executor.max_num_timeout)
    array.update_parameters(**executor.parameters)
    array.parameters["map_count"] = len(calls)
    first = array._submit_command(array._submitit_command_str)  # sbatch; creates the array's folder
    folder = Path(str(executor.folder).replace("%A", first.job_id))
    whole = submitit.helpers.DelayedSubmission(ArrayTasks(), [(call.function, call.args) for call in calls])
    whole.set_timeout(executor.parameters.get("time", 5), executor.max_num_timeout)
    shared = folder / f"{first.job_id}_array.pkl"
    payload = pickle.dumps(whole, pickle.HIGHEST_PROTOCOL)
    replace_unsynced(shared, payload)
    job_ids = [f"{first.job_id}_{index}" for index in range(len(calls))]
    for job_id in job_ids:
        try:
            os.link(shared, folder / f"{job_id}_submitted.pkl")
        except OSError:  # a filesystem without hard links: a copy for each task
            replace_unsynced(folder / f"{job_id}_submitted.pkl", payload)
    flush_filesystem(folder)
    return job_ids


def _packs(keys: list[str], size: int) -> list[list[str]]:
    """The runs in jobs of `size` (runs_per_gpu: each task trains a pack of runs side by side)."""
    return [keys[i:i + size] for i in range(0, len(keys), size)]


def _ids_of_runs(packs: list[list[str]], job_ids: list[str]) -> dict[str, str]:
    """Run key -> the job id of its pack."""
    return {key: job_id for pack, job_id in zip(packs, job_ids) for key in pack}


def task_folder(sweep: Sweep, job_id: str) -> Path:
    """submitit's folder of a job: one per array (`<array id>/`), or, for sweeps submitted before
    that, one per array task (`<job id>/`)."""
    own = _folder(sweep) / job_id
    return own if own.is_dir() else _folder(sweep) / job_id.split("_")[0]


def _split_before(text: str, marker: str) -> list[str]:
    """`text` cut before each line holding `marker`, but the first (what comes before it stays with it)."""
    parts, current, started = [], [], False
    for line in text.splitlines(keepends=True):
        if marker in line:
            if started:
                parts.append("".join(current))
                current = []
            started = True
        current.append(line)
    return parts + ["".join(current)]


def job_name(sweep: Sweep) -> str:
    """Every job of a sweep carries its name (how `room` counts the sweep's own jobs in squeue)."""
    return f"ptbjobs-{sweep.path.name}"


def _folder(sweep: Sweep) -> Path:
    return sweep.path / "slurm"


def _record_cancelled(folder: Path, job_ids: set[str]) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "cancelled.json", sorted(job_ids))
    except OSError as exc:
        raise PtbjobsError(f"cannot write {folder / 'cancelled.json'}: {exc.strerror}",
                           "cancel from an account that can write the sweep folder") from None


def _remember(path: Path, found: dict[str, str]) -> None:
    """Merge into the last known states (a sweep's jobs may be asked about a few at a time)."""
    known = read_json_if_any(path) or {}
    if all(known.get(k) == v for k, v in found.items()):
        return  # nothing new: status stays read-only in the steady state
    known.update(found)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {**known, "_time": time.time()})
    except OSError:
        pass  # a cache: a sweep folder someone else owns can still be looked at
