#!/usr/bin/env bash
# Last device call of the session: LASP on 4 GPUs at 32K tokens per GPU (timings only: the correctness
# pass ran at P = 4 in the call before, sp.log there), then on 2 GPUs while GPUs 2 and 3 time the op.
#   run(kind="nvidia-h100-x4", carry=[".whl"], command="bash bench/records/2026-11-28_fold/run_final.sh")
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
L=/tmp/logs; mkdir -p $L
F='^W1\|OMP_NUM\|\*\*\*\*\|UserWarning\|return \|Variable._exec'
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nvidia-smi topo -m; } > $L/0_card.log 2>&1
timeout "${T4:-280}" torchrun --standalone --nproc-per-node=4 bench/sp.py --skip-check --tlocal 32768 --reps 10 \
  --json "$OUT/sp_4gpu.json" 2>&1 | grep -v "$F" > $L/1_sp_4gpu.log
CUDA_VISIBLE_DEVICES=0,1 timeout "${T2:-170}" torchrun --standalone --nproc-per-node=2 bench/sp.py --skip-check \
  --tlocal 32768 --reps 10 --json "$OUT/sp_2gpu.json" 2>&1 | grep -v "$F" > $L/2_sp_2gpu.log &
CUDA_VISIBLE_DEVICES=2 timeout 170 python3 bench/op.py --ts 32768 --big "" --impls fla,lasp_fx --decays const \
  --json "$OUT/op_const.json" > $L/3_op_const.log 2>&1 &
CUDA_VISIBLE_DEVICES=3 timeout 170 python3 bench/op.py --ts 32768,131072 --big "" --impls lasp_fx \
  --decays none,gate --json "$OUT/op_gate.json" > $L/4_op_none_gate.log 2>&1 &
wait
for f in $L/*.log; do echo "=== $f"; cat "$f"; done > "$OUT/all.log"
grep -h "^ *[0-9]* \(none\|const\|gate\)\|^P=\|^ring\|^allgather\|^auto\|^single\|^ulysses\|^lasp-orig" $L/*.log
