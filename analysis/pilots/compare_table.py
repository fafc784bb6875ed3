"""Two runs epoch by epoch, as the markdown table of a side-by-side pilot in this folder's README.

A pilot changes one thing and runs the same config without it beside it; what it shows is the
difference at each epoch, not only at the end. This prints both runs' train and validation
perplexity per epoch, the lr (from the changed run) and the validation difference (changed minus
reference), then each run's end: best valid, its epoch, test ppl, and hours of training.

    python analysis/pilots/compare_table.py "CHANGED LABEL=metrics.jsonl" "REFERENCE LABEL=metrics.jsonl"

Unfinished runs are fine: the table holds the epochs both have reached.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def read_metrics(path: Path) -> tuple[dict[int, dict], dict | None]:
    """(epoch records by epoch, the final record or None)."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    epochs = {r["epoch"]: r for r in records if "epoch" in r and "valid_ppl" in r}
    final = next((r for r in records if r.get("final")), None)
    return epochs, final


def table(changed: tuple[str, Path], reference: tuple[str, Path]) -> list[str]:
    (changed_label, changed_path), (reference_label, reference_path) = changed, reference
    ours, ours_final = read_metrics(changed_path)
    theirs, theirs_final = read_metrics(reference_path)
    lines = [f"| epoch | lr | {changed_label}: train | valid | {reference_label}: train | valid | difference |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for epoch in sorted(set(ours) & set(theirs)):
        a, b = ours[epoch], theirs[epoch]
        lines.append(f"| {epoch} | {a['lr']:.4g} | {a['train_ppl']:.1f} | {a['valid_ppl']:.2f} | "
                     f"{b['train_ppl']:.1f} | {b['valid_ppl']:.2f} | {a['valid_ppl'] - b['valid_ppl']:+.2f} |")
    lines.append("")
    for label, epochs, final in ((changed_label, ours, ours_final), (reference_label, theirs, theirs_final)):
        if final:
            lines.append(f"- {label}: best valid {final['best_valid_ppl']:.2f} (epoch {final['best_epoch']}), "
                         f"test {final['test_ppl']:.2f}, {final['elapsed_s'] / 3600:.2f} h")
        elif epochs:
            best = min(epochs.values(), key=lambda r: r["valid_ppl"])
            lines.append(f"- {label}: unfinished at epoch {max(epochs)}, best valid so far "
                         f"{best['valid_ppl']:.2f} (epoch {best['epoch']})")
        else:
            lines.append(f"- {label}: no epoch finished yet")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 2 or any("=" not in spec for spec in argv):
        print('usage: compare_table.py "CHANGED LABEL=METRICS.jsonl" "REFERENCE LABEL=METRICS.jsonl"', file=sys.stderr)
        return 2
    changed, reference = ((label, Path(path)) for label, path in (spec.split("=", 1) for spec in argv))
    print("\n".join(table(changed, reference)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
