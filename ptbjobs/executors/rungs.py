"""A search's judge at its rungs, asked by the training process itself at the end of each rung's
epoch (sweep/search.py has the rule). Under the sweep's lock, the run records its arrival and
metric in the rung's file (sweep/arrivals.py), and the rule is applied to its group's arrivals so
far.

A run not among the best is paused: the judge writes its PRUNED state before the lock is let go
(its checkpoint of the epoch's end is on disk), and the process ends cleanly. A paused run that
the arrivals make one of the best is promoted in the same hold of the lock: its state becomes
INTERRUPTED (marked promoted), and it is sent again through its executor: at once on the local
executor; on Slurm it waits in the sweep (QUEUED_LOCALLY) and goes out through the sweep's feeding
(launch/feed.py) as tasks end, the tasks that pruning ended among them. A run asked again at the
same rung (resumed there, after a kill or a promotion) keeps its first arrival: the verdict only
grows kinder as others arrive, never the other way.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from ptbjobs.core import states
from ptbjobs.core.atomic import append_records, read_json_if_any
from ptbjobs.executors.base import ManifestLedger
from ptbjobs.executors.local import LocalExecutor, local_folder
from ptbjobs.sweep.arrivals import Rung, read_rung, rung_path
from ptbjobs.sweep.folder import Sweep, latest_job
from ptbjobs.sweep.grid_resources import read_resources
from ptbjobs.train.run_dir import DamagedFile, RunDir


class RungJudge:
    """`Trainer.rung_judge` for one run of a search: (epochs done, that epoch's record) -> go on?
    `search` is the run's spec.json "search" entry, written by submit."""

    def __init__(self, run_dir: Path, search: dict[str, Any]):
        self.run_dir = Path(run_dir)
        self.sweep = Sweep(self.run_dir.parent)
        self.rungs = sorted(search["rungs"])
        self.keep, self.metric = float(search["keep"]), search["metric"]
        self.group, self.config = search["group"], search.get("config")
        self.group_size = search.get("group_size")  # the runs of its group in the grid (None: not known)

    def __call__(self, epoch: int, record: dict[str, Any]) -> bool:
        if epoch not in self.rungs:
            return True
        return self._arrive(epoch, float(record[self.metric]), pause=True)

    def diverged(self, epochs_done: int) -> None:
        """The run diverged after `epochs_done` epochs: it arrives at its next rung as the worst of
        all (it counts there, so the others' verdicts do not wait for it, and never goes on)."""
        later = [rung for rung in self.rungs if rung > epochs_done]
        if later:
            self._arrive(later[0], math.inf, pause=False)

    def _arrive(self, epoch: int, value: float, pause: bool) -> bool:
        key = self.run_dir.name
        path = rung_path(self.sweep.path, epoch)
        with self.sweep.locked():
            self._read: dict[int, Rung] = {}  # each rung's file read once in this hold of the lock
            rung = self._rung(epoch)
            if not any(a["run"] == key and a.get("config") == self.config for a in rung.arrivals):
                mine = {"run": key, "group": self.group, "metric": value if math.isfinite(value) else math.inf,
                        "config": self.config, "time": time.time()}
                path.parent.mkdir(exist_ok=True)
                append_records(path, [mine])
                rung.arrivals = [a for a in rung.arrivals if a["run"] != key] + [mine]
            promoted = self._went_on(epoch, rung)
            resume_promoted(self.sweep, [k for k in promoted if k != key], epoch)
            for higher in [r for r in self.rungs if r > epoch]:
                # this arrival may have closed a rung above: a run waiting there for the last of
                # those that could still come goes on now
                above = self._rung(higher)
                if not above.group(self.group):
                    break
                resume_promoted(self.sweep, self._went_on(higher, above), higher)
            goes_on = key in promoted
            if pause and not goes_on:
                # last: killed before this, the run shows FAILED, and a retry judges it here again
                # (and sends the runs it promoted, should they not have gone out)
                value = next(a["metric"] for a in rung.arrivals if a["run"] == key)
                RunDir(self.run_dir).write_state(states.PRUNED, epoch=epoch, rung=epoch, metric=self.metric,
                                                 value=value)
        return goes_on

    def _rung(self, epoch: int) -> Rung:
        if epoch not in self._read:
            self._read[epoch] = read_rung(self.sweep.path, epoch)
        return self._read[epoch]

    def _went_on(self, epoch: int, rung: Rung) -> list[str]:
        """The group's runs that go on from the rung: by the rule, or its best once it has closed."""
        promoted = rung.went_on(self.group, self.keep)
        if not promoted and self._closed(epoch, len(rung.group(self.group))):
            ranked = sorted((metric, order, run) for order, (run, metric) in enumerate(rung.group(self.group))
                            if math.isfinite(metric))
            if ranked:  # the best goes on; a group that only diverged ends here
                append_records(rung_path(self.sweep.path, epoch),
                               [{"closed": self.group, "promoted": ranked[0][2], "time": time.time()}])
                rung.closed[self.group] = ranked[0][2]
                promoted = [ranked[0][2]]
        return promoted

    def _closed(self, epoch: int, arrived: int) -> bool:
        """Has every run of the group that can reach this rung reached it? All of the group's runs
        at the first rung; at a later one, every run that went on from the rung before (which must
        have closed itself: more may yet go on from it)."""
        if self.group_size is None:
            return False
        expected = self.group_size
        for lower in [rung for rung in self.rungs if rung < epoch]:
            lower_rung = self._rung(lower)
            if len(lower_rung.group(self.group)) != expected:
                return False
            expected = len(lower_rung.went_on(self.group, self.keep))
        return arrived == expected


def resume_promoted(sweep: Sweep, keys: list[str], epoch: int) -> list[str]:
    """Of `keys`, promoted at the rung of `epoch`, those paused there are set to resume and sent
    again (returned). Call with the sweep's lock held."""
    paused = [key for key in keys if _paused_at(sweep.run_dir(key), epoch)]
    if not paused:
        return []
    for key in paused:
        RunDir(sweep.run_dir(key)).write_state(
            states.INTERRUPTED, epoch=epoch, promoted=epoch,
            message=f"promoted at epoch {epoch}: later runs made it one of the best there; resumes from its checkpoint")
    manifest = sweep.read_manifest()
    paused = [key for key in paused if key in manifest["runs"] and latest_job(manifest["runs"][key])]
    local = [key for key in paused if latest_job(manifest["runs"][key])["executor"] == "local"]
    if local:
        # at the sweep's width in force: a worker's own view (its one GPU) would narrow it
        width = (read_json_if_any(local_folder(sweep) / "settings.json") or {}).get("max_parallel")
        LocalExecutor(width).submit(sweep, local, read_resources(sweep.grid_path),
                                    ManifestLedger(sweep, manifest, "local", {}), ahead=True)
    elsewhere = [key for key in paused if key not in local]
    for key in elsewhere:  # sent by the sweep's feeding (launch/feed.py), as room allows
        manifest["runs"][key].update(waiting=True, promoted=True)  # sent before runs not yet started
    if elsewhere:
        sweep.update_manifest(manifest, elsewhere)
    return paused


def _paused_at(run_dir: Path, epoch: int) -> bool:
    try:
        record = RunDir(run_dir).read_state()
    except DamagedFile:
        return False  # it resumes from its checkpoint when retried, and is judged there again
    return bool(record) and record["state"] == states.PRUNED and record.get("rung") == epoch
