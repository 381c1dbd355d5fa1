#!/usr/bin/env bash
# The GPU checks of the GPU-speed issue, as one prepared script: run from the repo root on a machine with
# a CUDA GPU. Needs python with torch (CUDA), numpy, pillow, pyyaml, tqdm, pydantic, torch-fidelity and
# pytest and mlxtend (`make setup` gives all of them; a bare GPU machine needs pydantic, torch-fidelity and mlxtend wheels, see
# README "Performance"). dvc and mlflow are not needed: stages run as dvc.yaml runs them, tracking off.
# Ships its own data: if data/prepared or models/evaluator.pt are missing, the pipeline makes them first.
# About 6 minutes on an H100/H200. Logs go to ${OUT:-bench/out/gpu}/.
set -euo pipefail
out=${OUT:-bench/out/gpu}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"

# 1. train-step throughput: reference loop, ganflow eager and ganflow graphed, side by side in one run (~1.5 min)
python bench/throughput.py --device cuda --seconds 6 | tee "$out/throughput.txt"

# 2. the default pipeline on the GPU (train.cuda_graph auto), per-stage times (~1 min)
python bench/pipeline_time.py --out "$out/pipeline" | tee "$out/pipeline.txt"

# 3. quality at equal steps: graphed vs eager, 4,000 default steps, seeds 0-2 graphed and 0-1 eager (~2.5 min)
python bench/graph_quality.py --prepared "$out/pipeline/data/prepared" --evaluator "$out/pipeline/models/evaluator.pt" \
  --seeds 0,1,2 --modes on | tee "$out/graph_quality.txt"
python bench/graph_quality.py --prepared "$out/pipeline/data/prepared" --evaluator "$out/pipeline/models/evaluator.pt" \
  --seeds 0,1 --modes off | tee -a "$out/graph_quality.txt"

# 4. the CUDA-only tests: every arch × loss × option captures, graph vs eager over 200 steps, kill/resume under graphs
python -m pytest -q -p no:cacheprovider tests/test_accel.py "tests/test_multinode.py::test_more_processes_than_cuda_devices_on_a_node_is_one_line" 2>&1 | tail -15 | tee "$out/tests.txt"

# 5. the default step at 32, 64 and 128 px RGB (what a day at each size costs; ~30 s)
python bench/resolution.py | tee "$out/resolution.txt"
