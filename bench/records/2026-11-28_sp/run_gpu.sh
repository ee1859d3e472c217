#!/usr/bin/env bash
# One device call: bench/sp.py on 4 GPUs when the machine has them, then on 2; logs and JSON under $OUT.
#   run(kind="nvidia-h100-x4" or "nvidia-h100-x2", carry=[".whl"], command="bash bench/records/2026-11-28_sp/run_gpu.sh")
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
NGPU=$(nvidia-smi -L | wc -l)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nvidia-smi topo -m;
  env | grep -E '^(NCCL|TORCH_SYMM|NVSHMEM)'; } > "$OUT/card.txt" 2>&1
if [ "$NGPU" -ge 4 ]; then
  timeout "${T4:-240}" torchrun --standalone --nproc-per-node=4 bench/sp.py --json "$OUT/sp_4gpu.json" ${SP_ARGS:-} \
    2>&1 | tee "$OUT/sp_4gpu.log"
fi
CUDA_VISIBLE_DEVICES=0,1 timeout "${T2:-200}" torchrun --standalone --nproc-per-node=2 bench/sp.py \
  --json "$OUT/sp_2gpu.json" ${SP_ARGS:-} 2>&1 | tee "$OUT/sp_2gpu.log"
