# Call 1 (nvidia-h200-x2): the backward reusing the forward's segment states.
# GPU 0: the kernels against float64 (--quick, with the long shape whose backward reuses the states);
# GPU 1 meanwhile: op.py at 32K and 128K, lasp_fx and fla, with the reuse (default) and without (LASP_FX_SAVE_STATES=0).
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 TORCH_NCCL_HIGH_PRIORITY=1
F='^W1\|OMP_NUM\|\*\*\*\*\|UserWarning\|return \|Variable._exec\|Guessing\|warn'
L=$OUT/call1.log; nvidia-smi -L > $L
OP="bench/op.py --ts 32768,131072 --big= --decays const,const_learn,gate"
(CUDA_VISIBLE_DEVICES=0 timeout 230 python3 bench/check_op_gpu.py --quick --json $OUT/check.json > $OUT/check.log 2>&1) &
(CUDA_VISIBLE_DEVICES=1 timeout 200 python3 $OP --impls lasp_fx,fla --json $OUT/op.json > $OUT/op.log 2>&1;
 CUDA_VISIBLE_DEVICES=1 LASP_FX_SAVE_STATES=0 timeout 80 python3 $OP --impls lasp_fx --json $OUT/op_nosave.json > $OUT/op_nosave.log 2>&1) &
wait
echo "=== check_op_gpu --quick" >> $L; tail -28 $OUT/check.log >> $L
echo "=== op (saved states)" >> $L; grep -v "^$" $OUT/op.log | tail -14 >> $L
echo "=== op LASP_FX_SAVE_STATES=0" >> $L; grep -v "^$" $OUT/op_nosave.log | tail -8 >> $L
cat $L
