#!/usr/bin/env bash
# Device call "op": side by side on separate GPUs of one 4-GPU machine (at most 8 files come back):
#   GPUs 0,1: bench/sp.py on 2 GPUs at 32K/GPU;  GPU 2: fla chunk_simple_gla (constant decay);
#   GPU 3: the GPU check, the kernel variants, then lasp_fx none / const / gate with a profile.
#   run(kind="nvidia-h100-x4", carry=[".whl"], command="bash bench/records/2026-11-28_fold/run_op.sh")
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
L=/tmp/logs; mkdir -p $L
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nvidia-smi topo -m; } > $L/0_card.log 2>&1
CUDA_VISIBLE_DEVICES=0,1 timeout 250 torchrun --standalone --nproc-per-node=2 bench/sp.py --tlocal 32768 \
  --json "$OUT/sp_2gpu.json" 2>&1 | grep -v "^W1\|OMP_NUM\|\*\*\*\*" > $L/3_sp_2gpu.log &
CUDA_VISIBLE_DEVICES=2 timeout 260 python3 bench/op.py --ts 32768,131072 --big "" --impls fla \
  --decays const --json "$OUT/op_fla.json" > $L/2_op_fla.log 2>&1 &
( export CUDA_VISIBLE_DEVICES=3
  timeout 90 python3 bench/check_op_gpu.py --quick --json "$OUT/check.json" > $L/1_check.log 2>&1
  timeout 60 python3 bench/records/2026-11-28_fold/variants.py > $L/1_variants.log 2>&1
  timeout 140 python3 bench/op.py --ts 32768,131072 --big "" --impls lasp_fx --decays none,const,gate \
    --profile 32768 --json "$OUT/op_ours.json" > $L/1_op_ours.log 2>&1 ) &
wait
for f in $L/*.log; do echo "=== $f"; cat "$f"; done > "$OUT/all.log"
grep -h "ALL OK\|FAILURES\|^ *[0-9]* \(none\|const\|gate\)\|split=\|^ring\|^allgather\|^auto\|^single\|^ulysses\|^lasp-orig" $L/*.log
