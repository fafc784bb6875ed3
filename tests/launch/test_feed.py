"""Sending what fits and keeping the rest waiting (launch/feed.py), against a scheduler faked at the
executor's interface: the same logic runs against the real cluster in test_slurm_cluster.py."""

from __future__ import annotations

import pytest

from ptbjobs.core import states
from ptbjobs.executors.base import Executor, JobStates, PartialSubmission
from ptbjobs.launch.feed import send, waiting_runs
from ptbjobs.launch.run_states import run_states
from ptbjobs.sweep.folder import Sweep
from ptbjobs.sweep.grid import Resources


class Cluster(Executor):
    """A scheduler with a cap on queued jobs; `refuse_after` makes sbatch refuse once so many are in."""

    name = "slurm"

    def __init__(self, cap: int, refuse_after: int | None = None):
        self.cap, self.refuse_after, self.queued, self.feeder = cap, refuse_after, [], False
        self.names: dict[str, str] = {}  # job id -> the batch token it was sent under
        self.die = None  # "before" or "after" sbatch of the second batch: the submit is killed there

    def submit(self, sweep, keys, resources, ledger=None):
        """One batch (an sbatch) per run."""
        ids = {}
        for key in keys:
            if self.refuse_after is not None and len(self.queued) >= self.refuse_after:
                raise PartialSubmission("sbatch: limit", ids)
            token = f"t{key}"
            ledger.sending(token, [key])
            if self.die == "before" and ids:
                raise Killed
            self.queued.append(key)
            self.names[f"{len(self.queued)}"] = token
            if self.die == "after" and ids:
                raise Killed
            ids[key] = f"{len(self.queued)}"
            ledger.sent(token, {key: ids[key]})
        return ids

    def find_sent(self, sweep, token, keys, per_job, since):
        return {keys[0]: job_id for job_id, name in self.names.items() if name == token}

    def room(self, sweep, resources):
        return self.cap - len(self.queued) - self.feeder

    def feeder_alive(self, sweep):
        return self.feeder

    def feeder_possible(self, sweep, resources):
        return self.cap >= 2

    def start_feeder(self, sweep, resources):
        self.feeder = True

    def query(self, sweep, job_ids, max_age_s=0.0):
        return JobStates(dict.fromkeys(job_ids, states.PENDING))

    def cancel(self, sweep, job_ids):
        pass

    def log_paths(self, sweep, key, job_ids):
        return []


class Killed(BaseException):
    """kill -9: nothing after it runs in the killed process."""


def _sweep(tmp_path, runs: int) -> tuple[Sweep, dict]:
    sweep = Sweep(tmp_path / "s")
    with sweep.locked():
        manifest = sweep.read_manifest()
        for n in range(runs):
            manifest["runs"][f"r{n}"] = {"config": {"seed": n}, "config_hash": str(n), "point": {}, "jobs": []}
        sweep.update_manifest(manifest, list(manifest["runs"]))
    return sweep, manifest


def test_what_does_not_fit_waits_in_order_with_a_slot_kept_for_the_feeder(tmp_path):
    sweep, manifest = _sweep(tmp_path, 6)
    cluster = Cluster(cap=3)
    with sweep.locked():
        sent = send(sweep, manifest, cluster, list(manifest["runs"]), Resources(), {})
    assert list(sent) == ["r0", "r1"] and cluster.feeder  # 2 runs and the feeder: 3 jobs
    saved = sweep.read_manifest()
    assert waiting_runs(saved) == ["r2", "r3", "r4", "r5"]
    assert [s for s in run_states(sweep, saved).values()].count(states.QUEUED_LOCALLY) == 4
    cluster.queued.remove("r0")  # a run ended: the next waiting one goes, in order
    with sweep.locked():
        assert list(send(sweep, saved, cluster, [], Resources(), {})) == ["r2"]
    assert waiting_runs(sweep.read_manifest()) == ["r3", "r4", "r5"]


def test_under_a_limit_of_one_job_no_feeder_takes_the_only_slot(tmp_path):
    sweep, manifest = _sweep(tmp_path, 3)
    cluster = Cluster(cap=1)
    with sweep.locked():
        assert list(send(sweep, manifest, cluster, list(manifest["runs"]), Resources(), {})) == ["r0"]
    assert not cluster.feeder and waiting_runs(sweep.read_manifest()) == ["r1", "r2"]


def test_a_refusal_part_way_keeps_waiting_runs_waiting_and_records_what_went_out(tmp_path):
    sweep, manifest = _sweep(tmp_path, 4)
    cluster = Cluster(cap=2)
    with sweep.locked():
        send(sweep, manifest, cluster, list(manifest["runs"]), Resources(), {})  # r0, the feeder; r1-r3 wait
        cluster.cap, cluster.refuse_after = 10, 2  # room again, but sbatch refuses after one more
        with pytest.raises(PartialSubmission):
            send(sweep, sweep.read_manifest(), cluster, [], Resources(), {})
    saved = sweep.read_manifest()
    assert [j["job_id"] for j in saved["runs"]["r1"]["jobs"]] == ["2"] and waiting_runs(saved) == ["r2", "r3"]


@pytest.mark.parametrize("moment", ["before", "after"])
def test_a_submit_killed_around_an_sbatch_sends_nothing_twice_when_run_again(tmp_path, moment):
    sweep, manifest = _sweep(tmp_path, 3)
    cluster = Cluster(cap=10)
    cluster.die = moment
    with pytest.raises(Killed), sweep.locked():
        send(sweep, manifest, cluster, list(manifest["runs"]), Resources(), {})
    cluster.die = None
    saved = sweep.read_manifest()  # what the killed process left on disk
    assert [len(saved["runs"][k]["jobs"]) for k in ("r0", "r1")] == [1, 0] and list(saved["sending"]) == ["tr1"]
    with sweep.locked():  # the next submit plans r1 and r2 again: they have no job on record
        send(sweep, saved, cluster, ["r1", "r2"], Resources(), {})
    assert sorted(cluster.queued) == ["r0", "r1", "r2"]  # r1 sbatch'ed once, whether it went out or not
    final = sweep.read_manifest()
    assert {k: [j["job_id"] for j in e["jobs"]] for k, e in final["runs"].items()} == {"r0": ["1"], "r1": ["2"], "r2": ["3"]}
    assert final["sending"] == {}
