# Call 9 (nvidia-h200-x2): `lasp-fx doctor` on a GPU host (its new all-gather transport row), then P=2 at 8K and
# 128K tokens per GPU: the all-gather through peer memory and the ring against one GPU (graph columns included).
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 TORCH_NCCL_HIGH_PRIORITY=1
F='^W1\|OMP_NUM\|\*\*\*\*\|UserWarning\|return \|Variable._exec\|Guessing\|warn'
L=$OUT/call9.log; nvidia-smi -L > $L
python3 -m lasp_fx doctor 2>&1 | tail -6 >> $L
timeout 110 torchrun --standalone --nproc-per-node=2 bench/sp.py --tlocal 8192,131072 --skip-check --reps 8 --impls allgather-nocheck,ring-nocheck --json $OUT/sp2.json 2>&1 | grep -v "$F" | grep -A4 "^P=\|Error" >> $L
cat $L
