"""The CLI as a user meets it: error lines, real short runs on PTB, kill -9 and signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import assert_same_run
from ptbjobs.cli import main
from ptbjobs.core import states
from ptbjobs.train.run_dir import RunDir
from ptbjobs.train.runner import run_training


def ptbjobs(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ptbjobs", *args], capture_output=True, text=True, **kwargs)


@pytest.mark.parametrize("args, line", [
    (["train", "--lr", "-1"], "ptbjobs: error: --lr: must be positive, got -1.0"),
    (["train", "--cell", "rnn"], "ptbjobs: error: --cell: must be one of lstm, gru; got 'rnn'"),
    (["train", "--dropout", "1"], "ptbjobs: error: --dropout: must be in [0, 1), got 1.0"),
    (["train", "--epochs", "0"], "ptbjobs: error: --epochs: must be a positive integer, got 0"),
    (["train", "--bptt", "ten"], "ptbjobs: error: --bptt: must be an integer, got 'ten'"),
    (["train", "--hidden-size", "-5"], "ptbjobs: error: --hidden-size: must be a positive integer, got -5"),
    (["train", "--lrr", "1"], "ptbjobs: error: No such option: --lrr (Possible options: --lr) (see --help)"),
    (["train", "--seed", "99999999999999999999999"], "ptbjobs: error: --seed: must be below 2**63, got 99999999999999999999999"),
    (["train", "--init-scale", "inf"], "ptbjobs: error: --init-scale: must be a finite number, got inf"),
    (["train", "--lr", "nan"], "ptbjobs: error: --lr: must be a finite number, got nan"),
    (["eval", "nowhere", "--device", "cpu"], "ptbjobs: error: no weights at nowhere (give a run folder that has finished an epoch, or a best.pt file)"),
])
def test_a_bad_value_gives_one_line_naming_the_flag_and_exit_code_2(capsys, args, line):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.strip() == line


@pytest.mark.parametrize("args", [[], ["data"]])
def test_a_bare_command_group_prints_its_help_and_no_empty_error(args):
    shown = ptbjobs(*args)
    assert "Usage: ptbjobs" in shown.stdout + shown.stderr and "error" not in shown.stderr


def test_a_bad_key_in_a_config_file_names_the_file_and_key(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text('cell = "gru"\ndropout = 1.5\n')
    assert main(["train", "--config", str(config)]) == 2
    assert capsys.readouterr().err.strip() == f"ptbjobs: error: {config}: key 'dropout': must be in [0, 1), got 1.5"


def test_flags_override_the_config_file_before_it_is_checked(tmp_path, tiny_corpus):
    config = tmp_path / "run.toml"  # on its own: a negative lr, and tied weights with unequal sizes
    config.write_text('lr = -1\ntie_weights = true\nemb_size = 16\nhidden_size = 12\nbatch_size = 4\nbptt = 5\n'
                      'eval_batch_size = 3\nepochs = 1\ndevice = "cpu"\n')
    assert main(["train", "--config", str(config), "--lr", "0.5", "--emb-size", "12", "--data-dir", str(tiny_corpus),
                 "--out", str(tmp_path / "run")]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert (saved["lr"], saved["emb_size"], saved["hidden_size"], saved["tie_weights"]) == (0.5, 12, 12, True)


def test_a_no_flag_turns_off_a_boolean_that_the_config_file_turns_on(tmp_path, tiny_corpus, capsys):
    config = tmp_path / "run.toml"
    config.write_text('tie_weights = true\nvariational_dropout = true\nemb_size = 12\nhidden_size = 12\n'
                      'batch_size = 4\nbptt = 5\neval_batch_size = 3\nepochs = 1\ndevice = "cpu"\n')
    assert main(["train", "--config", str(config), "--no-tie-weights", "--no-cuda-graph", "--data-dir", str(tiny_corpus),
                 "--out", str(tmp_path / "run")]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert (saved["tie_weights"], saved["variational_dropout"], saved["cuda_graph"]) == (False, True, False)
    capsys.readouterr()
    assert main(["train", "--tie-weights", "--no-tie-weights", "--out", str(tmp_path / "other")]) == 2
    assert capsys.readouterr().err.strip() == ("ptbjobs: error: --tie-weights and --no-tie-weights contradict each other "
                                               "(give one of them)")
    assert not (tmp_path / "other").exists()


def test_train_help_at_80_columns_names_every_flag_in_full():
    shown = ptbjobs("train", "--help", env={**os.environ, "COLUMNS": "80"}).stdout
    from ptbjobs.train.config import FIELD_HELP

    names = {line.split()[1] for line in shown.splitlines() if line.startswith("│ --")}
    assert {"--" + field.replace("_", "-") for field in FIELD_HELP} <= names
    assert "--no-cuda-graph turns it" in shown  # the one boolean that is on by default says how to turn it off
    assert "--no-tie-weights" in shown and "--no-variational-dropout" in shown  # the others: to override a --config


def test_a_missing_data_folder_says_which_and_how_to_fix_it(tmp_path, capsys):
    assert main(["train", "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "data folder" in err and "does not exist" in err and "ptbjobs data download --data-dir" in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()  # nothing half-made


def test_the_cli_module_does_not_import_torch_until_a_command_needs_it():
    probe = "import sys, ptbjobs.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_every_option_help_keeps_its_square_brackets():
    # typer's rich help reads an unescaped "[default: ...]" as markup and prints nothing of it
    import typer

    from ptbjobs.cli import app

    def options(command, path: str):
        for param in command.params:
            yield f"{path} {param.name}", getattr(param, "help", None) or ""
        for name, sub in getattr(command, "commands", {}).items():
            yield from options(sub, f"{path} {name}")

    found = list(options(typer.main.get_command(app), "ptbjobs"))
    assert len(found) > 30
    unescaped = [where for where, text in found if "[" in text.replace("\\[", "")]
    assert unescaped == []
    shown = ptbjobs("retry", "--help", env={**os.environ, "COLUMNS": "200"}).stdout
    assert "[default: every run that can be retried]" in shown and "[default: the sweep's]" in shown

# the LSTM at Zaremba's size; the GRU at 64 units, which halves its time and still trains a real run on PTB
@pytest.mark.parametrize("cell, extra", [("lstm", []), ("gru", ["--lr", "0.5", "--decay-after", "2", "--emb-size", "64",
                                                                "--hidden-size", "64"])])
def test_a_real_short_run_on_ptb_completes_for_both_cells(tmp_path, ptb_dir, cell, extra):
    out = tmp_path / cell
    result = ptbjobs("train", "--cell", cell, *extra, "--max-steps", "200", "--data-dir", str(ptb_dir),
                     "--out", str(out), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    records = RunDir(out).read_metrics()
    epoch, final = records
    assert epoch["steps"] == 200 and final["truncated"] is True
    # 200 steps of Zaremba's SGD take a 10,000-word model well below uniform (10,000) and below 1,000
    assert epoch["valid_ppl"] < 1000 and final["test_ppl"] < 1000
    assert RunDir(out).read_state()["state"] == states.COMPLETED
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["cell"] == cell and all(f["canonical"] for f in config["data"]["files"].values())
    assert "valid ppl" in result.stderr and "test ppl" in result.stderr  # plain log lines off a terminal
    shown = ptbjobs("eval", str(out), "--data-dir", str(ptb_dir), "--json")
    assert json.loads(shown.stdout)["test"] == pytest.approx(final["test_ppl"], rel=1e-9)


def long_tiny_run(tmp_path, tiny_config, name: str):
    """A run long enough to be stopped mid-way: its uninterrupted reference (trained in-process),
    the folder for the stopped one, and the `ptbjobs train` command that trains it there."""
    from conftest import write_corpus

    data = write_corpus(tmp_path / "bigger", lines=(2500, 40, 40))
    config = tiny_config.replace(epochs=4, checkpoint_every_steps=25)
    args = ["train", "--data-dir", str(data), "--device", "cpu", "--checkpoint-every-min", "0"]
    for key, value in config.to_dict().items():
        if key not in ("device", "checkpoint_every_min"):
            args += ["--" + key.replace("_", "-"), str(value)] if not isinstance(value, bool) else \
                ["--" + ("" if value else "no-") + key.replace("_", "-")]
    reference = tmp_path / "reference"
    run_training(config, reference, data, handle_signals=False)
    out = tmp_path / name
    return reference, out, [sys.executable, "-m", "ptbjobs", *args, "--out", str(out)]


def wait_for_checkpoint(out: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while not list((out / "checkpoints").glob("ckpt-*.pt")):
        assert process.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_a_run_killed_with_sigkill_resumes_with_the_same_command_to_identical_results(tmp_path, tiny_config):
    reference, out, command = long_tiny_run(tmp_path, tiny_config, "killed")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_checkpoint(out, process)
    time.sleep(0.3)  # somewhere further into the run
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert RunDir(out).read_state()["state"] == states.RUNNING  # it had no chance to say otherwise
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stderr
    assert_same_run(reference, out)


def test_sigusr2_saves_the_state_and_exits_75_and_the_rerun_matches(tmp_path, tiny_config):
    reference, out, command = long_tiny_run(tmp_path, tiny_config, "preempted")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(out, process)
    process.send_signal(signal.SIGUSR2)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 75, err
    state = RunDir(out).read_state()
    assert state["state"] == states.INTERRUPTED
    assert f"ckpt-{state['step']:09d}.pt" in os.listdir(out / "checkpoints")
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert_same_run(reference, out)


def test_bench_prints_both_loops_and_their_ratio(ptb_dir):
    result = ptbjobs("bench", "--data-dir", str(ptb_dir), "--device", "cpu", "--steps", "3", "--rounds", "1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "ptbjobs trainer" in lines[1] and "tokens/s" in lines[1]
    assert "reference loop" in lines[2]
    ratio = float(lines[3].split()[-1].rstrip("x"))
    assert ratio > 0
    # and the limit: the step's matrix products alone, at both precisions
    assert lines[4].startswith("  limit at float32") and "(6.34 GFLOP)" in lines[4] and "ptbjobs at" in lines[4]
    assert lines[5].startswith("  limit at bfloat16")


def test_on_a_gpu_the_bench_prints_no_matmul_limit_and_says_why():
    from ptbjobs.train.bench import BenchResult, format_result
    from ptbjobs.train.config import TrainConfig

    result = BenchResult(TrainConfig(), "cuda:0", 16, 400, 1, ours=[420_000.0], reference=[105_000.0],
                         step_mode="CUDA graph, 1 capture(s), 1,217 replays", ours_eager=[106_000.0])
    lines = format_result(result).splitlines()
    assert "(CUDA graph, 1 capture(s), 1,217 replays)" in lines[1] and "--no-cuda-graph" in lines[2]
    assert lines[4].split()[-1] == "4.00x"
    assert lines[5].startswith("  limit") and "not measured on a GPU" in lines[5] and len(lines) == 6


def test_a_steps_matrix_products_are_counted_as_by_hand():
    from ptbjobs.train.config import TrainConfig
    from ptbjobs.train.roofline import step_flops

    # decoder 200 x 10,000 over 400 tokens: forward and two gradients, 3 x 1.6 GFLOP; per LSTM layer
    # (800 gate rows): input projection 3 x 128 MFLOP, recurrent 40 x 6.4 MFLOP + 128 MFLOP
    assert step_flops(TrainConfig(), 10_000) == 4.8e9 + 2 * (384e6 + 256e6 + 128e6)
    assert step_flops(TrainConfig(cell="gru", lr=0.5), 10_000) == 4.8e9 + 2 * (288e6 + 192e6 + 96e6)


def test_data_download_and_verify_through_the_cli(tmp_path, served):
    dest = tmp_path / "ptb"
    fetched = ptbjobs("data", "download", "--data-dir", str(dest), "--mirror", served + "/good/")
    assert fetched.returncode == 0, fetched.stderr
    assert "3 file(s) downloaded and verified" in fetched.stdout
    (dest / "ptb.test.txt").write_text(" not the test set \n")
    checked = ptbjobs("data", "verify", "--data-dir", str(dest))
    assert checked.returncode != 0
    assert "ptb.test.txt: sha256" in checked.stdout
    assert checked.stderr.startswith("ptbjobs: error: 1 of 3 PTB files")


def test_out_pointing_at_a_file_is_refused_in_one_line(tmp_path, tiny_corpus, capsys):
    target = tmp_path / "a-file"
    target.write_text("x")
    assert main(["train", "--data-dir", str(tiny_corpus), "--out", str(target)]) == 2
    assert capsys.readouterr().err.strip() == f"ptbjobs: error: --out {target} is a file, not a folder (give a folder path)"


def test_eval_refuses_a_torch_file_ptbjobs_did_not_write(tmp_path, tiny_corpus, capsys):
    import torch

    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    assert main(["eval", str(other), "--data-dir", str(tiny_corpus)]) == 2
    assert "is not a weights file written by ptbjobs" in capsys.readouterr().err


def test_an_unknown_device_is_bad_input():
    from ptbjobs.core.errors import ConfigError
    from ptbjobs.train.trainer import resolve_device

    with pytest.raises(ConfigError, match="--device: must be auto, cpu, cuda or cuda:N, got 'tpu'"):
        resolve_device("tpu")
