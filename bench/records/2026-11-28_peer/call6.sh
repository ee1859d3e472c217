# Call 6 (nvidia-h200-x2): timings at P=2, 32K tokens per GPU, every path and baseline, with the new back-to-back
# graph column (g.loop); then the NCCL all-gather (LASP_FX_PEER=0) alone for comparison.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 TORCH_NCCL_HIGH_PRIORITY=1
F='^W1\|OMP_NUM\|\*\*\*\*\|UserWarning\|return \|Variable._exec\|Guessing\|warn'
L=$OUT/call6.log; nvidia-smi -L > $L
SP="bench/sp.py --tlocal 32768 --skip-check --reps 10"
echo "=== P=2" >> $L
timeout 150 torchrun --standalone --nproc-per-node=2 $SP --impls allgather-nocheck,ring-nocheck,auto-nocheck,ulysses,lasp-original --json $OUT/sp2.json 2>&1 | grep -v "$F" | grep -A8 "^P=\|Error" >> $L
echo "=== P=2 LASP_FX_PEER=0" >> $L
LASP_FX_PEER=0 timeout 70 torchrun --standalone --nproc-per-node=2 $SP --impls allgather-nocheck --json $OUT/sp2_nccl.json 2>&1 | grep -v "$F" | grep -A3 "^P=\|Error" >> $L
cat $L
