#!/usr/bin/env bash
# One device call after the T-innermost cumsum fix (cee7365): the op on one H100 (fla side by side,
# constant decay; the gate for lasp_fx alone), then LASP on 2 H100s at 32K tokens per GPU.
#   run(kind="nvidia-h100-x2", carry=[".whl"], command="bash bench/records/2026-11-28_final/run.sh")
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/card.txt" 2>&1
CUDA_VISIBLE_DEVICES=0 timeout 170 python3 bench/op.py --ts 32768,131072 --big "" --impls fla,lasp_fx \
  --decays const --json "$OUT/op_const.json" 2>&1 | tee "$OUT/op.log"
CUDA_VISIBLE_DEVICES=0 timeout 50 python3 bench/op.py --ts 32768,131072 --big "" --impls lasp_fx \
  --decays gate --json "$OUT/op_gate.json" 2>&1 | tee -a "$OUT/op.log"
CUDA_VISIBLE_DEVICES=0,1 timeout 120 torchrun --standalone --nproc-per-node=2 bench/sp.py --tlocal 32768 \
  --json "$OUT/sp_2gpu.json" 2>&1 | tee "$OUT/sp_2gpu.log"
