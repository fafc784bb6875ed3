"""Fault injection, end to end: the local faults a sweep meets, each done for real to a tiny grid
through the `ptbjobs` command, one line per fault saying what happened.

    sudo python analysis/faults.py [FAULT ...]    (root for the tmpfs faults; they are skipped without)

FAULT: the name of one of the functions below (e.g. full_disk); all of them by default.

Every fault runs in a scratch folder of its own, on a small synthetic corpus (a tiny model trains an
epoch in well under a second), with the local executor. The Slurm faults (controller down, node
failure, requeues) are tested on the cluster of slurm/up.sh in tests/executors/test_slurm_cluster.py.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

PTBJOBS = [sys.executable, "-m", "ptbjobs"]
TINY = """emb_size = 16
hidden_size = 16
batch_size = 4
bptt = 5
eval_batch_size = 3
checkpoint_every_min = 0
checkpoint_every_steps = 10
decay_after = 100
"""


def write_corpus(folder: Path) -> Path:
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, lines in (("train", 300), ("valid", 40), ("test", 40)):
        text = []
        for _ in range(lines):
            start = rng.randrange(30)
            text.append(" " + " ".join(f"w{(start + k + rng.randrange(2)) % 30}" for k in range(rng.randint(3, 12))))
        (folder / f"ptb.{split}.txt").write_text("\n".join(text) + "\n")
    return folder


class Scratch:
    """One fault's folder: a corpus, a grid, a sweep, and the ptbjobs command run against them."""

    def __init__(self, root: Path, name: str):
        self.path = root / name
        self.data = write_corpus(self.path / "data")
        self.sweep = self.path / "sweep"

    def grid(self, epochs: int, seeds: int, extra: str = "", resources: str = "") -> Path:
        path = self.path / "grid.toml"
        path.write_text(f'name = "faults"\n[defaults]\n{TINY}epochs = {epochs}\n{extra}[axes]\ncell = ["lstm"]\n'
                        f"seed = {list(range(1, seeds + 1))}\n[resources]\n{resources}")
        return path

    def run(self, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        done = subprocess.run(PTBJOBS + list(args), capture_output=True, text=True, timeout=600)
        if check and done.returncode != 0:
            raise RuntimeError(f"ptbjobs {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
        return done

    def submit(self, grid: Path, *flags: str) -> subprocess.CompletedProcess:
        return self.run("submit", "--grid", str(grid), "--executor", "local", "--sweep-dir", str(self.sweep),
                        "--data-dir", str(self.data), *flags)

    def status(self) -> dict:
        return json.loads(self.run("status", "--sweep-dir", str(self.sweep), "--json", check=True).stdout)

    def states(self) -> list[str]:
        return [row["state"] for row in self.status()["runs"]]

    def wait(self, test: Callable[[], object], timeout_s: float = 300, every_s: float = 0.2):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = test()
            if found:
                return found
            time.sleep(every_s)
        raise TimeoutError(f"timed out after {timeout_s:g} s; states {self.states()}")

    def ended(self) -> list[str] | None:
        found = self.states()
        active = {"PENDING", "RUNNING", "STALLED", "REQUEUED"}
        return found if not active & set(found) else None

    def job(self, job_id: str) -> dict:
        return json.loads((self.sweep / "local" / "jobs" / f"{job_id}.json").read_text())

    def run_dir(self, key: str) -> Path:
        return self.sweep / key


def summary(states: list[str]) -> str:
    counts: dict[str, int] = {}
    for state in states:
        counts[state] = counts.get(state, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in counts.items())


def epochs_record(run_dir: Path) -> list[tuple]:
    """What a run learned, epoch by epoch (times left out): equal lists mean the same run."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [tuple(r.get(k) for k in ("epoch", "train_ppl", "valid_ppl", "test_ppl", "lr")) for r in rows]


# ---- the faults ----

def supervisor_killed(s: Scratch) -> str:
    s.submit(s.grid(epochs=8, seeds=4), "--max-parallel", "1")
    supervisor = json.loads((s.sweep / "local" / "supervisor.json").read_text())
    s.wait(lambda: "RUNNING" in s.states())
    os.kill(supervisor["pid"], signal.SIGKILL)
    time.sleep(1)
    warned = s.run("status", "--sweep-dir", str(s.sweep)).stderr.strip()
    return f"next status said {warned.split(': ', 2)[-1]!r}; queue drained: {summary(s.wait(s.ended))}"


def worker_killed(s: Scratch) -> str:
    s.submit(s.grid(epochs=40, seeds=1))
    key = "lstm-d0-s1"
    s.wait(lambda: list((s.run_dir(key) / "checkpoints").glob("ckpt-*.pt")))
    os.kill(s.job("L1")["pid"], signal.SIGKILL)
    after_kill = s.wait(s.ended)
    retried = s.run("retry", "--sweep-dir", str(s.sweep)).stdout.strip().splitlines()[0]
    final = s.wait(s.ended)
    reference = s.path / "reference"
    config = s.path / "config.toml"
    config.write_text(TINY + "epochs = 40\nseed = 1\n")
    s.run("train", "--config", str(config), "--data-dir", str(s.data), "--out", str(reference),
          "--device", "cpu", check=True)
    same = epochs_record(s.run_dir(key)) == epochs_record(reference)
    return (f"status {summary(after_kill)}; retry: {retried!r}; then {summary(final)}, "
            f"{'identical to' if same else 'DIFFERENT from'} an uninterrupted run, epoch by epoch")


def damaged_files(s: Scratch) -> str:
    s.submit(s.grid(epochs=2, seeds=3))
    s.wait(s.ended)
    (s.run_dir("lstm-d0-s1") / "state.json").write_text("{broken")
    metrics = s.run_dir("lstm-d0-s2") / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes()[:-20])  # cut in the middle of its last line
    status = s.run("status", "--sweep-dir", str(s.sweep))
    report = s.run("report", "--sweep-dir", str(s.sweep))
    damaged_line = next((line for line in report.stdout.splitlines() if line.startswith("damaged run")), "none")
    before = summary(s.states())
    s.run("retry", "--sweep-dir", str(s.sweep), check=True)
    return (f"status exit {status.returncode}: {before}; report exit {report.returncode}, "
            f"{report.stdout.count('damaged run')} named ({damaged_line[:110]}...); "
            f"retry: {summary(s.wait(s.ended))}")


def worker_stopped(s: Scratch) -> str:
    s.submit(s.grid(epochs=200, seeds=1, resources="stall_after_min = 0.05\n"))  # 3 s
    s.wait(lambda: (s.run_dir("lstm-d0-s1") / "progress.json").exists() and s.states() == ["RUNNING"])
    pid = s.job("L1")["pid"]
    os.kill(pid, signal.SIGSTOP)
    stalled = s.wait(lambda: s.states() if s.states() == ["STALLED"] else None, timeout_s=60)
    os.kill(pid, signal.SIGCONT)
    running = s.wait(lambda: s.states() if s.states() == ["RUNNING"] or s.ended() else None, timeout_s=60)
    s.run("cancel", "--sweep-dir", str(s.sweep), check=True)
    return (f"after SIGSTOP status says {stalled[0]} (stall_after_min = 0.05); after SIGCONT {running[0]}; "
            f"cancel: {summary(s.wait(s.ended))}")


def diverged_run(s: Scratch) -> str:
    grid = s.grid(epochs=3, seeds=1)
    grid.write_text(grid.read_text().replace("[axes]\n", "[axes]\nlr = [1.0, 1e9]\n"))
    done = s.submit(grid, "--wait")
    report = s.run("report", "--sweep-dir", str(s.sweep), "--include-incomplete")
    line = next((x for x in report.stdout.splitlines() + report.stderr.splitlines() if "diverged" in x), "(none)")
    return f"submit --wait exit {done.returncode}, state {summary(s.states())}; report: {line.strip()}"


def other_host(s: Scratch) -> str:
    s.submit(s.grid(epochs=200, seeds=1))
    s.wait(lambda: s.states() == ["RUNNING"])
    path = s.sweep / "local" / "jobs" / "L1.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "host": "login2"}))  # as the supervisor on another login node writes it
    os.kill(record["pid"], signal.SIGKILL)  # and its process is not one this host can see
    status = s.status()
    retry = s.run("retry", "--sweep-dir", str(s.sweep)).stdout.strip()
    cancel = s.run("cancel", "--sweep-dir", str(s.sweep))
    return (f"status {summary([r['state'] for r in status['runs']])}, retry {retry!r}, note {status['notes'][0]!r}; cancel exit {cancel.returncode}: "
            f"{cancel.stderr.strip()[16:]}")


def full_disk(s: Scratch) -> str:
    mount = s.path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True).returncode:
        return "skipped: mounting a tmpfs needs root"
    try:
        config = s.path / "config.toml"
        config.write_text(TINY + "epochs = 20\n")
        train = ["train", "--config", str(config), "--data-dir", str(s.data), "--out", str(mount / "run"), "--device", "cpu"]
        full = s.run(*train)
        error = [line for line in full.stderr.splitlines() if line.startswith("ptbjobs: error")]
        state = json.loads((mount / "run" / "state.json").read_text())["state"]
        checkpoints = sorted(p.name for p in (mount / "run" / "checkpoints").glob("ckpt-*.pt"))
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        read_only = s.run(*train)
        subprocess.run(["mount", "-o", "remount,rw,size=2m", str(mount)], check=True)
        resumed = s.run(*train)
        return (f"exit {full.returncode}, {len(error)} error line: {error[0][:150] if error else full.stderr[-200:]}...; "
                f"state {state}, kept {checkpoints[-1] if checkpoints else 'no checkpoint'}; read-only: exit "
                f"{read_only.returncode}: {read_only.stderr.strip().splitlines()[-1][16:100]}...; "
                f"space back: exit {resumed.returncode}")
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def changed_data(s: Scratch) -> str:
    s.submit(s.grid(epochs=200, seeds=1))
    s.wait(lambda: list((s.run_dir("lstm-d0-s1") / "checkpoints").glob("ckpt-*.pt")))
    s.run("cancel", "--sweep-dir", str(s.sweep), check=True)
    s.wait(s.ended)
    with open(s.data / "ptb.train.txt", "a") as train:
        train.write(" w1 w2 w3\n")
    s.run("retry", "--sweep-dir", str(s.sweep), check=True)
    final = s.wait(s.ended)
    log = (s.run_dir("lstm-d0-s1") / "logs" / "L2.log").read_text().strip().splitlines()
    said = next((line for line in log if "changed since" in line), log[-1])
    return f"retry: {summary(final)}; its log: {said.strip()[:110]}..."


FAULTS = [
    ("supervisor kill -9, 3 queued", supervisor_killed),
    ("worker kill -9 mid-epoch", worker_killed),
    ("damaged state.json + cut metrics", damaged_files),
    ("worker SIGSTOP (a hang)", worker_stopped),
    ("diverged run (lr 1e9)", diverged_run),
    ("job on another login node", other_host),
    ("full disk, then read-only", full_disk),
    ("data changed before a resume", changed_data),
]


def main() -> int:
    chosen = sys.argv[1:]
    unknown = [c for c in chosen if c not in {f.__name__ for _, f in FAULTS}]
    if unknown:
        print(f"faults.py: no fault {unknown[0]!r} (there are: {', '.join(f.__name__ for _, f in FAULTS)})",
              file=sys.stderr)
        return 2
    failures = 0
    with tempfile.TemporaryDirectory(prefix="ptbjobs-faults-") as scratch:
        for name, fault in FAULTS:
            if chosen and fault.__name__ not in chosen:
                continue
            started = time.monotonic()
            try:
                said = fault(Scratch(Path(scratch), fault.__name__))
            except Exception as exc:  # noqa: BLE001 - one fault's failure must not hide the others
                failures += 1
                said = f"SCRIPT FAILED: {type(exc).__name__}: {exc}"
            said = said.replace(scratch + "/", "")  # the scratch folder says nothing
            print(f"{name:<34} {said}  [{time.monotonic() - started:.0f} s]", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
