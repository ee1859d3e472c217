# Call 7 (nvidia-h200-x4): LASP on 4 GPUs with the all-gather through peer memory: the check (fp32 against
# float64 first; the bf16 part may be cut by the time limit), then timings at 32K tokens per GPU with every
# baseline, graph columns included.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 TORCH_NCCL_HIGH_PRIORITY=1
F='^W1\|OMP_NUM\|\*\*\*\*\|UserWarning\|return \|Variable._exec\|Guessing\|warn'
L=$OUT/call7.log; nvidia-smi -L > $L
echo "=== check P=4" >> $L
LASP_FX_AUTOTUNE=0 timeout 120 torchrun --standalone --nproc-per-node=4 bench/sp.py --check-only --reps 3 2>&1 | grep -v "$F" | grep "rel RMS\|exchange\|Error" | cut -c1-700 >> $L
echo "=== P=4" >> $L
timeout 160 torchrun --standalone --nproc-per-node=4 bench/sp.py --tlocal 32768 --skip-check --reps 10 --impls allgather-nocheck,ring-nocheck,ulysses,lasp-original --json $OUT/sp4.json 2>&1 | grep -v "$F" | grep -A7 "^{\|^P=\|Error" | cut -c1-400 >> $L
cat $L
