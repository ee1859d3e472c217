#!/usr/bin/env bash
# Device call 3 (final): LASP after the eager route, on all 4 GPUs: correctness (fp32 at odd sizes vs
# float64, bf16 vs one GPU), timings at 32K/GPU; then 2 GPUs at 32K/GPU.
#   run(kind="nvidia-h100-x4", carry=[".whl"], command="bash bench/records/2026-11-28_fixed_decay/run3.sh")
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null || exit 1
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
L=/tmp/logs; mkdir -p $L
F='^W1\|OMP_NUM\|\*\*\*\*\|UserWarning\|return \|Variable._exec\|Guessing'
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nvidia-smi topo -m; } > $L/0_card.log 2>&1
timeout 130 torchrun --standalone --nproc-per-node=4 bench/sp.py --check-only --reps 5 \
  --json "$OUT/sp_4gpu_check.json" 2>&1 | grep -v "$F" > $L/1_sp_4gpu_check.log
timeout 120 torchrun --standalone --nproc-per-node=4 bench/sp.py --tlocal 32768 --skip-check --reps 10 \
  --json "$OUT/sp_4gpu.json" 2>&1 | grep -v "$F" > $L/2_sp_4gpu.log
CUDA_VISIBLE_DEVICES=0,1 timeout 100 torchrun --standalone --nproc-per-node=2 bench/sp.py --tlocal 32768 \
  --skip-check --reps 10 --json "$OUT/sp_2gpu.json" 2>&1 | grep -v "$F" > $L/3_sp_2gpu.log
for f in $L/*.log; do echo "=== $f"; cat "$f"; done > "$OUT/all.log"
grep -h "max rel\|exchange alone\|^ring\|^allgather\|^auto\|^single\|^ulysses\|^lasp-orig\|^P=\|rror" $L/*.log
