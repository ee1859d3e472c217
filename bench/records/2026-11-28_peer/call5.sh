# Call 5 (nvidia-h200-x2): LASP's check on 2 GPUs with time to finish (call 4's was cut by its 100 s limit while
# compiling, not failing), which builds peer buffers for two state shapes; then a graph-replay profile of the
# all-gather through peer memory at P=2 (which kernels LASP adds to the single-GPU op's).
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 TORCH_NCCL_HIGH_PRIORITY=1
F='^W1\|OMP_NUM\|\*\*\*\*\|UserWarning\|return \|Variable._exec\|Guessing\|warn'
L=$OUT/call5.log; nvidia-smi -L > $L
echo "=== check P=2" >> $L
LASP_FX_AUTOTUNE=0 timeout 220 torchrun --standalone --nproc-per-node=2 bench/sp.py --check-only --reps 3 --json $OUT/sp2_check.json 2>&1 | grep -v "$F" | grep "rel RMS\|exchange\|Error" | cut -c1-700 >> $L
echo "=== profile P=2 graph allgather" >> $L
timeout 90 torchrun --standalone --nproc-per-node=2 bench/sp.py --profile 32768 --method allgather --graph --trace-dir $OUT 2>&1 | grep -v "$F" | grep -v "^\s*$\|-----" | cut -c1-60,100-200 | head -40 >> $L
cat $L
