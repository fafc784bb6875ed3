#!/usr/bin/env bash
# The fused packs' evidence on a machine with one CUDA GPU, in one go: the fused tests, then
# `ptbjobs bench --fuse K` for K = 1, 4, 8, 16, 24, 32 (the pack's tokens/s, all runs together,
# against one solo run's with its CUDA-graph step, in one process), then the same runs as K solo
# processes side by side (under MPS where its daemon can be started), then the study's 15 final runs
# as fused packs, timed wall clock (analysis/fused-gpu/final_runs.py).
#
#   bash analysis/fused-gpu/run.sh DATA_DIR OUT_DIR
#
# Runs from a checkout without installing it (the repo on PYTHONPATH). Writes OUT_DIR/fused.txt
# (everything a reader needs) and tests.txt. To try the script on a CPU (minutes):
#   PYTHON=.venv/bin/python DEVICE=cpu BENCH_STEPS=5 FUSE="1 2" SIDE_BY_SIDE=2 FINAL_FLAGS="--epochs 1 --epoch-steps 5" \
#     bash analysis/fused-gpu/run.sh DATA OUT
set -euo pipefail
python=${PYTHON:-python3}
device=${DEVICE:-cuda}
bench_steps=${BENCH_STEPS:-300}
read -r -a fuse_sizes <<<"${FUSE:-1 4 8 16 24 32}"
side_by_side=${SIDE_BY_SIDE:-8}
read -r -a final_flags <<<"${FINAL_FLAGS:-}"
data=${1:?usage: run.sh DATA_DIR OUT_DIR}
out=${2:?usage: run.sh DATA_DIR OUT_DIR}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
report="$out/fused.txt"
say() { echo "$@" | tee -a "$report"; }

say "# ptbjobs fused packs, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
say "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi")"
say "$("$python" -c 'import torch; print("torch", torch.__version__)')"

say "## fused tests"
"$python" -m pytest -q tests/train/test_fused.py tests/train/test_pack.py -p no:cacheprovider >"$out/tests.txt" 2>&1 \
    && say "passed" || say "FAILED (tests.txt)"
say "$(tail -1 "$out/tests.txt")"

say "## ptbjobs bench --fuse K --device $device (LSTM 2x200, batch 20, bptt 20)"
for k in "${fuse_sizes[@]}"; do
    "$python" -m ptbjobs bench --fuse "$k" --device "$device" --data-dir "$data" --steps "$bench_steps" --rounds 3 | tee -a "$report"
done

say "## $side_by_side solo runs side by side, one process each (the packing ptbjobs did before fusion)"
mps=""
if [ "$device" = cuda ] && command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d 2>/dev/null; then
    mps="under MPS"
fi
logs=$(mktemp -d)
for i in $(seq "$side_by_side"); do
    "$python" - "$data" "$device" "$bench_steps" >"$logs/$i.txt" 2>&1 <<'PY' &
import sys, tempfile
from pathlib import Path
from ptbjobs.train.bench import scratch_run, time_trainer
from ptbjobs.train.config import TrainConfig
from ptbjobs.train.corpus import load_corpus
from ptbjobs.train.trainer import Trainer
config = TrainConfig(device=sys.argv[2], checkpoint_every_min=0)
trainer = Trainer(config, load_corpus(sys.argv[1]), scratch_run(Path(tempfile.mkdtemp()) / "solo"))
time_trainer(trainer, 20)
print(time_trainer(trainer, int(sys.argv[3])))
PY
done
wait
[ -n "$mps" ] && echo quit | nvidia-cuda-mps-control || true
"$python" - "$logs" "$side_by_side" "${mps:-without MPS}" <<'PY' | tee -a "$report"
import sys
from pathlib import Path
rates = [float(p.read_text().split()[-1]) for p in sorted(Path(sys.argv[1]).glob("*.txt"))]
print(f"  {sys.argv[2]} solo processes {sys.argv[3]}: {sum(rates):,.0f} tokens/s in all "
      f"({min(rates):,.0f} to {max(rates):,.0f} each; the runs overlap for most, not all, of their timing)")
PY

say "## the study's 15 final runs as fused packs"
"$python" analysis/fused-gpu/final_runs.py --data "$data" --out runs/fused-final --device "$device" "${final_flags[@]}" \
    | tee -a "$report"
