#!/usr/bin/env bash
# Device call 1: the fixed-decay backward (no dG) and where host time goes.
#   GPUs 0,1: bench/sp.py on 2 GPUs at 32K/GPU (with host ms per call);  GPU 2: fla (const);
#   GPU 3: GPU check (with fixed decays), lasp_fx none / const / const_learn / gate with a profile.
#   Then all 4 GPUs: bench/sp.py at 32K/GPU.
#   run(kind="nvidia-h100-x4", carry=[".whl"], command="bash bench/records/2026-11-28_fixed_decay/run1.sh")
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
L=/tmp/logs; mkdir -p $L
F='^W1\|OMP_NUM\|\*\*\*\*\|UserWarning\|return \|Variable._exec'
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nvidia-smi topo -m; } > $L/0_card.log 2>&1
CUDA_VISIBLE_DEVICES=0,1 timeout 200 torchrun --standalone --nproc-per-node=2 bench/sp.py --tlocal 32768 \
  --skip-check --reps 10 --json "$OUT/sp_2gpu.json" 2>&1 | grep -v "$F" > $L/3_sp_2gpu.log &
CUDA_VISIBLE_DEVICES=2 timeout 200 python3 bench/op.py --ts 32768,131072 --big "" --impls fla \
  --decays const --json "$OUT/op_fla.json" > $L/2_op_fla.log 2>&1 &
( export CUDA_VISIBLE_DEVICES=3
  timeout 90 python3 bench/check_op_gpu.py --quick --json "$OUT/check.json" > $L/1_check.log 2>&1
  timeout 150 python3 bench/op.py --ts 32768,131072 --big "" --impls lasp_fx --decays none,const,const_learn,gate \
    --profile 32768 --json "$OUT/op_ours.json" > $L/1_op_ours.log 2>&1 ) &
wait
timeout 170 torchrun --standalone --nproc-per-node=4 bench/sp.py --tlocal 32768 --skip-check --reps 10 \
  --json "$OUT/sp_4gpu.json" 2>&1 | grep -v "$F" > $L/4_sp_4gpu.log
for f in $L/*.log; do echo "=== $f"; cat "$f"; done > "$OUT/all.log"
grep -h "ALL OK\|FAILURES\|FAIL \|^ *[0-9]* \(none\|const\|gate\)\|^ring\|^allgather\|^auto\|^single\|^ulysses\|^lasp-orig\|^P=" $L/*.log
