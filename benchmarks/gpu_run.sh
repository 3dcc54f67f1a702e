#!/usr/bin/env bash
# The GPU benchmarks, as run on a lent GPU machine that has torch, transformers, peft and accelerate but not trl,
# datasets or evaluate: put their wheels (and those of their dependencies) in .whl/ first. From the repository root.
set -u
OUT=${OUT:-benchmarks/results}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers, trl, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'peft', peft.__version__)"
timeout 200 python3 -m benchmarks.dpo_speed --output "$OUT/dpo_speed_cuda.json" 2>&1 | grep -v "it/s\]" | tail -40
timeout 200 python3 -m benchmarks.speed --preset gpu-0.5b --output "$OUT/speed_cuda.json" 2>&1 | grep -v "it/s\]" | tail -30
