#!/usr/bin/env bash
# The GPU checks of the issues, as one prepared script (run on a machine with a CUDA GPU, from the repo root,
# after `make setup`). Writes its logs to ${OUT:-bench/out/gpu}/.
set -euo pipefail
out=${OUT:-bench/out/gpu}
mkdir -p "$out"
export PATH="$PWD/.venv/bin:$PATH" PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"

# 1. train-step throughput against the reference loop (defaults, then with the extra levers)
python bench/throughput.py --device cuda --seconds 15 | tee "$out/throughput.txt"
python bench/throughput.py --device cuda --seconds 15 --levers channels_last | tee -a "$out/throughput.txt"
python bench/throughput.py --device cuda --seconds 15 --levers compile | tee -a "$out/throughput.txt"

# 2. the default pipeline on the GPU (device auto -> cuda), then 50k samples + evaluation, timed
( time dvc repro ) 2>&1 | grep -v "^train\|^sample\|^evaluator" | tail -20 | tee "$out/repro.txt"
( time python stages/sample.py models/generator.pt models/generator_best.pt "$out/samples50k" "$out/grid50k.png" \
    --params <(sed 's/^  n: 5000 .*/  n: 50000/' params.yaml) ) 2>&1 | tail -5 | tee "$out/sample50k.txt"
( time python stages/evaluate.py "$out/samples50k" data/prepared models/evaluator.pt models/run.json "$out/eval50k.json" ) \
    2>&1 | tail -5 | tee "$out/eval50k.txt"

# 3. the quality benchmark with 120 s per entry
python bench/quality.py --budget 120 --device cuda --out "$out/quality" 2>&1 | grep -v "^train\|^evaluator" | tail -12 | tee "$out/quality.txt"
