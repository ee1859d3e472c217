# Call 3 (nvidia-h200): experiment, not kept unless it wins: the dq / dk kernels with one D tile of 128 (BK = 128)
# instead of two of 64, so dP = dO V^T (and the gate's q.k product) is computed once per chunk, not per D tile.
# Same run: op.py at 32K as committed, then with backward.py's BK patched on this machine's copy only.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
L=$OUT/call3.log; nvidia-smi -L > $L
OP="bench/op.py --ts 32768 --big= --decays const,gate --impls lasp_fx"
echo "=== BK = 64 (committed)" >> $L
timeout 100 python3 $OP --json $OUT/op_bk64.json 2>&1 | grep -v "^$" | tail -4 >> $L
sed -i 's/    BK = min(block(D), 64 if block(E) <= 128 else 32)/    BK = min(block(D), 128 if block(E) <= 128 else 32)/' lasp_fx/ops/triton/backward.py
grep -n "    BK = " lasp_fx/ops/triton/backward.py >> $L
echo "=== BK = 128" >> $L
timeout 150 python3 $OP --json $OUT/op_bk128.json 2>&1 | grep -v "^$" | tail -4 >> $L
cat $L
