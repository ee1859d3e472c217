#!/usr/bin/env bash
# Device call "sp4": bench/sp.py on all 4 GPUs at 32K tokens per GPU, then timelines (chrome traces)
# of 3 back-to-back ring fwd+bwd steps on 2 GPUs.
#   run(kind="nvidia-h100-x4", carry=[".whl"], command="bash bench/records/2026-11-28_fold/run_sp4.sh")
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nvidia-smi topo -m; } > "$OUT/card.txt" 2>&1
F='^W1\|OMP_NUM\|\*\*\*\*\|UserWarning\|return \|Variable._exec'
timeout "${T4:-260}" torchrun --standalone --nproc-per-node=4 bench/sp.py --tlocal "${TL4:-32768}" \
  --json "$OUT/sp_4gpu.json" 2>&1 | grep -v "$F" > "$OUT/sp.log"
CUDA_VISIBLE_DEVICES=0,1 timeout 120 torchrun --standalone --nproc-per-node=2 bench/sp.py --profile 32768 \
  --trace-dir "$OUT" 2>&1 | grep -v "$F" >> "$OUT/sp.log"
grep -v "^ *$" "$OUT/sp.log" | grep -v "^void\|^---\|Name  " | cut -c1-200 | tail -40
ls -la "$OUT"
