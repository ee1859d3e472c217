# Call 5 (nvidia-h200): after the forward states lost their (zero) row for segment 0: the kernels against float64
# (--quick, the long shape included) and op.py at 32K (const, gate) for the timing.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
L=$OUT/call5.log; nvidia-smi -L > $L
timeout 150 python3 bench/check_op_gpu.py --quick --json $OUT/check.json 2>&1 | tail -20 >> $L
timeout 90 python3 bench/op.py --ts 32768 --big= --decays const,gate --impls lasp_fx --json $OUT/op.json 2>&1 | grep -v "^$" | tail -3 >> $L
cat $L
