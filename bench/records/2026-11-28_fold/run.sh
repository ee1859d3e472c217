#!/usr/bin/env bash
# One device call on 4 GPUs after the late state is folded into the kernels (no correction passes):
#   phase 1: bench/sp.py on all 4 GPUs;
#   phase 2, side by side on separate GPUs: bench/sp.py on GPUs 0,1; the op on GPU 2 (fla, constant
#   decay: its autotune is slow) and on GPU 3 (GPU check, then lasp_fx const and gate with a profile).
#   run(kind="nvidia-h100-x4", carry=[".whl"], command="bash bench/records/2026-11-28_fold/run.sh")
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nvidia-smi topo -m;
  env | grep -E '^(NCCL|TORCH_SYMM|NVSHMEM)'; } > "$OUT/card.txt" 2>&1
NGPU=$(nvidia-smi -L | wc -l)
if [ "$NGPU" -ge 4 ]; then
  timeout "${T4:-230}" torchrun --standalone --nproc-per-node=4 bench/sp.py --tlocal "${TL4:-8192,32768,131072}" \
    --json "$OUT/sp_4gpu.json" 2>&1 | grep -v "^W1\|OMP_NUM\|\*\*\*\*" > "$OUT/sp_4gpu.log"
  G2=2; G3=3
else
  G2=0; G3=1
fi
CUDA_VISIBLE_DEVICES=0,1 timeout "${T2:-200}" torchrun --standalone --nproc-per-node=2 bench/sp.py \
  --tlocal "${TL2:-8192,32768}" --json "$OUT/sp_2gpu.json" 2>&1 | grep -v "^W1\|OMP_NUM\|\*\*\*\*" > "$OUT/sp_2gpu.log" &
CUDA_VISIBLE_DEVICES=$G2 timeout "${TOP:-300}" python3 bench/op.py --ts 32768,131072 --big "" --impls fla \
  --decays const --json "$OUT/op_fla.json" > "$OUT/op_fla.log" 2>&1 &
( CUDA_VISIBLE_DEVICES=$G3 timeout 120 python3 bench/check_op_gpu.py --quick --json "$OUT/check.json" > "$OUT/check.log" 2>&1
  CUDA_VISIBLE_DEVICES=$G3 timeout "${TOP:-300}" python3 bench/op.py --ts 32768,131072 --big 524288 --impls lasp_fx \
    --decays none,const,gate --profile 32768 --json "$OUT/op_ours.json" > "$OUT/op_ours.log" 2>&1 ) &
wait
tail -n 5 "$OUT"/*.log
