"""Talking to Slurm's command-line tools: sacct, squeue, scontrol, scancel.

Everything that crosses the process boundary to Slurm (other than sbatch, which submitit runs) is
here, as small functions whose parsing is unit-tested on outputs recorded from a real cluster.

Job ids are Slurm's: "123" for a single job, "123_4" for task 4 of array 123. Asking about an
array's id returns all its tasks, so a sweep of 1,000 runs in one array costs one short query.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field

from ptbjobs.core import states
from ptbjobs.core.errors import PtbjobsError

QUERY_TIMEOUT_S = 30
DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's own default


class SlurmUnavailable(PtbjobsError):
    """A Slurm command failed or did not answer (controller down, accounting off, not installed)."""


def have_slurm() -> bool:
    return shutil.which("sbatch") is not None


def _call(command: list[str]) -> subprocess.CompletedProcess:
    """Run a Slurm command; SlurmUnavailable when it is missing or does not answer."""
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S)
    except FileNotFoundError:
        raise SlurmUnavailable(f"{command[0]} not found", "is Slurm installed and on PATH?") from None
    except subprocess.TimeoutExpired:
        raise SlurmUnavailable(f"{command[0]} did not answer within {QUERY_TIMEOUT_S} s",
                               "is the Slurm controller up? (scontrol ping)") from None


def _said(done: subprocess.CompletedProcess) -> str:
    return (done.stderr.strip() or done.stdout.strip() or f"exit code {done.returncode}").splitlines()[0]


def _run(command: list[str]) -> str:
    """Run a Slurm command and return its stdout; SlurmUnavailable with its own words if it fails."""
    done = _call(command)
    if done.returncode != 0:
        raise SlurmUnavailable(f"{command[0]} failed: {_said(done)}")
    return done.stdout


# ---- job ids ----

def base_id(job_id: str) -> str:
    """"123_4" -> "123": the id to ask sacct/squeue about (all the array's tasks at once)."""
    return job_id.split("_", 1)[0]


_ARRAY_RANGE = re.compile(r"^(\d+)_\[([0-9,\-%]+)\]$")


def expand_job_ids(listed: str) -> list[str]:
    """The job ids one line of sacct/squeue stands for: a pending array's tasks are listed as one
    line, "123_[5-9,12%4]" (the %4 is the array's parallelism limit)."""
    match = _ARRAY_RANGE.match(listed)
    if not match:
        return [listed]
    array, spec = match.group(1), match.group(2).split("%", 1)[0]
    ids = []
    for part in spec.split(","):
        if "-" in part:
            first, last = part.split("-", 1)
            ids += [f"{array}_{i}" for i in range(int(first), int(last) + 1)]
        elif part:
            ids.append(f"{array}_{part}")
    return ids


# ---- states ----

def parse_sacct(text: str) -> dict[str, str]:
    """`sacct -X -n -P -o JobID,State[,Submit]` output -> job id -> state word (CANCELLED, not
    "CANCELLED by 1000"). Steps ("123.batch") are skipped; -X leaves none, but be safe. With -D
    (every attempt of a requeued job) the attempt submitted last gives the state."""
    return _parse_sacct(text)[0]


def count_attempts(text: str) -> dict[str, int]:
    """Job id -> how many attempts `sacct -D` lists of it (a requeue makes a new one)."""
    return _parse_sacct(text)[1]


def _parse_sacct(text: str) -> tuple[dict[str, str], dict[str, int]]:
    own: dict[str, tuple[str, str]] = {}  # job id -> (submitted, state) of its latest attempt
    attempts: dict[str, int] = {}
    from_ranges: dict[str, str] = {}
    for line in text.splitlines():
        if "|" not in line:
            continue
        listed, raw_state, *rest = line.split("|")
        listed = listed.strip()
        if not listed or "." in listed:
            continue
        state = states.normalise_slurm_state(raw_state)
        ids = expand_job_ids(listed)
        if ids == [listed]:
            submitted = rest[0] if rest else ""
            if listed not in own or submitted >= own[listed][0]:  # ISO times: later sorts after
                own[listed] = (submitted, state)
            attempts[listed] = attempts.get(listed, 0) + 1
        else:
            from_ranges.update(dict.fromkeys(ids, state))
    # A pending array's line ("123_[2-5]") can outlive the start of some of its tasks in sacct:
    # a task's own line is newer news than the range it was once part of.
    return {**from_ranges, **{j: state for j, (_, state) in own.items()}}, attempts


def parse_squeue(text: str) -> dict[str, str]:
    """`squeue -h -o %i|%T` output (with -r, one line per array task) -> job id -> state."""
    return parse_sacct(text)


def sacct_states(job_ids: list[str]) -> dict[str, str]:
    """The state of every job and array task of `job_ids`' jobs, from accounting (one query)."""
    return _sacct(job_ids)[0]


def _sacct(job_ids: list[str]) -> tuple[dict[str, str], dict[str, int]]:
    """States and attempt counts: -D lists every attempt of a requeued job, not just its latest."""
    if not job_ids:
        return {}, {}
    arrays = sorted({base_id(j) for j in job_ids}, key=_numeric_first)
    # with --jobs, sacct's window covers the jobs whenever they ran (its default is since midnight)
    out = _run(["sacct", "-X", "-D", "-n", "-P", "-o", "JobID,State,Submit", "-S", "1970-01-01T00:00:00",
                "-j", ",".join(arrays)])
    return _parse_sacct(out)


def squeue_states(job_ids: list[str]) -> dict[str, str]:
    """States of the jobs the controller still holds (queued, running, or ended within its
    MinJobAge, a few minutes). Jobs it has forgotten are absent."""
    if not job_ids:
        return {}
    arrays = sorted({base_id(j) for j in job_ids}, key=_numeric_first)
    try:
        out = _run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(arrays)])
    except SlurmUnavailable as exc:
        # asked about one job only, squeue fails when the controller has forgotten it (with
        # several it lists those it knows): an answer, not an outage
        if "Invalid job id specified" in exc.message:
            return {}
        raise
    return parse_squeue(out)


def _numeric_first(job_id: str) -> tuple[int, str]:
    return (int(job_id), "") if job_id.isdigit() else (0, job_id)


@dataclass
class StateReport:
    """What Slurm said of a set of jobs, and a note for the user when it was not from sacct."""

    states: dict[str, str]
    note: str | None = None  # why not sacct, when it is not
    attempts: dict[str, int] = field(default_factory=dict)  # job id -> attempts, where sacct said


def job_states(job_ids: list[str]) -> StateReport:
    """The state of each of `job_ids` that Slurm knows: sacct, filled in by squeue for jobs
    accounting does not list yet (it lags the controller by a moment); squeue alone, with a note,
    where accounting does not answer. Raises SlurmUnavailable when neither answers."""
    try:
        found, attempts = _sacct(job_ids)
    except SlurmUnavailable as exc:
        return StateReport(_for_tasks(squeue_states(job_ids), job_ids),
                           f"accounting unavailable ({exc.message}): states from squeue, "
                           "which forgets ended jobs after a few minutes")
    found = _for_tasks(found, job_ids)
    missing = [j for j in job_ids if j not in found]
    if missing:
        try:
            found.update({j: s for j, s in squeue_states(missing).items() if j not in found})
        except SlurmUnavailable:
            pass  # the controller is slow or down: accounting's answer stands
    return StateReport(found, attempts={j: n for j, n in attempts.items() if j in found})


def _for_tasks(found: dict[str, str], job_ids: list[str]) -> dict[str, str]:
    """An array whose tasks never started (all cancelled while pending, say) has one record under
    the array's own id, which stands for each of those tasks."""
    found = dict(found)
    for job_id in job_ids:
        if job_id not in found and base_id(job_id) in found:
            found[job_id] = found[base_id(job_id)]
    return found


# ---- cluster facts and actions ----

class CancelRefused(SlurmUnavailable):
    """scancel refused some of the jobs (the controller down, most often); `accepted` are the
    ones it did cancel (or signal)."""

    def __init__(self, message: str, accepted: list[str], hint: str | None = None):
        super().__init__(message, hint)
        self.accepted = accepted


# scancel's words for a job it could not act on, one line per job:
# "scancel: error: Kill job error on job id 127_2: Unable to contact slurm controller (connect failure)"
_KILL_ERROR = re.compile(r"Kill job error on job id (\S+):")


def refused_by_scancel(stderr: str, job_ids: list[str]) -> set[str]:
    """The jobs scancel's error output names (a task, or a range of an array's tasks); all of
    them when it names none (it failed as a whole). Jobs already ended or unknown are not errors
    for scancel: it is silent about them."""
    named = {job_id for listed in _KILL_ERROR.findall(stderr) for job_id in expand_job_ids(listed)}
    return named & set(job_ids) if named & set(job_ids) else set(job_ids)


def compress_job_ids(job_ids: list[str], max_chars: int = 2000) -> list[str]:
    """Job ids as scancel takes them, in few words: an array's tasks as ranges, "123_[0-499,501-999]"
    (one request to the controller per word, not per task: 100,000 ids as words took minutes and
    did not all go through), at most `max_chars` of ranges a word. Plain jobs stay as they are."""
    words, tasks = [], {}
    for job_id in job_ids:
        array, _, index = job_id.partition("_")
        if index.isdigit():
            tasks.setdefault(array, set()).add(int(index))
        else:
            words.append(job_id)
    for array, indices in tasks.items():
        ranges: list[str] = []
        ordered = sorted(indices)
        start = previous = ordered[0]
        for index in ordered[1:] + [None]:
            if index is not None and index == previous + 1:
                previous = index
                continue
            ranges.append(f"{start}-{previous}" if previous > start else f"{start}")
            if index is not None:
                start = previous = index
        chunk: list[str] = []
        for part in ranges + [None]:
            if part is None or (chunk and len(",".join(chunk)) + len(part) + 1 > max_chars):
                words.append(f"{array}_{chunk[0]}" if len(chunk) == 1 and "-" not in chunk[0] else f"{array}_[{','.join(chunk)}]")
                chunk = []
            if part is not None:
                chunk.append(part)
    return words


@dataclass
class NodeOffer:
    """What one node of the cluster (or of a partition) has to give a job."""

    name: str
    cpus: int
    memory_mb: int
    gpus: int


def parse_sinfo_nodes(text: str) -> list[NodeOffer]:
    """`sinfo -h -N -o %N|%c|%m|%G` output (a line per node and partition) -> one offer per node.
    Gres reads like "gpu:2", "gpu:a100:4(S:0-1)", "gpu:a100:4,shard:8" or "(null)"."""
    offers: dict[str, NodeOffer] = {}
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 4:
            continue
        name, cpus, memory, gres = fields
        gpus = 0
        for item in gres.split(","):
            parts = re.sub(r"\(.*?\)", "", item).split(":")
            if parts[0] == "gpu" and parts[-1].isdigit():
                gpus += int(parts[-1])
        offers[name] = NodeOffer(name, int(cpus) if cpus.isdigit() else 0,
                                 int(memory) if memory.isdigit() else 0, gpus)
    return list(offers.values())


def node_offers(partition: str = "") -> list[NodeOffer]:
    """The nodes a job may land on: the partition's, or every node where none is named."""
    command = ["sinfo", "-h", "-N", "-o", "%N|%c|%m|%G"] + (["-p", partition] if partition else [])
    return parse_sinfo_nodes(_run(command))


def partitions() -> list[str]:
    return sorted({p.rstrip("*") for p in _run(["sinfo", "-h", "-o", "%P"]).split()})


def sbatch(options: list[str], command: str) -> str:
    """Submit `command` as a batch job (sbatch --wrap); its job id."""
    return _run(["sbatch", "--parsable", *options, "--wrap", command]).strip().split(";")[0]


def requeue(job_id: str) -> None:
    _run(["scontrol", "requeue", job_id])


def scancel(job_ids: list[str], signal: str | None = None) -> None:
    """Cancel the jobs or array tasks (or, with `signal`, only send it to them). CancelRefused,
    saying which were accepted, when scancel refused any."""
    if not job_ids:
        return
    command = ["scancel"] + ([f"--signal={signal}"] if signal else []) + compress_job_ids(job_ids)
    try:
        done = _call(command)
    except SlurmUnavailable as exc:
        raise CancelRefused(exc.message, [], exc.hint) from None
    if done.returncode != 0:
        refused = refused_by_scancel(done.stderr, job_ids)
        accepted = [j for j in job_ids if j not in refused]
        raise CancelRefused(f"scancel failed for {len(refused)} of {len(job_ids)} jobs: {_said(done)}", accepted,
                            "is the Slurm controller up? (scontrol ping)")
