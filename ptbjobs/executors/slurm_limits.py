"""What a cluster lets one user queue, and what is queued: the limits `submit` keeps to (MaxArraySize,
MaxJobCount, the association's and the QOS's MaxSubmitJobs) and one squeue census of the queue;
and an array found by its job name (a batch's token), for the submit that was killed before it
recorded it. Parsing is unit-tested on outputs recorded from a real cluster.
"""

from __future__ import annotations

import getpass
import re
import time
from dataclasses import dataclass

from ptbjobs.core import states
from ptbjobs.executors.slurm_commands import DEFAULT_MAX_ARRAY_SIZE, SlurmUnavailable, _run, base_id, expand_job_ids


def parse_config_value(text: str, name: str) -> str | None:
    """One value of `scontrol show config` ("MaxArraySize            = 1001")."""
    match = re.search(rf"^{re.escape(name)}\s*=\s*(\S+)", text, re.MULTILINE)
    return match.group(1) if match else None


def max_array_size() -> int:
    """The cluster's MaxArraySize: array indices run from 0 to MaxArraySize - 1."""
    return cluster_limits().max_array_size


@dataclass
class ClusterLimits:
    """What the cluster lets one sweep queue."""

    max_array_size: int  # tasks in one array
    max_job_count: int | None  # jobs the controller holds at once, everyone's (each array task counts)
    max_submit_jobs: int | None  # jobs this user may have queued or running: the association's or QOS's


def cluster_limits(qos: str = "") -> ClusterLimits:
    """MaxArraySize and MaxJobCount from `scontrol show config`; the user's MaxSubmitJobs from
    accounting (the association's, and the QOS's per-user one, the smaller), None where none is
    set or accounting does not answer."""
    config = _run(["scontrol", "show", "config"])
    array = parse_config_value(config, "MaxArraySize")
    jobs = parse_config_value(config, "MaxJobCount")
    return ClusterLimits(int(array) if array and array.isdigit() and int(array) > 0 else DEFAULT_MAX_ARRAY_SIZE,
                         int(jobs) if jobs and jobs.isdigit() and int(jobs) > 0 else None, _user_submit_limit(qos))


def _user_submit_limit(qos: str) -> int | None:
    user = getpass.getuser()
    try:
        assoc = _run(["sacctmgr", "-n", "-P", "show", "assoc", "where", f"user={user}", "format=MaxSubmit,DefaultQOS"])
        qos_table = _run(["sacctmgr", "-n", "-P", "show", "qos", "format=Name,MaxSubmitPU"])
    except SlurmUnavailable:
        return None  # no accounting: no limit it could enforce
    return parse_submit_limits(assoc, qos_table, qos)


def parse_submit_limits(assoc: str, qos_table: str, qos: str = "") -> int | None:
    """The smallest MaxSubmitJobs that applies: the user's associations' (`MaxSubmit|DefaultQOS`
    lines), and the per-user one of the QOS the jobs run under (`Name|MaxSubmitPU` lines): the one
    named in [resources], else the association's default, else "normal"."""
    limits, default_qos = [], ""
    for line in assoc.splitlines():
        fields = line.strip().split("|")
        if fields and fields[0].isdigit():
            limits.append(int(fields[0]))
        if len(fields) > 1 and fields[1]:
            default_qos = default_qos or fields[1]
    chosen = qos or default_qos or "normal"
    for line in qos_table.splitlines():
        fields = line.strip().split("|")
        if len(fields) == 2 and fields[0] == chosen and fields[1].isdigit():
            limits.append(int(fields[1]))
    return min(limits) if limits else None


@dataclass
class QueueCensus:
    """Who holds what in the controller, from one squeue call."""

    user_active: int  # this user's jobs queued or running (an array task counts as one)
    held: int  # every job the controller holds (what MaxJobCount counts: ended ones too, until MinJobAge)
    named_active: int  # this user's jobs of a given name queued or running (one sweep's)


def queue_census(job_name: str) -> QueueCensus:
    """One `squeue` over the whole cluster."""
    user = getpass.getuser()
    out = _run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%u|%j"])
    return parse_census(out, user, job_name)


def parse_census(text: str, user: str, job_name: str) -> QueueCensus:
    user_active = held = named = 0
    for line in text.splitlines():
        fields = line.strip().split("|", 3)
        if len(fields) != 4:
            continue
        listed, state, owner, name = fields
        for job_id in expand_job_ids(listed):
            held += 1
            if owner == user and states.is_active(states.normalise_slurm_state(state)):
                user_active += 1
                named += is_named(name, job_name)
    return QueueCensus(user_active, held, named)


def is_named(name: str, job_name: str) -> bool:
    """Is a job's name `job_name`, or `job_name:<token>` (a batch's token: 8 hex digits)?"""
    return name == job_name or (name.startswith(job_name + ":") and re.fullmatch(r"[0-9a-f]{8}", name[len(job_name) + 1:]) is not None)


def job_named(name: str, since: float) -> str | None:
    """The id of the job (an array's base id) named `name`, submitted after `since` (epoch
    seconds): from squeue while Slurm holds it, else from sacct; None where neither knows it.
    squeue and sacct both filter by name, so this is one short answer however large the queue."""
    out = _run(["squeue", "-h", "--name", name, "-o", "%F"])
    found = [line.strip() for line in out.splitlines() if line.strip().isdigit()]
    if not found:
        start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since - 60))
        out = _run(["sacct", "-X", "-n", "-P", "--name", name, "-S", start, "-o", "JobID"])
        found = [base_id(line.strip()) for line in out.splitlines() if base_id(line.strip()).isdigit()]
    return found[0] if found else None
