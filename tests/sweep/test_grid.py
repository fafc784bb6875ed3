"""Grid parsing and expansion: good grids expand as documented; each bad grid gives its one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from ptbjobs.sweep.grid import GridError, parse_grid
from ptbjobs.train.config import CellType, ConfigError

GOOD = '''
name = "study"
[defaults]
epochs = 13
[axes]
cell = ["lstm", "gru"]
dropout = [0.0, 0.25, 0.28]
seed = [1, 2]
[[overrides]]
match = { cell = "gru" }
lr = 0.5
decay_after = 2
[[overrides]]
match = { dropout = 0.25 }
epochs = 39
[[exclude]]
cell = "lstm"
dropout = 0.28
[[exclude]]
cell = "gru"
dropout = 0.25
[resources]
partition = "gpu"
gpus_per_node = 1
timeout_min = 90
extra_sbatch = ["--exclusive"]
'''


def parse(text: str):
    return parse_grid(text, Path("grid.toml"))


def test_the_seed_reports_study_is_one_file():
    grid = parse(GOOD)
    keys = [run.key for run in grid.runs]
    assert keys == ["lstm-d0-s1", "lstm-d0-s2", "lstm-d0.25-s1", "lstm-d0.25-s2",
                    "gru-d0-s1", "gru-d0-s2", "gru-d0.28-s1", "gru-d0.28-s2"]
    by_key = {run.key: run.config for run in grid.runs}
    assert by_key["gru-d0-s1"].lr == 0.5 and by_key["gru-d0-s1"].decay_after == 2
    assert by_key["lstm-d0.25-s2"].epochs == 39 and by_key["lstm-d0.25-s2"].lr == 1.0
    assert by_key["gru-d0.28-s1"].epochs == 13 and by_key["gru-d0.28-s1"].cell is CellType.GRU
    assert grid.resources.partition == "gpu" and grid.resources.timeout_min == 90
    assert grid.resources.extra_sbatch == ("--exclusive",)


def test_later_overrides_win_and_include_adds_a_point_with_its_own_fields():
    grid = parse('''
name = "s"
[axes]
cell = ["lstm"]
seed = [1]
[[overrides]]
match = { cell = "lstm" }
lr = 0.8
[[overrides]]
match = { seed = 1 }
lr = 0.7
[[include]]
cell = "gru"
seed = 5
lr = 0.3
''')
    assert [(r.key, r.config.lr) for r in grid.runs] == [("lstm-d0-s1", 0.7), ("gru-d0-s5-lr0.3", 0.3)]


def test_an_included_points_own_fields_show_in_its_key():
    grid = parse('name = "s"\n[axes]\ndropout = [0.3]\n[[include]]\ndropout = 0.35\ntie_weights = true\n')
    assert [r.key for r in grid.runs] == ["lstm-d0.3-s1", "lstm-d0.35-s1-tieweightsT"]


def test_a_point_of_the_grid_included_again_with_its_own_fields_is_another_run_with_the_points_overrides():
    grid = parse('''
name = "s"
[axes]
dropout = [0.0, 0.275]
seed = [1, 2]
[[overrides]]
match = { dropout = 0.275 }
epochs = 32
[[include]]
dropout = 0.275
seed = 2
weight_decay = 1e-5
''')
    assert [(r.key, r.config.epochs, r.config.weight_decay) for r in grid.runs][-2:] == [
        ("lstm-d0.275-s2", 32, 0.0), ("lstm-d0.275-s2-weightdecay1e-05", 32, 1e-5)]
    assert len({r.config_hash() for r in grid.runs}) == 5
    # and a point first included with fields of its own may still be included bare
    grid = parse('name = "s"\n[axes]\nseed = [1]\n[[include]]\nseed = 2\nlr = 0.5\n[[include]]\nseed = 2\n')
    assert [r.key for r in grid.runs] == ["lstm-d0-s1", "lstm-d0-s2-lr0.5", "lstm-d0-s2"]


def test_config_hash_is_the_hash_of_the_sorted_identity_json_however_it_is_built():
    import hashlib
    import json

    from ptbjobs.sweep.grid import config_hash
    from ptbjobs.train.config import FIELD_DEFAULTS, LATER_FIELDS, RESUME_NEUTRAL_FIELDS

    def reference(config):  # the definition every stored run's hash was made with
        identity = {k: v for k, v in config.to_dict().items()
                    if k not in RESUME_NEUTRAL_FIELDS and not (k in LATER_FIELDS and v == FIELD_DEFAULTS[k])}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]

    grid = parse('name = "s"\n[defaults]\nepochs = 3\ndevice = "cpu"\n[axes]\ncell = ["lstm", "gru"]\n'
                 'dropout = [0.0, -0.0, 0.5]\nweight_decay = [0.0, 1e-5]\ntie_weights = [true, false]\n'
                 '[[overrides]]\nmatch = { cell = "gru" }\nlr = 0.5\n')
    for run in grid.runs:  # the grid's own (built from the fields it sets) and the general one
        assert run.config_hash() == config_hash(run.config) == reference(run.config), run.key
    assert grid.runs[0].config_hash() != grid.runs[1].config_hash()  # -0.0 is not 0.0 for json, nor here


def test_any_training_field_can_be_an_axis_and_shows_in_the_key():
    grid = parse('name = "s"\n[axes]\nlr = [0.5, 1.0]\ntie_weights = [true]\n')
    assert [r.key for r in grid.runs] == ["lstm-d0-s1-lr0.5-tieweightsT", "lstm-d0-s1-lr1-tieweightsT"]


def test_run_keys_are_stable_and_config_hashes_follow_the_config():
    a, b = parse(GOOD), parse(GOOD)
    assert [r.key for r in a.runs] == [r.key for r in b.runs]
    assert [r.config_hash() for r in a.runs] == [r.config_hash() for r in b.runs]
    changed = parse(GOOD.replace("epochs = 13", "epochs = 14"))
    assert changed.runs[0].key == a.runs[0].key and changed.runs[0].config_hash() != a.runs[0].config_hash()


def test_keys_that_print_alike_get_a_hash():
    grid = parse('name = "s"\n[axes]\nlr = [0.12345671, 0.12345672]\n')
    keys = [r.key for r in grid.runs]
    assert len(set(keys)) == 2 and all(k.startswith("lstm-d0-s1-lr0.123457-") for k in keys)


BAD = [
    # (name, grid text, the expected message, in full or its distinctive part)
    ("not toml", 'name = "s"\n[axes\n', "grid.toml: not valid TOML"),
    ("unknown top-level key", 'name = "s"\nsweeps = 1\n[axes]\nseed = [1]\n',
     "grid.toml:2: sweeps: unknown top-level key (valid keys: name, data_dir, defaults, axes"),
    ("no name", '[axes]\nseed = [1]\n', "grid.toml: name: the sweep needs a name"),
    ("name with a space", 'name = "my sweep"\n[axes]\nseed = [1]\n', "grid.toml:1: name: the sweep needs a name"),
    ("name with a slash", 'name = "../x"\n[axes]\nseed = [1]\n', "grid.toml:1: name: the sweep needs a name"),
    ("no axes", 'name = "s"\n', "grid.toml: axes: the grid has no [axes] table"),
    ("empty axis", 'name = "s"\n[axes]\nseed = []\n', "grid.toml:3: axes.seed: is empty: the grid would have no runs"),
    ("axis not a list", 'name = "s"\n[axes]\nseed = 1\n', "grid.toml:3: axes.seed: must be a list of values, got 1 (write seed = [1])"),
    ("duplicate axis value", 'name = "s"\n[axes]\nseed = [1, 1]\n', "grid.toml:3: axes.seed: lists a value twice"),
    ("unknown axis", 'name = "s"\n[axes]\nlayers = [2]\n', "grid.toml:3: axes.layers: not a training field (valid fields: cell,"),
    ("unknown cell", 'name = "s"\n[axes]\ncell = ["lstm", "rnn"]\n', "grid.toml:3: axes.cell: must be one of lstm, gru; got 'rnn'"),
    ("dropout of one", 'name = "s"\n[axes]\ndropout = [0.5, 1.0]\n', "grid.toml:3: axes.dropout: must be in [0, 1), got 1.0"),
    ("negative lr default", 'name = "s"\n[defaults]\nlr = -1\n[axes]\nseed = [1]\n', "grid.toml:3: defaults.lr: must be positive, got -1.0"),
    ("wrong type", 'name = "s"\n[defaults]\nepochs = "ten"\n[axes]\nseed = [1]\n', "grid.toml:3: defaults.epochs: must be an integer, got 'ten'"),
    ("unknown default", 'name = "s"\n[defaults]\nlearning_rate = 1\n[axes]\nseed = [1]\n', "grid.toml:3: defaults.learning_rate: not a training field"),
    ("override without match", 'name = "s"\n[axes]\nseed = [1]\n[[overrides]]\nlr = 0.5\n', "overrides[0].match: each [[overrides]] needs match"),
    ("override matching a non-axis", 'name = "s"\n[axes]\nseed = [1]\n[[overrides]]\nmatch = { cell = "gru" }\nlr = 0.5\n',
     "grid.toml:5: overrides[0].cell: is not an axis of this grid (match on: seed)"),
    ("override of an axis", 'name = "s"\n[axes]\nseed = [1]\n[[overrides]]\nmatch = { seed = 1 }\nseed = 2\n',
     "grid.toml:6: overrides[0].seed: is an axis: an override cannot change it"),
    ("bad override value", 'name = "s"\n[axes]\ncell = ["gru"]\n[[overrides]]\nmatch = { cell = "gru" }\nclip = -1\n',
     "grid.toml:6: overrides[0].clip: must be 0 or more, got -1.0"),
    ("exclude of a non-axis", 'name = "s"\n[axes]\nseed = [1, 2]\n[[exclude]]\nlr = 1\n', "grid.toml:5: exclude[0].lr: is not an axis of this grid"),
    ("everything excluded", 'name = "s"\n[axes]\nseed = [1]\n[[exclude]]\nseed = 1\n', "grid.toml: exclude: every point of the grid is excluded"),
    ("include missing an axis", 'name = "s"\n[axes]\nseed = [1]\ncell = ["lstm"]\n[[include]]\nseed = 2\n',
     "grid.toml:5: include[0]: lacks a value for axis cell (an included point gives every axis a value)"),
    ("include duplicating a point", 'name = "s"\n[axes]\nseed = [1]\n[[include]]\nseed = 1\n', "grid.toml:4: include[0]: the point seed=1 is already in the grid"),
    ("include whose own fields change nothing", 'name = "s"\n[axes]\nseed = [1]\n[defaults]\nlr = 0.5\n[[include]]\nseed = 1\nlr = 0.5\n',
     "grid.toml:6: include[0]: gives the same run as lstm-d0-s1 (its own fields change nothing)"),
    ("two includes alike", 'name = "s"\n[axes]\nseed = [1]\n[[include]]\nseed = 2\nlr = 0.5\n[[include]]\nseed = 2\nlr = 0.5\n',
     "grid.toml:7: include[1]: gives the same run as lstm-d0-s2-lr0.5"),
    ("cross-field conflict", 'name = "s"\n[defaults]\ntie_weights = true\nemb_size = 100\n[axes]\nseed = [1]\n',
     "grid.toml:3: the run seed=1 gets an invalid config: tie_weights: needs emb_size == hidden_size, got 100 and 200 "
     "(set both sizes equal or drop tie_weights)"),
    ("a misspelt table", 'name = "s"\n[axis]\nseed = [1]\n', "grid.toml:2: axis: unknown top-level key"),
    ("a dotted key", 'name = "s"\ndefaults.epoch = 3\n[axes]\nseed = [1]\n', "grid.toml:2: defaults.epoch: not a training field"),
    ("partition with a space", 'name = "s"\n[axes]\nseed = [1]\n[resources]\npartition = "gpu long"\n',
     "grid.toml:5: resources.partition: 'gpu long' is not a plain partition name"),
    ("account with a newline", 'name = "s"\n[axes]\nseed = [1]\n[resources]\naccount = "me\\n#SBATCH --qos=high"\n',
     "resources.account: 'me\\n#SBATCH --qos=high' is not a plain account name"),
    ("qos with a semicolon", 'name = "s"\n[axes]\nseed = [1]\n[resources]\nqos = "normal;rm"\n', "resources.qos: 'normal;rm' is not a plain qos name"),
    ("extra sbatch injecting shell", 'name = "s"\n[axes]\nseed = [1]\n[resources]\nextra_sbatch = ["--comment=$(reboot)"]\n',
     "resources.extra_sbatch: ['--comment=$(reboot)'] is not a list of --option[=value] strings"),
    ("extra sbatch not an option", 'name = "s"\n[axes]\nseed = [1]\n[resources]\nextra_sbatch = ["#SBATCH --exclusive"]\n',
     "resources.extra_sbatch: ['#SBATCH --exclusive'] is not a list"),
    ("extra sbatch overriding the requeue signal", 'name = "s"\n[axes]\nseed = [1]\n[resources]\nextra_sbatch = ["--exclusive", "--signal=B:USR1@60"]\n',
     "grid.toml:5: resources.extra_sbatch: --signal is set by ptbjobs (ptbjobs asks for USR2 before the time limit itself: set timeout_min)"),
    ("extra sbatch moving the logs", 'name = "s"\n[axes]\nseed = [1]\n[resources]\nextra_sbatch = ["--output=/tmp/x.log"]\n',
     "resources.extra_sbatch: --output is set by ptbjobs (ptbjobs writes each task's log where `ptbjobs logs` reads it: remove it)"),
    ("extra sbatch turning requeues off", 'name = "s"\n[axes]\nseed = [1]\n[resources]\nextra_sbatch = ["--no-requeue"]\n',
     "resources.extra_sbatch: --no-requeue is set by ptbjobs (set max_requeues = 0)"),
    ("extra sbatch renaming the jobs", 'name = "s"\n[axes]\nseed = [1]\n[resources]\nextra_sbatch = ["--job-name=mine"]\n',
     "resources.extra_sbatch: --job-name is set by ptbjobs (ptbjobs names each array after the sweep"),
    ("extra sbatch with an array", 'name = "s"\n[axes]\nseed = [1]\n[resources]\nextra_sbatch = ["--array=0-9"]\n',
     "resources.extra_sbatch: --array is set by ptbjobs (ptbjobs makes the arrays: set array_parallelism"),
    ("negative gpus", 'name = "s"\n[axes]\nseed = [1]\n[resources]\ngpus_per_node = -1\n', "grid.toml:5: resources.gpus_per_node: must be a whole number >= 0, got -1"),
    ("timeout as a string", 'name = "s"\n[axes]\nseed = [1]\n[resources]\ntimeout_min = "01:00:00"\n',
     "resources.timeout_min: must be a whole number >= 0, got '01:00:00'"),
    ("zero timeout", 'name = "s"\n[axes]\nseed = [1]\n[resources]\ntimeout_min = 0\n', "resources.timeout_min: must be from 1 minute to a year, got 0"),
    ("a timeout of centuries", 'name = "s"\n[axes]\nseed = [1]\n[resources]\ntimeout_min = 99999999999\n',
     "resources.timeout_min: must be from 1 minute to a year, got 99999999999"),
    ("memory of infinity", 'name = "s"\n[axes]\nseed = [1]\n[resources]\nmem_gb = inf\n',
     "grid.toml:5: resources.mem_gb: must be a finite number >= 0, got inf"),
    ("a target of nan", 'name = "s"\n[axes]\nseed = [1]\n[targets]\nvalid_ppl_dropout = nan\n',
     "targets.valid_ppl_dropout: must be a perplexity above 1, got nan"),
    ("fuse as a word", 'name = "s"\n[axes]\nseed = [1]\n[resources]\nruns_per_gpu = 4\nfuse = "yes"\n',
     "grid.toml:6: resources.fuse: must be true or false, got 'yes'"),
    ("fuse of packs of one", 'name = "s"\n[axes]\nseed = [1]\n[resources]\nfuse = true\n',
     "grid.toml:5: resources.fuse: fuses the runs of each pack, and runs_per_gpu is 1 (set runs_per_gpu to"),
    ("unknown resource", 'name = "s"\n[axes]\nseed = [1]\n[resources]\ngpu = 1\n', "grid.toml:5: resources.gpu: unknown key (valid keys: partition,"),
    ("bad target", 'name = "s"\n[axes]\nseed = [1]\n[targets]\nvalid_ppl_dropout = 0\n', "targets.valid_ppl_dropout: must be a perplexity above 1, got 0"),
    ("resources not a table", 'name = "s"\nresources = 3\n[axes]\nseed = [1]\n', "grid.toml:2: resources: must be a table [resources]"),
]


@pytest.mark.parametrize("text, expected", [(text, expected) for _, text, expected in BAD], ids=[name for name, _, _ in BAD])
def test_a_bad_grid_is_refused_with_one_line_naming_file_key_and_fix(text, expected):
    with pytest.raises(GridError) as caught:
        parse(text)
    line = str(caught.value)
    assert "\n" not in line
    assert expected in line, line
    assert caught.value.exit_code == 2


def test_there_are_at_least_25_bad_grids():
    assert len(BAD) >= 25


def test_a_huge_grid_is_refused_before_it_is_expanded():
    text = 'name = "s"\n[axes]\nseed = [' + ", ".join(map(str, range(200))) + ']\nlr = [' + \
        ", ".join(f"{(i + 1) / 100}" for i in range(60)) + "]\n"
    with pytest.raises(GridError, match=r"expands to 12,000 runs \(add --yes if you mean it\)"):
        parse_grid(text, Path("grid.toml"), allow_large=False)
    assert len(parse_grid(text, Path("grid.toml"), allow_large=True).runs) == 12_000


def test_keys_differing_only_in_execution_fields_are_still_unique():
    grid = parse('name = "s"\n[axes]\ncheckpoint_every_min = [0.1234567, 0.1234568]\n')
    assert len({r.key for r in grid.runs}) == 2


def test_a_grid_file_that_is_not_text_is_refused(tmp_path):
    from ptbjobs.sweep.grid import load_grid

    path = tmp_path / "grid.toml"
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(GridError, match="not UTF-8 text"):
        load_grid(path)


LAUNCH = Path(__file__).resolve().parents[2] / "launch"


@pytest.mark.parametrize("path", sorted(LAUNCH.rglob("*.toml")), ids=lambda p: str(p.relative_to(LAUNCH)))
def test_every_grid_in_launch_loads(path):
    from ptbjobs.sweep.grid import load_grid

    assert load_grid(path).runs


def test_the_study_grids_hold_every_variant_for_three_seeds():
    from ptbjobs.sweep.grid import load_grid

    study = load_grid(LAUNCH / "zaremba-small.toml")
    points = {(r.config.cell.value, r.config.dropout, r.config.weight_decay) for r in study.runs}
    assert points == {(cell, 0.0, 0.0) for cell in ("lstm", "gru")} | \
        {("lstm", p, 0.0) for p in (0.275, 0.3, 0.35, 0.45)} | {("gru", p, 0.0) for p in (0.325, 0.35, 0.45)} | \
        {("lstm", 0.275, 3e-5), ("gru", 0.35, 2e-5)}  # weight decay: each cell's best of its pilots
    assert sorted({r.config.seed for r in study.runs}) == [1, 2, 3] and len(study.runs) == 3 * len(points)
    for run in study.runs:  # Zaremba's small schedule without dropout, longer ones with it
        config = run.config
        assert config.lr == (0.5 if config.cell.value == "gru" else 1.0)
        schedule = (config.epochs, config.decay_after, round(1 / config.lr_decay, 6))
        if config.dropout == 0:
            assert schedule == (13, 2 if config.cell.value == "gru" else 4, 2.0)
        elif config.dropout in (0.3, 0.325):
            assert schedule == (48, 10, 1.1)   # round 2's slower anneal
        else:
            assert schedule == (32, 10, 1.2)   # round 1's schedule
    beyond = load_grid(LAUNCH / "beyond.toml")
    assert sorted({(r.config.dropout, r.config.weight_decay) for r in beyond.runs}) == [
        (0.25, 0.0), (0.25, 3e-5), (0.45, 0.0), (0.6, 0.0)] and len(beyond.runs) == 12
    assert all(r.config.tie_weights and r.config.variational_dropout for r in beyond.runs)


def test_the_study_grids_keep_the_finished_runs_of_earlier_rounds():
    """A round adds rates; it must not change a run that already finished, or `ptbjobs submit`
    would not skip it when the archived folders are unpacked (and the record would no longer
    match the grid). The archive's manifests hold each finished run's config hash."""
    import json
    import tarfile

    from ptbjobs.sweep.grid import load_grid

    archive = LAUNCH.parent / "analysis" / "study" / "run-folders.tar.gz"
    with tarfile.open(archive) as tar:
        for sweep in ("zaremba-small", "beyond"):
            finished = json.load(tar.extractfile(f"runs/{sweep}/manifest.json"))["runs"]
            current = {run.key: run.config_hash() for run in load_grid(LAUNCH / f"{sweep}.toml").runs}
            assert finished and all(current.get(key) == entry["config_hash"] for key, entry in finished.items()), sweep


def test_a_field_added_later_leaves_the_hash_of_a_run_at_its_default_unchanged():
    """Finished runs must stay finished when ptbjobs gains a field: their manifests hold hashes
    computed before it existed."""
    from ptbjobs.sweep.grid import config_hash
    from ptbjobs.train.config import LATER_FIELDS, TrainConfig

    assert {"recurrent_dropout", "word_dropout", "weight_decay"} <= LATER_FIELDS
    config = TrainConfig(dropout=0.35)
    identity = {k: v for k, v in config.to_dict().items()
                if k not in ("device", "cuda_graph", "checkpoint_every_min", "checkpoint_every_steps", *LATER_FIELDS)}
    import hashlib
    import json
    assert config_hash(config) == hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
    for later in ({"recurrent_dropout": 0.25}, {"word_dropout": 0.1}, {"weight_decay": 1e-6}):
        assert config_hash(config.replace(**later)) != config_hash(config), later


def test_a_changed_run_is_described_by_what_changed_not_by_a_field_its_manifest_predates():
    from ptbjobs.launch.submit import _describe_change
    from ptbjobs.sweep.grid import RunSpec
    from ptbjobs.train.config import TrainConfig

    saved = TrainConfig(dropout=0.35).to_dict()
    del saved["recurrent_dropout"]
    spec = RunSpec(key="lstm-d0.35-s1", config=TrainConfig(dropout=0.35, epochs=32), point={})
    assert _describe_change(spec, {"runs": {}}, {"config": saved}) == "lstm-d0.35-s1 (epochs 13 -> 32)"


def test_a_grid_data_dir_that_lacks_the_files_names_the_grid_key(tmp_path, monkeypatch, tiny_corpus):
    from ptbjobs.core.errors import DataError
    from ptbjobs.launch.submit import check_data

    monkeypatch.setenv("PTBJOBS_DATA", str(tiny_corpus))  # not consulted: the grid's key comes first
    grid = parse(f'name = "s"\ndata_dir = "{tmp_path / "none"}"\n[axes]\nseed = [1]\n')
    with pytest.raises(DataError) as caught:
        check_data(grid, None)
    assert str(caught.value).startswith(f"grid.toml: data_dir = '{tmp_path / 'none'}': missing data file ")
    assert str(caught.value).endswith("(fix data_dir in the grid, or give --data-dir)")
    assert check_data(grid, tiny_corpus) == tiny_corpus.resolve()  # --data-dir overrides it


def test_select_runs_keeps_the_runs_matching_every_key_and_any_value_of_a_repeated_one(tmp_path):
    from ptbjobs.sweep.grid import load_grid
    from ptbjobs.sweep.select import select_runs

    grid = load_grid(LAUNCH / "zaremba-small.toml")
    picked = select_runs(grid, ["cell=lstm", "dropout=0.275", "weight_decay=3e-5", "seed=2", "seed=3"])
    assert [r.key for r in picked.runs] == ["lstm-d0.275-s2-weightdecay3e-05", "lstm-d0.275-s3-weightdecay3e-05"]
    assert picked.text == grid.text and len(grid.runs) > len(picked.runs)  # the grid itself is left whole
    # a float typed as printed matches the grid's value: 1/1.2 written out in full there
    assert {r.config.lr_decay for r in select_runs(grid, ["lr_decay=0.8333"]).runs} == {0.8333333333333334}
    # a flag's spelling, any case of a word, spaces: all as in a grid
    assert len(select_runs(grid, [" tie-weights = no ", "cell=GRU"]).runs) == len(select_runs(grid, ["cell=gru"]).runs)


def test_select_runs_says_which_value_or_combination_no_run_has(tmp_path):
    from ptbjobs.sweep.grid import load_grid
    from ptbjobs.sweep.select import select_runs

    grid = load_grid(LAUNCH / "zaremba-small.toml")
    with pytest.raises(ConfigError, match=r"^--only seed=4: no run of .*zaremba-small.toml has that seed \(its runs have 1, 2, 3\)$"):
        select_runs(grid, ["seed=2", "seed=4"])
    with pytest.raises(ConfigError, match=r"^--only: no run of .* has all of cell=gru dropout=0.275 \("):
        select_runs(grid, ["cell=gru", "dropout=0.275"])
    path = tmp_path / "near.toml"  # two values within the tolerance of a short one: it names neither
    path.write_text('name = "near"\n[axes]\ndropout = [0.1234567, 0.1234568]\nseed = [1]\n')
    near = load_grid(path)
    assert [r.config.dropout for r in select_runs(near, ["dropout=0.1234567"]).runs] == [0.1234567]
    with pytest.raises(ConfigError, match="has that dropout"):
        select_runs(near, ["dropout=0.12346"])
