# Call 7 (nvidia-h200-x4, warm after call 6): the all-gather at P=4 again, 15 repetitions, beside the single GPU.
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 TORCH_NCCL_HIGH_PRIORITY=1; timeout 110 torchrun --standalone --nproc-per-node=4 bench/sp.py --tlocal 32768 --skip-check --reps 15 --impls allgather-nocheck --json $OUT/sp4_repeat.json 2>&1 | grep -A3 "^P=\|Error" | cut -c1-400
