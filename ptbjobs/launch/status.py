"""`ptbjobs status`: every run of a sweep in one table, from the run folders and one executor
query. Nothing here imports torch, so it answers in a fraction of a second even for 1,000 runs.

The `--json` schema (version 1) is one object:
    {"version": 1, "sweep": name, "dir": path, "time": unix time,
     "summary": {state: count, ...},
     "notes": [what the executor said of its answer, e.g. that Slurm did not answer],
     "runs": [{"key", "cell", "dropout", "seed", "executor", "job_id", "attempts", "state",
               "epoch", "epochs", "train_ppl", "valid_ppl", "best_valid_ppl", "test_ppl",
               "elapsed_s", "eta_s", "problem"}, ...],
     "search": {"rungs": [{"epoch", "reached", "went_on"}, ...],       (a search with rungs only)
                "runs": {key: {"rung": last rung reached, "promoted": paused there, then promoted}}}}
Numbers the run has not produced yet are null. "problem" names a file of the run's folder that
cannot be read and what is wrong with it (the run is DAMAGED unless its job is still going), else null.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from typing import Any

from ptbjobs.core import states
from ptbjobs.core.errors import PtbjobsError
from ptbjobs.executors.slurm_answers import poll_interval_s
from ptbjobs.launch.feed import feed, feed_if_stuck
from ptbjobs.launch.run_states import run_states, run_tries
from ptbjobs.sweep.arrivals import rung_summary
from ptbjobs.sweep.folder import Sweep, latest_job, run_config
from ptbjobs.sweep.grid import Resources
from ptbjobs.sweep.index import add_to_index, read_index
from ptbjobs.train.run_dir import PROGRESS_FILE, DamagedFile, RunDir

STATUS_SCHEMA_VERSION = 1


def collect(sweep: Sweep, max_age_s: float | None = None) -> dict[str, Any]:
    """The status of every run: a finished run's row from the sweep index, the others' from their
    folders and one executor query, or its answer up to `max_age_s` old (see run_states); the runs
    found finished are indexed for the next look."""
    read_from = time.time()
    manifest = sweep.read_manifest()
    indexed = read_index(sweep, manifest)
    notes: list[str] = []
    damaged: dict[str, DamagedFile] = {}
    job_tries: dict[str, int] = {}
    current = run_states(sweep, manifest, notes, damaged=damaged, job_tries=job_tries, indexed=indexed,
                         max_age_s=max_age_s)
    now = time.time()
    stall_s = 60 * manifest.get("stall_after_min", Resources().stall_after_min)
    rows, new_rows = [], []
    for key, entry in manifest["runs"].items():
        if key in indexed:
            rows.append(indexed[key])
            continue
        rows.append(_row(sweep, key, run_config(manifest, entry), entry, current[key], now, damaged.get(key), stall_s,
                         run_tries(entry["jobs"], job_tries)))
        new_rows.append(rows[-1])
    add_to_index(sweep, manifest, new_rows, read_from)
    stuck = feed_if_stuck(sweep, manifest, current)
    if stuck:
        notes.append(stuck)
    notes += [f"{row['key']}: {row['problem']}; `ptbjobs retry --run {row['key']}` resumes it from its last checkpoint"
              if row["state"] in states.RETRYABLE else f"{row['key']}: {row['problem']}"
              for row in rows if row["problem"]]
    status = {"version": STATUS_SCHEMA_VERSION, "sweep": manifest.get("name", sweep.path.name),
              "dir": str(sweep.path), "time": now, "summary": dict(Counter(r["state"] for r in rows)), "notes": notes,
              "runs": rows}
    if manifest.get("search"):
        status["search"] = rung_summary(sweep.path, manifest["search"]["keep"])
    return status


def status_json(status: dict[str, Any]) -> str:
    """The --json document of `collect`'s answer: the rows from the index snapshot as the text it
    kept of them, the others encoded now (the same text either way)."""
    runs = ", ".join(getattr(row, "text", None) or json.dumps(row) for row in status["runs"])
    return json.dumps({**status, "runs": None}).replace('"runs": null', f'"runs": [{runs}]', 1)


def _row(sweep: Sweep, key: str, config: dict[str, Any], entry: dict[str, Any], state: str, now: float,
         damage: DamagedFile | None, stall_s: float, tries: int) -> dict[str, Any]:
    run = RunDir(sweep.run_dir(key))
    try:
        epochs_done, last, best_valid, final = _metrics_summary(run)
    except DamagedFile as exc:
        epochs_done, last, best_valid, final = 0, None, None, None
        damage = damage or exc
        if not states.is_active(state):
            state = states.DAMAGED
    job = latest_job(entry)
    progress = None
    if state == states.RUNNING:
        try:
            progress = _read_progress(run)
        except DamagedFile as exc:
            damage = damage or exc
    if state == states.RUNNING and stall_s > 0 and now - _last_heartbeat(run, progress, now) > stall_s:
        state = states.STALLED  # stopped, or hung: its job holds on, and its ETA means nothing
    elapsed = final["elapsed_s"] if final else last["elapsed_s"] if last else None
    if _reports_progress(progress):
        elapsed = progress["elapsed_s"] + (max(0.0, now - progress["time"]) if state == states.RUNNING else 0.0)
    return {
        "key": key, "cell": config["cell"], "dropout": config["dropout"], "seed": config["seed"],
        "executor": job["executor"] if job else None, "job_id": job["job_id"] if job else None,
        "attempts": tries, "state": state,
        "epoch": epochs_done, "epochs": config["epochs"],
        "train_ppl": last["train_ppl"] if last else None, "valid_ppl": last["valid_ppl"] if last else None,
        "best_valid_ppl": best_valid,
        "test_ppl": final["test_ppl"] if final else None,
        "elapsed_s": elapsed, "eta_s": _eta(config, epochs_done, last, progress) if state == states.RUNNING else None,
        "problem": f"{damage.path} {damage.problem}" if damage else None,
    }


def _last_heartbeat(run: RunDir, progress: dict[str, Any] | None, now: float) -> float:
    """When the run last showed it was at work: its heartbeat, else (before the first one) when it
    started (state.json RUNNING)."""
    if progress is not None:
        return progress["time"]
    try:
        return run.state_path.stat().st_mtime
    except OSError:
        return now


_VALID_PPL = re.compile(r'"valid_ppl": ([0-9.eE+-]+)')


def _metrics_summary(run: RunDir) -> tuple[int, dict | None, float | None, dict | None]:
    """(epochs done, last epoch record, best valid ppl, final record) without parsing every line:
    status reads this for every run of a sweep, and a JSON parse per epoch line adds up."""
    try:
        text = run.metrics_path.read_text()
    except FileNotFoundError:
        return 0, None, None, None
    except (OSError, UnicodeDecodeError) as exc:
        raise DamagedFile(run.metrics_path, f"cannot be read ({exc})") from None
    if text and not text.endswith("\n"):
        raise DamagedFile(run.metrics_path, "is cut short (its last line is incomplete)")
    lines = text.splitlines()
    final = _record(run, lines[-1], _FINAL_NUMBERS) if lines and '"final"' in lines[-1] else None
    epoch_lines = lines[:-1] if final else lines
    last = _record(run, epoch_lines[-1], _EPOCH_NUMBERS) if epoch_lines else None
    best = min((float(v) for v in _VALID_PPL.findall("\n".join(epoch_lines))), default=None)
    return len(epoch_lines), last, best, final


_EPOCH_NUMBERS = ("train_ppl", "valid_ppl", "elapsed_s")
_FINAL_NUMBERS = ("test_ppl", "elapsed_s")


def _record(run: RunDir, line: str, numbers: tuple[str, ...]) -> dict[str, Any]:
    """One line of metrics.jsonl, with the numbers status shows."""
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if not isinstance(record, dict) or not all(_is_number(record.get(name)) for name in numbers):
        raise DamagedFile(run.metrics_path, "holds a line that is not a metrics record")
    return record


_PROGRESS_NUMBERS = ("time", "elapsed_s", "chunk", "chunks", "tokens_per_s")


def _read_progress(run: RunDir) -> dict[str, Any] | None:
    """The heartbeat, or None if there is none yet; DamagedFile if it is not one (a running run
    writes it anew within seconds, so it stays RUNNING meanwhile, without an ETA). A beat written
    before the first progress report (evaluating, saving) has its time only."""
    path = run.path / PROGRESS_FILE
    try:
        progress = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        progress = None
    if not isinstance(progress, dict) or not _is_number(progress.get("time")):
        raise DamagedFile(path, "is not a heartbeat record")
    if set(progress) != {"time"} and not all(_is_number(progress.get(name)) for name in _PROGRESS_NUMBERS):
        raise DamagedFile(path, "is not a heartbeat record")
    return progress


def _reports_progress(progress: dict[str, Any] | None) -> bool:
    return progress is not None and "elapsed_s" in progress


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _eta(config: dict[str, Any], epochs_done: int, last: dict[str, Any] | None, progress: dict[str, Any] | None) -> float | None:
    """Remaining epochs times the time an epoch takes (measured so far)."""
    if not _reports_progress(progress) or not progress.get("tokens_per_s"):
        return None
    tokens_per_epoch = progress["chunks"] * config["bptt"] * config["batch_size"]
    epoch_s = tokens_per_epoch / progress["tokens_per_s"]
    if last:
        epoch_s = last["elapsed_s"] / epochs_done  # evaluation included
    left = config["epochs"] - epochs_done - progress["chunk"] / max(progress["chunks"], 1)
    return max(0.0, left) * epoch_s


# ---- rendering ----

STATE_STYLES = {states.COMPLETED: "green", states.RUNNING: "cyan", states.PENDING: "yellow",
                states.QUEUED_LOCALLY: "yellow",
                states.REQUEUED: "yellow", states.NOT_SUBMITTED: "dim italic", states.DIVERGED: "bold magenta",
                states.LOST: "bold magenta", states.UNKNOWN: "dim italic", states.STALLED: "bold red", states.PRUNED: "dim"}


COLUMNS = [("run", "<"), ("cell", "<"), ("dropout", ">"), ("seed", ">"), ("job", "<"), ("state", "<"),
           ("epoch", ">"), ("train", ">"), ("valid", ">"), ("best valid", ">"), ("test", ">"),
           ("elapsed", ">"), ("ETA", ">"), ("tries", ">")]


# above this many runs the table lists only the runs not completed (a row per completed run of a
# sweep of 100,000 says nothing at a glance): --all lists every one, and --json has every run
FULL_TABLE_RUNS = 1000


def listed_runs(status: dict[str, Any], every_run: bool = False) -> list[dict[str, Any]]:
    """The rows the table shows."""
    if every_run or len(status["runs"]) <= FULL_TABLE_RUNS:
        return status["runs"]
    return [r for r in status["runs"] if r["state"] != states.COMPLETED]


def table_lines(status: dict[str, Any], rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """The table as lines of aligned columns, each cut around its state cell (before, state,
    after) so that the state alone can be coloured; the first two lines are the header and its rule."""
    cells = [[r["key"], r["cell"], f"{r['dropout']:g}", str(r["seed"]), r["job_id"] or "-", r["state"],
              f"{r['epoch']}/{r['epochs']}", _num(r["train_ppl"]), _num(r["valid_ppl"]), _num(r["best_valid_ppl"]),
              _num(r["test_ppl"]), _dur(r["elapsed_s"]), _dur(r["eta_s"]), str(r["attempts"])] for r in rows]
    columns = COLUMNS
    if status.get("search"):  # the last rung each run reached, and whether it was promoted from a pause there
        reached = status["search"]["runs"]
        columns = COLUMNS + [("rung", "<")]
        for row, r in zip(cells, rows):
            at = reached.get(r["key"])
            row.append("-" if at is None else f"{at['rung']}" + (" promoted" if at["promoted"] else ""))
    widths = [max([len(name)] + [len(row[i]) for row in cells]) for i, (name, _) in enumerate(columns)]
    header = "  ".join(_align(name, width, align) for (name, align), width in zip(columns, widths))
    lines = [(header, "", ""), ("─" * len(header), "", "")]
    for row in cells:
        aligned = [_align(value, width, align) for (_, align), width, value in zip(columns, widths, row)]
        lines.append(("  ".join(aligned[:5]) + "  ", aligned[5], "  " + "  ".join(aligned[6:])))
    return lines


def render_table(status: dict[str, Any], every_run: bool = False):
    """The table as one rich Text. (A rich Table measures every cell and takes seconds for 1,000
    runs; this takes milliseconds.)"""
    from rich.text import Text

    text = Text()
    text.append(f"sweep {status['sweep']}  ({status['dir']})\n", style="bold")
    header, rule, *rows = table_lines(status, listed_runs(status, every_run))
    text.append(header[0] + "\n", style="bold")
    text.append(rule[0] + "\n", style="dim")
    for before, state, after in rows:
        text.append(before)
        text.append(state, style=_state_style(state.strip()))
        text.append(after + "\n")
    return text


def plain_table(status: dict[str, Any], every_run: bool = False) -> str:
    """The table without colours, for a pipe or a file (a 100,000-run sweep with --all in a second)."""
    lines = table_lines(status, listed_runs(status, every_run))
    return f"sweep {status['sweep']}  ({status['dir']})\n" + "".join(f"{a}{b}{c}\n" for a, b, c in lines)


def _align(value: str, width: int, align: str) -> str:
    return value.rjust(width) if align == ">" else value.ljust(width)


def _state_style(state: str) -> str:
    return STATE_STYLES.get(state, "red" if state in states.RETRYABLE else "")


def summary_line(status: dict[str, Any], every_run: bool = False) -> str:
    counts = status["summary"]
    order = sorted(counts, key=lambda s: (s != states.COMPLETED, s != states.RUNNING, s))
    ended = sum(n for s, n in counts.items() if states.is_finished(s))
    line = f"{len(status['runs'])} runs: " + ", ".join(f"{counts[s]} {s}" for s in order) + f"  ({ended} ended)"
    if status.get("search"):
        line += "\nsearch: " + "; ".join(f"epoch {rung['epoch']}: {rung['reached']} reached, {rung['went_on']} went on"
                                          for rung in status["search"]["rungs"])
    unlisted = len(status["runs"]) - len(listed_runs(status, every_run))
    if unlisted:
        line += f"\n{unlisted} completed runs not listed (`ptbjobs status --all` lists them; --json has every run)"
    return "\n".join([line] + [f"note: {note}" for note in status.get("notes", [])])


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    # a perplexity that blew up (a hopeless lr) would print a hundred digits wide
    return f"{value:.2f}" if value < 1e6 else f"{value:.2g}"


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def watch(sweep: Sweep, console, until_done: bool, every_s: float = 2.0, feeding: bool = False) -> int:
    """The live status table on `console` (rich), refreshed every `every_s`, until Ctrl-C or, with
    `until_done`, until every run has ended: then 0 if all completed, 1 if any did not. With
    `feeding` (submit --wait), runs waiting for room are sent as it frees, once per poll interval."""
    from rich.console import Group
    from rich.live import Live

    max_age_s = poll_interval_s()  # a refresh every 2 s re-reads the files, not Slurm: it is asked once per interval

    def view():
        collected = collect(sweep, max_age_s)
        return collected, Group(render_table(collected), summary_line(collected))

    collected, renderable = view()
    fed = time.monotonic()
    with Live(renderable, refresh_per_second=1, console=console) as live:
        while not until_done or not all(states.is_finished(r["state"]) for r in collected["runs"]):
            time.sleep(every_s)
            if feeding and collected["summary"].get(states.QUEUED_LOCALLY) and time.monotonic() - fed >= max_age_s:
                try:
                    feed(sweep)  # runs waiting for room: what ended since frees it (also done by each ending task)
                except PtbjobsError:
                    pass  # Slurm busy or down: the next round tries again, and the table says what it knows
                fed = time.monotonic()
            collected, renderable = view()
            live.update(renderable)
    return 0 if all(r["state"] == states.COMPLETED for r in collected["runs"]) else 1

