"""sbatch's refusals in the grid's own words: which [resources] key asked for what, and what the
cluster has instead.

sbatch says "Requested node configuration is not available" whether the job asked for too many
GPUs, CPUs or too much memory; the user wrote `gpus_per_node = 8`, so that is what the line names:

    [resources] gpus_per_node = 8: no node has 8 GPUs (largest: 2)
"""

from __future__ import annotations

import re

from ptbjobs.executors import slurm_commands
from ptbjobs.executors.slurm_commands import NodeOffer, SlurmUnavailable
from ptbjobs.sweep.grid import Resources

GENERIC_HINT = "check the [resources] against `sinfo`, and that the controller is up"

# sbatch's words for a per-user or per-QOS cap on queued jobs, and for a full controller
_SUBMIT_LIMIT = ("AssocMaxSubmitJobLimit", "QOSMaxSubmitJobPerUserLimit", "QOSMaxSubmitJobLimit", "job submit limit",
                 "MaxSubmitJobs")
_CONTROLLER_FULL = ("MaxJobCount", "Slurm temporarily unable to accept job")


def explain(said: str, resources: Resources) -> tuple[str, str]:
    """(message, hint) for the text of a refused sbatch (all its lines)."""
    lines = [line.strip() for line in said.splitlines() if line.strip()]
    first = next((line for line in lines if "error" in line.lower()), lines[0] if lines else "no output")
    first = re.sub(r"^(sbatch: error: )?(Batch job submission failed: )?", "", first)
    lower = said.lower()
    # before the time limit's words: sbatch's line for a submit limit ends "...and/or time limits)"
    if any(word.lower() in lower for word in _SUBMIT_LIMIT):
        return (f"the cluster caps how many jobs you may queue, and it is reached (sbatch: {first})",
                "submit again once some have ended: it sends only the runs not yet queued")
    if "requested node configuration is not available" in lower or "memory specification can not be satisfied" in lower:
        beyond = _beyond_every_node(resources)
        if beyond:
            return beyond, "ask for no more than a node has, or name a partition with bigger nodes"
        return (f"sbatch refused the job: {first}",
                "no one [resources] key asks for more than a node has: check constraint and extra_sbatch "
                "against `sinfo -N -l`")
    if "invalid partition" in lower:
        return (f"[resources] partition = {resources.partition!r}: no such partition{_listing(_partitions())}",
                "name one of them, or leave partition out for the cluster's default")
    if "invalid feature specification" in lower:
        return (f"[resources] constraint = {resources.constraint!r}: no node has these features",
                "see the features of the nodes with `sinfo -o '%N %f'`")
    if "invalid account" in lower:
        return (f"[resources] account = {resources.account!r}: not an account you may submit to (sbatch: {first})",
                "see yours with `sacctmgr show assoc user=$USER`")
    if "invalid qos" in lower:
        return (f"[resources] qos = {resources.qos!r}: not a QOS you may use (sbatch: {first})",
                "see yours with `sacctmgr show assoc user=$USER format=qos`")
    if "requested time limit is invalid" in lower:
        return (f"[resources] timeout_min = {resources.timeout_min}: over the partition's time limit (sbatch: {first})",
                "see the limits with `sinfo -o '%P %l'`")
    if any(word.lower() in lower for word in _CONTROLLER_FULL):
        return (f"the Slurm controller holds as many jobs as it may (sbatch: {first})",
                "submit again later: it sends only the runs not yet queued")
    return f"sbatch failed: {first}", GENERIC_HINT


def _beyond_every_node(resources: Resources) -> str | None:
    """The [resources] key no node can give, said with what the largest node has; None where sinfo
    does not answer or no single key is at fault."""
    try:
        nodes = slurm_commands.node_offers(resources.partition)
    except SlurmUnavailable:
        return None
    if not nodes:
        return None
    where = f" in partition {resources.partition}" if resources.partition else ""
    asked = [("gpus_per_node", resources.gpus_per_node, "GPUs", lambda n: n.gpus, lambda v: f"{v}"),
             ("cpus_per_task", resources.cpus_per_task, "CPUs", lambda n: n.cpus, lambda v: f"{v}"),
             ("mem_gb", resources.mem_gb, "GB of memory", lambda n: n.memory_mb / 1024, _gigabytes)]
    for key, wanted, unit, has, shown in asked:
        largest = max(has(node) for node in nodes)
        if wanted and wanted > largest:
            return f"[resources] {key} = {shown(wanted)}: no node{where} has {shown(wanted)} {unit} (largest: {shown(largest)})"
    if not any(_fits(node, resources) for node in nodes):
        return (f"[resources] gpus_per_node = {resources.gpus_per_node}, cpus_per_task = {resources.cpus_per_task}, "
                f"mem_gb = {resources.mem_gb:g}: no node{where} has all of them at once")
    return None


def _gigabytes(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")  # 100000, 15.6, 0.5


def _fits(node: NodeOffer, resources: Resources) -> bool:
    return (node.gpus >= resources.gpus_per_node and node.cpus >= resources.cpus_per_task
            and node.memory_mb >= resources.mem_gb * 1024)


def _partitions() -> list[str]:
    try:
        return slurm_commands.partitions()
    except SlurmUnavailable:
        return []


def _listing(names: list[str]) -> str:
    return f" (the cluster has: {', '.join(names)})" if names else ""
