#!/usr/bin/env bash
# Device call "sp4": bench/sp.py on all 4 GPUs, 32K tokens per GPU first, then 8K.
#   run(kind="nvidia-h100-x4", carry=[".whl"], command="bash bench/records/2026-11-28_fold/run_sp4.sh")
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nvidia-smi topo -m; } > "$OUT/card.txt" 2>&1
timeout "${T4:-280}" torchrun --standalone --nproc-per-node=4 bench/sp.py --tlocal "${TL4:-32768,8192}" \
  --json "$OUT/sp_4gpu.json" 2>&1 | grep -v "^W1\|OMP_NUM\|\*\*\*\*" | tee "$OUT/sp_4gpu.log"
