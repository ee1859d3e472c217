# Call 2 (nvidia-h200-x2): op.py for lasp_fx alone with the saved states (call 1's op run with fla ran out of time
# after const_learn at 32K); LASP on 2 GPUs with the saved states: the check (fp32 at 20000 tokens per GPU added,
# where each backward reuses its forward's states) and timings at 32K tokens per GPU.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 TORCH_NCCL_HIGH_PRIORITY=1
F='^W1\|OMP_NUM\|\*\*\*\*\|UserWarning\|return \|Variable._exec\|Guessing\|warn'
L=$OUT/call2.log; nvidia-smi -L > $L
echo "=== op (saved states)" >> $L
CUDA_VISIBLE_DEVICES=0 timeout 150 python3 bench/op.py --ts 32768,131072 --big= --decays const,const_learn,gate --impls lasp_fx --json $OUT/op.json 2>&1 | grep -v "^$" | tail -8 >> $L
echo "=== check P=2" >> $L
LASP_FX_AUTOTUNE=0 timeout 200 torchrun --standalone --nproc-per-node=2 bench/sp.py --check-only --reps 3 2>&1 | grep -v "$F" | grep "rel RMS\|vs float64\|exchange\|Error\|error" | cut -c1-700 >> $L
echo "=== P=2 32K" >> $L
timeout 100 torchrun --standalone --nproc-per-node=2 bench/sp.py --tlocal 32768 --skip-check --reps 10 --impls allgather-nocheck,ring-nocheck --json $OUT/sp2.json 2>&1 | grep -v "$F" | grep -A4 "^P=\|Error" >> $L
cat $L
