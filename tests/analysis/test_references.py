"""`report --references`: the published results ship inside the package (package data), so they
are found from an installed wheel and from any working directory; a --references-file that is not
there is named as given."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from importlib.resources import files
from pathlib import Path

import pytest
from test_report import known_sweep  # noqa: F401 - the fixture

from ptbjobs.analysis import tables as analysis
from ptbjobs.cli import main
from ptbjobs.core.errors import PtbjobsError

REPO = Path(__file__).resolve().parents[2]
PACKAGED = "ptbjobs/analysis/references.csv"


def test_the_references_are_package_data_and_the_only_copy():
    shipped = files("ptbjobs.analysis").joinpath("references.csv")
    assert shipped.is_file() and "Press & Wolf (2017)" in shipped.read_text()
    assert not (REPO / "analysis" / "references.csv").exists()  # one file, so no two copies drift apart
    frame = analysis.published_references()
    assert list(frame.columns) == ["model", "dropout", "tied", "valid_ppl", "test_ppl", "source"] and len(frame) == 4


def test_report_references_works_from_a_folder_outside_the_checkout(known_sweep, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--sweep-dir", str(known_sweep.path), "--out", "o", "--references"]) == 0
    text = (tmp_path / "o" / "results.md").read_text()
    assert "## Published results (2 x 200 models on PTB)" in text and "| 89.9 | 85.1 |" in text


@pytest.mark.parametrize("given", ["nope.csv", "./nope.csv", "sub/../nope.csv"])
def test_a_missing_references_file_is_one_line_naming_the_flag_and_the_path_as_given(
        known_sweep, tmp_path, monkeypatch, capsys, given):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--sweep-dir", str(known_sweep.path), "--out", "o", "--references-file", given]) == 2
    err = capsys.readouterr().err
    assert err == f"ptbjobs: error: --references-file: no file at {given} (give the path of a CSV of references)\n"
    assert not (tmp_path / "o").exists()


def test_references_missing_from_an_install_are_named_with_the_flag(monkeypatch):
    monkeypatch.setattr(analysis, "REFERENCES_RESOURCE", "no-such-references.csv")
    with pytest.raises(PtbjobsError, match=r"^--references: ptbjobs/analysis/no-such-references.csv is missing"):
        analysis.published_references()


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="building a wheel needs setuptools")
def test_an_installed_wheel_holds_the_references_and_report_references_works_from_it(
        known_sweep, tmp_path):  # noqa: F811
    source = tmp_path / "src"  # a copy: a build leaves build/ and *.egg-info behind
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "ptbjobs", source / "ptbjobs", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(tmp_path / "wheel"), str(source)], check=True, capture_output=True)
    [wheel] = (tmp_path / "wheel").glob("ptbjobs-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read(PACKAGED) == (REPO / PACKAGED).read_bytes()
        archive.extractall(tmp_path / "installed")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "installed")}
    where = subprocess.run([sys.executable, "-c", "import ptbjobs; print(ptbjobs.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert Path(where.strip()).is_relative_to(tmp_path / "installed")  # the wheel's copy, not the checkout
    done = subprocess.run([sys.executable, "-m", "ptbjobs", "report", "--sweep-dir", str(known_sweep.path),
                           "--out", "o", "--references"], cwd=elsewhere, env=env, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "| 89.9 | 85.1 |" in (elsewhere / "o" / "results.md").read_text()
