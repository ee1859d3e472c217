# Call 4 (nvidia-h200-x2): the final code (kernels as call 3's kept version; the forward op without its
# decay_grad argument): LASP's check on 2 GPUs, then the kernels' check on GPU 0 beside the precision
# sweep on GPU 1.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
F='^W1\|OMP_NUM\|\*\*\*\*\|UserWarning\|return \|Variable._exec\|Guessing\|warn'
nvidia-smi -L
echo "=== LASP check P=2"
LASP_FX_AUTOTUNE=0 timeout 220 torchrun --standalone --nproc-per-node=2 bench/sp.py --check-only --reps 3 2>&1 | grep -v "$F" | grep "rel RMS\|vs float64\|exchange\|Error\|error" | cut -c1-700
echo "=== check_op_gpu --quick (GPU 0) and precision (GPU 1)"
CUDA_VISIBLE_DEVICES=0 timeout 170 python3 bench/check_op_gpu.py --quick --json $OUT/check.json > $OUT/check.log 2>&1 &
CUDA_VISIBLE_DEVICES=1 timeout 170 python3 bench/decay_grad_precision.py --ts 4096,32768 --heads 2 --json $OUT/prec.json 2>&1 | grep -v Warn
wait
grep -v "^ok\|Warn" $OUT/check.log | tail -6
