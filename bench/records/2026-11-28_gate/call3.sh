# Call 3 (nvidia-h200): the reverse state pass chunkwise only for a decay gradient (forward-order form);
# A/B of the intra-chunk sums of q.dq and k.dk taken from the 16-bit dot operands (LASP_FX_INTRA16=1, no
# second q.k product) against fp32 W (=0); precision vs float64 with INTRA16=1; the kernels' check.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:.
nvidia-smi -L
echo "=== check_op_gpu --quick (INTRA16=1)"
LASP_FX_INTRA16=1 timeout 150 python3 bench/check_op_gpu.py --quick --json $OUT/check.json 2>&1 | grep -v "^ok\|Warn" | tail -6
for v in 1 0; do
  echo "=== op.py INTRA16=$v"
  LASP_FX_INTRA16=$v timeout 120 python3 bench/op.py --ts 32768,131072 --big= --decays const,const_learn,gate --impls lasp_fx --json $OUT/op_intra16_$v.json 2>&1 | grep "lasp_fx"
done
echo "=== precision (INTRA16=1)"
LASP_FX_INTRA16=1 timeout 200 python3 bench/decay_grad_precision.py --ts 4096,32768 --heads 2 --json $OUT/prec.json 2>&1 | grep -v Warn
