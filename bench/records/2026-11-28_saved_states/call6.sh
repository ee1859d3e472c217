# Call 6 (nvidia-h200-x4, if lent): LASP on 4 GPUs with the all-gather through peer memory and the saved states:
# timings at 32K tokens per GPU first (every path and baseline), then the check (fp32 vs float64; what the time
# limit leaves of it).
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 TORCH_NCCL_HIGH_PRIORITY=1
F='^W1\|OMP_NUM\|\*\*\*\*\|UserWarning\|return \|Variable._exec\|Guessing\|warn'
L=$OUT/call6.log; nvidia-smi -L > $L
echo "=== P=4 32K" >> $L
timeout 140 torchrun --standalone --nproc-per-node=4 bench/sp.py --tlocal 32768 --skip-check --reps 8 --impls allgather-nocheck,ring-nocheck,ulysses,lasp-original --json $OUT/sp4.json 2>&1 | grep -v "$F" | grep -A7 "^P=\|Error" | cut -c1-400 >> $L
echo "=== check P=4" >> $L
LASP_FX_AUTOTUNE=0 timeout 100 torchrun --standalone --nproc-per-node=4 bench/sp.py --check-only --reps 3 2>&1 | grep -v "$F" | grep "rel RMS\|vs float64\|Error" | cut -c1-900 >> $L
cat $L
