#!/usr/bin/env bash
# Device call 2: host time after the eager route (bench/host.py on 1 and 2 GPUs), the op alone on
# GPU 0 (no other process on the machine: the first call's 32K rows shared the host with sp.py),
# then bench/sp.py on 2 and on 4 GPUs at 32K/GPU.
#   run(kind="nvidia-h100-x4", carry=[".whl"], command="bash bench/records/2026-11-28_fixed_decay/run2.sh")
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
L=/tmp/logs; mkdir -p $L
F='^W1\|OMP_NUM\|\*\*\*\*\|UserWarning\|return \|Variable._exec\|Guessing'
timeout 60 python3 bench/host.py > $L/1_host1.log 2>&1
CUDA_VISIBLE_DEVICES=0,1 timeout 60 torchrun --standalone --nproc-per-node=2 bench/host.py 2>&1 | grep -v "$F" > $L/2_host2.log
CUDA_VISIBLE_DEVICES=0 timeout 150 python3 bench/op.py --ts 32768,131072 --big "" --impls lasp_fx,fla \
  --decays none,const,const_learn,gate --json "$OUT/op.json" > $L/3_op.log 2>&1
CUDA_VISIBLE_DEVICES=0,1 timeout 150 torchrun --standalone --nproc-per-node=2 bench/sp.py --tlocal 32768 \
  --skip-check --reps 10 --json "$OUT/sp_2gpu.json" 2>&1 | grep -v "$F" > $L/4_sp_2gpu.log
timeout 150 torchrun --standalone --nproc-per-node=4 bench/sp.py --tlocal 32768 --skip-check --reps 10 \
  --json "$OUT/sp_4gpu.json" 2>&1 | grep -v "$F" > $L/5_sp_4gpu.log
for f in $L/*.log; do echo "=== $f"; cat "$f"; done > "$OUT/all.log"
grep -h "^  [a-zA-Z]\|^ *[0-9]* \(none\|const\|gate\)\|^ring\|^allgather\|^auto\|^single\|^ulysses\|^lasp-orig\|^P=\|rror" $L/*.log
