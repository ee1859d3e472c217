# Call 4 (nvidia-h200-x2): LASP's check on 2 GPUs again, peer buffers now allocated outside symm_mem's implicit
# pool (call 3's check was cut by its time limit while compiling), the whole log kept. (Written as "failed"; it was the time limit: NOTES.md.)
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 TORCH_NCCL_HIGH_PRIORITY=1
F='^W1\|OMP_NUM\|\*\*\*\*\|UserWarning\|return \|Variable._exec\|Guessing\|warn'
L=$OUT/call4.log; nvidia-smi -L > $L
echo "=== check P=2" >> $L
LASP_FX_AUTOTUNE=0 timeout 100 torchrun --standalone --nproc-per-node=2 bench/sp.py --check-only --reps 3 --json $OUT/sp2_check.json > $OUT/check_full.log 2>&1
grep -v "$F" $OUT/check_full.log | grep -v "^\s*$" | grep -B2 -A12 "rel RMS\|Error" | cut -c1-400 | head -60 >> $L
cat $L
