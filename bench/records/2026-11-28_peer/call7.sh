# Call 7 (nvidia-h200-x4, if lent again): LASP on 4 GPUs with the all-gather through peer memory: the check's
# fp32 part (the bf16 part is cut by the time limit), then timings at 32K tokens per GPU, graph columns included.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 TORCH_NCCL_HIGH_PRIORITY=1
F='^W1\|OMP_NUM\|\*\*\*\*\|UserWarning\|return \|Variable._exec\|Guessing\|warn'
L=$OUT/call7.log; nvidia-smi -L > $L
echo "=== check P=4" >> $L
LASP_FX_AUTOTUNE=0 timeout 75 torchrun --standalone --nproc-per-node=4 bench/sp.py --check-only --reps 3 2>&1 | grep -v "$F" | grep "rel RMS\|Error" | cut -c1-700 >> $L
echo "=== P=4" >> $L
timeout 110 torchrun --standalone --nproc-per-node=4 bench/sp.py --tlocal 32768 --skip-check --reps 8 --impls allgather-nocheck,ring-nocheck --json $OUT/sp4.json 2>&1 | grep -v "$F" | grep -A4 "^P=\|Error" | cut -c1-400 >> $L
cat $L
