"""The one vocabulary of states, and how a run's state follows from its job and its own folder.

Slurm's names are used where they apply, so a user reads the same words as in `sacct`. ptbjobs's
own states (NOT_SUBMITTED, DIVERGED, LOST, INTERRUPTED) are ones no scheduler reports. A run folder's
state.json holds one of FOLDER_STATES; a job (local or Slurm) is in one of the others.
"""

from __future__ import annotations

# A job still in the scheduler's hands
PENDING = "PENDING"
RUNNING = "RUNNING"
REQUEUED = "REQUEUED"
# RUNNING, but its heartbeat is older than the grid's stall_after_min (stopped, hung on a dead
# filesystem): still the scheduler's job, so cancel and retry treat it as running
STALLED = "STALLED"
# waiting in the sweep, not yet sent: the cluster's limit on what one user may queue was reached,
# and the run goes out as earlier ones end (launch/feed.py)
QUEUED_LOCALLY = "QUEUED_LOCALLY"
ACTIVE = frozenset({PENDING, RUNNING, REQUEUED, STALLED, QUEUED_LOCALLY, "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING",
                    "REQUEUE_HOLD", "REQUEUE_FED", "SPECIAL_EXIT", "STOPPED", "RESV_DEL_HOLD", "SIGNALING",
                    "STAGE_OUT"})  # held or stopped jobs are still Slurm's: resubmitting would double them

# Ended
COMPLETED = "COMPLETED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"
TIMEOUT = "TIMEOUT"
PREEMPTED = "PREEMPTED"
NODE_FAIL = "NODE_FAIL"
OUT_OF_MEMORY = "OUT_OF_MEMORY"
BOOT_FAIL = "BOOT_FAIL"
DEADLINE = "DEADLINE"
REVOKED = "REVOKED"  # federation: a sibling cluster started the job, this copy was withdrawn

# ptbjobs's own
NOT_SUBMITTED = "NOT_SUBMITTED"
DIVERGED = "DIVERGED"  # the loss went NaN: resubmitting would replay it, so retry skips it
LOST = "LOST"  # the scheduler no longer knows the job and the run folder never said it ended
UNKNOWN = "UNKNOWN"
INTERRUPTED = "INTERRUPTED"  # a run folder's: stopped on request (a signal) after saving its state
# a search paused the run at a rung, its state saved (sweep/search.py): it resumes only if later
# runs make it one of its rung's best (promoted), so neither retry nor a new submit starts it
PRUNED = "PRUNED"
# a file of the run folder (state.json, metrics.jsonl) cannot be read: the run resumes from its last
# checkpoint, which writes the file anew; never taken for a completed run
DAMAGED = "DAMAGED"

OWN_STATES = frozenset({NOT_SUBMITTED, QUEUED_LOCALLY, DIVERGED, LOST, UNKNOWN, INTERRUPTED, DAMAGED, PRUNED})
# What a run folder's state.json says: written by the training process itself. FAILED there means
# an error stopped it; it resumes from its last checkpoint. A promoted run's PRUNED becomes
# INTERRUPTED (written by the run that promoted it): it is to resume.
FOLDER_STATES = frozenset({RUNNING, COMPLETED, DIVERGED, FAILED, INTERRUPTED, PRUNED})
# Ended without finishing: `retry` (and a new submit) resume these from their checkpoints
RETRYABLE = frozenset({FAILED, CANCELLED, TIMEOUT, PREEMPTED, NODE_FAIL, OUT_OF_MEMORY, BOOT_FAIL, DEADLINE, LOST,
                       DAMAGED})


def normalise_slurm_state(raw: str) -> str:
    """sacct prints e.g. "CANCELLED by 1000" or "OUT_OF_ME+": keep the state word, whole."""
    word = raw.strip().split(" ")[0].rstrip("+")
    for full in (OUT_OF_MEMORY, NODE_FAIL, COMPLETED, CANCELLED, PREEMPTED, REQUEUED, DEADLINE, BOOT_FAIL):
        if word and full.startswith(word) and len(word) >= 8:
            return full
    return word or UNKNOWN


def run_state(job_state: str | None, folder_state: str | None) -> str:
    """The one state shown for a run.

    job_state: what the executor says of the run's latest job (None: never submitted).
    folder_state: what the run's own folder says (RUNNING, COMPLETED, DIVERGED, ..., DAMAGED where
    a file of it cannot be read), or None.
    The run folder wins where it knows better: a job that ended "COMPLETED" for the scheduler may
    hold a run that diverged, and a run that finished is COMPLETED whatever happened to the job.
    A damaged folder of a job still queued or running is left to that job, which writes it anew.
    """
    if folder_state == DAMAGED:
        return job_state if job_state is not None and is_active(job_state) else DAMAGED
    if folder_state == COMPLETED:
        return COMPLETED
    if folder_state == DIVERGED:
        return DIVERGED
    if folder_state == PRUNED:  # its job ended when the search paused it (a job running it again is shown)
        return job_state if job_state is not None and is_active(job_state) else PRUNED
    if job_state is None:
        return NOT_SUBMITTED
    if job_state == COMPLETED:
        # the job ended cleanly but the run did not finish (e.g. interrupted and not requeued)
        return FAILED
    return job_state


def is_active(state: str) -> bool:
    return state in ACTIVE


def is_finished(state: str) -> bool:
    """Nothing more will happen to the run without a new submit. UNKNOWN is not finished: the
    scheduler did not answer, and the job may well still be running."""
    return not is_active(state) and state not in (NOT_SUBMITTED, UNKNOWN)
