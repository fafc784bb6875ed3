"""A run folder on a disk that refuses writes (full, read-only): one line and a non-zero exit, never
a traceback; the last checkpoint stays intact and the run resumes once the disk takes writes again.

On real filesystems: a tmpfs of a few pages, mounted for the test (root, or CAP_SYS_ADMIN). Where
mounting is not permitted the tests skip, except under CI, where they must run.
"""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import NoteTaker, assert_same_run, interrupt_at
from ptbjobs.core import states
from ptbjobs.core.atomic import atomic_write_bytes
from ptbjobs.executors.job import write_spec
from ptbjobs.train import checkpoint
from ptbjobs.train.run_dir import RunDir
from ptbjobs.train.runner import run_training
from ptbjobs.train.signals import TrainingInterrupted

PAGE = 4096  # tmpfs counts whole pages


class Tmpfs:
    """A tmpfs mounted on `path` for one test: resized, made read-only and back, unmounted after."""

    def __init__(self, path: Path):
        self.path = path

    def remount(self, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(self.path)], check=True, capture_output=True)


@pytest.fixture
def tmpfs(tmp_path) -> Tmpfs:
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                                 capture_output=True, text=True)
        problem = mounted.stderr.strip() if mounted.returncode else None
    except FileNotFoundError:
        problem = "no mount command"
    if problem is not None:
        reason = f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {problem}"
        if os.environ.get("CI"):  # CI must exercise a real full disk, never skip past it
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield Tmpfs(mount_point)
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


@pytest.fixture
def config(tiny_config):
    # checkpoints at steps 10 and 20 (the second is the one a disk sized for one fails), epochs of 25 steps
    return tiny_config.replace(epochs=2, epoch_steps=25, checkpoint_every_steps=10)


def run_entry(entry: str, out: Path, config, data_dir: Path, work: Path) -> subprocess.CompletedProcess:
    """Train `out` as a user does (`ptbjobs train`) or as a job does (`python -m ptbjobs.executors.job`)."""
    env = {key: value for key, value in os.environ.items() if key != "PTBJOBS_DEBUG"}
    if entry == "train":
        config_file = work / "config.json"
        config_file.write_text(json.dumps(config.to_dict()))
        command = ["-m", "ptbjobs", "train", "--config", str(config_file), "--data-dir", str(data_dir),
                   "--out", str(out)]
    else:
        command = ["-m", "ptbjobs.executors.job", str(out)]
    return subprocess.run([sys.executable, *command], capture_output=True, text=True, env=env, timeout=300)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    """stderr less the reporter's timestamped progress lines."""
    return [line for line in result.stderr.splitlines() if not line.startswith("[")]


def leftover_temp_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.tmp"))


@pytest.mark.parametrize("entry", ["train", "job"])
def test_a_full_disk_mid_run_ends_with_one_line_keeps_the_last_checkpoint_and_resumes_when_there_is_room(
        tmp_path, tiny_corpus, config, tmpfs, entry):
    reference = tmp_path / "reference"
    run_training(config, reference, tiny_corpus, handle_signals=False)
    checkpoint_pages = math.ceil(max(p.stat().st_size for p in (reference / "checkpoints").iterdir()) / PAGE)
    # room for the small files (config, state, spec, progress and their temp files) and one
    # checkpoint, and half of the second: the write of the checkpoint at step 20 fails half-way
    tmpfs.remount(f"size={(6 + checkpoint_pages + checkpoint_pages // 2) * PAGE // 1024}k")
    out = tmpfs.path / "run"
    if entry == "job":
        write_spec(out, config, tiny_corpus)

    failed = run_entry(entry, out, config, tiny_corpus, tmp_path)
    assert failed.returncode == 1, failed.stderr
    assert "Traceback" not in failed.stderr
    [line] = error_lines(failed)
    assert line.startswith(f"ptbjobs: error: cannot write run folder {out}: No space left on device")
    saved, path = checkpoint.load_latest(out / "checkpoints")
    assert path.name == "ckpt-000000010.pt" and saved["global_step"] == 10  # the last good one, intact
    assert leftover_temp_files(out) == []  # the failed write removed its own
    state = RunDir(out).read_state()
    assert state["state"] == states.FAILED and "No space left on device" in state["message"]

    tmpfs.remount("size=1m")
    resumed = run_entry(entry, out, config, tiny_corpus, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert RunDir(out).read_state()["state"] == states.COMPLETED
    assert_same_run(reference, out)


@pytest.mark.parametrize("entry", ["train", "job"])
def test_a_read_only_run_folder_ends_with_one_line(tmp_path, tiny_corpus, config, tmpfs, monkeypatch, entry):
    out = tmpfs.path / "run"
    if entry == "job":
        write_spec(out, config, tiny_corpus)
    with monkeypatch.context() as patch:
        interrupt_at(patch, 7)
        with pytest.raises(TrainingInterrupted):
            run_training(config, out, tiny_corpus, handle_signals=False)
    state_before = (out / "state.json").read_bytes()
    fresh = tmpfs.path / "fresh"
    if entry == "job":
        write_spec(fresh, config, tiny_corpus)
    tmpfs.remount("ro")

    for folder in (out, fresh):  # a run resuming, and a run starting
        result = run_entry(entry, folder, config, tiny_corpus, tmp_path)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        [line] = error_lines(result)
        assert line.startswith(f"ptbjobs: error: cannot write run folder {folder}: Read-only file system")
    assert (out / "state.json").read_bytes() == state_before  # nothing could be written, nothing was
    assert checkpoint.load_latest(out / "checkpoints")[0]["global_step"] == 7


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmpfs):
    target = tmpfs.path / "ckpt.pt"
    atomic_write_bytes(target, b"good")
    tmpfs.remount(f"size={4 * PAGE // 1024}k")
    with pytest.raises(OSError) as full:
        atomic_write_bytes(target, b"x" * 8 * PAGE)
    assert full.value.errno == errno.ENOSPC and full.value.filename == str(target)  # write() names no file
    assert target.read_bytes() == b"good" and leftover_temp_files(tmpfs.path) == []
    tmpfs.remount("ro")
    with pytest.raises(OSError) as read_only:
        atomic_write_bytes(target, b"new")
    assert read_only.value.errno == errno.EROFS
    assert target.read_bytes() == b"good"


def test_the_temp_files_of_writes_cut_off_by_a_kill_are_removed_on_the_next_start(tmp_path, tiny_corpus, config,
                                                                                   monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        interrupt_at(patch, 7)
        with pytest.raises(TrainingInterrupted):
            run_training(config, out, tiny_corpus, handle_signals=False)
    # a process killed (SIGKILL, a power cut) between writing a temp file and renaming it
    killed_while_writing = (
        "import os, signal, sys\nfrom pathlib import Path\nfrom ptbjobs.core.atomic import atomic_write_bytes\n"
        "os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)\n"
        "atomic_write_bytes(Path(sys.argv[1]), b'cut off')\n")
    for name in ("checkpoints/ckpt-000000010.pt", "state.json", "best.pt", "spec.json"):
        killed = subprocess.run([sys.executable, "-c", killed_while_writing, str(out / name)])
        assert killed.returncode == -9
    left = leftover_temp_files(out)
    assert len(left) == 4
    others = out / "notes.tmp"
    others.write_text("not ptbjobs's")

    reporter = NoteTaker()
    run_training(config, out, tiny_corpus, reporter=reporter, handle_signals=False)
    # its own are gone (named on the reporter); submit's spec.json temp and a file of no writer stay
    assert leftover_temp_files(out) == sorted([others, *(p for p in left if p.name.startswith(".spec.json."))])
    assert sum("left by a write that was cut off" in note for note in reporter.notes) == 3


def test_only_a_disk_refusing_a_file_of_the_run_folder_becomes_one_line(tmp_path):
    from ptbjobs.train.run_dir import RunFolderUnwritable

    run = RunDir(tmp_path / "run")
    with pytest.raises(RunFolderUnwritable, match=r"^cannot write run folder .*/run: No space left on device, "
                                                   r"writing checkpoints/ckpt-000000020\.pt \(free space"):
        with run.disk_errors():
            temp = run.checkpoint_dir / ".ckpt-000000020.pt.ab_c9xyz.tmp"
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(temp))
    for unrelated in (OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "elsewhere")),
                      OSError(errno.ENOSPC, "No space left on device"),  # no file named: not known to be ours
                      FileNotFoundError(errno.ENOENT, "No such file or directory", str(run.path / "x"))):
        with pytest.raises(OSError) as passed:
            with run.disk_errors():
                raise unrelated
        assert passed.value is unrelated  # a bug stays a bug, with its traceback
