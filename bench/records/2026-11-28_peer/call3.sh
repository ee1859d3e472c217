# Call 3 (nvidia-h200-x2): kernels checked against float64 after the decay-gradient kernels; the peer exchange at
# P=2 (bench/exchange.py); LASP checked on 2 GPUs through peer memory; timings at P=2 (peer all-gather, ring, and
# the NCCL all-gather with LASP_FX_PEER=0); lasp_fx alone at 32K, const and learnable gate (#3).
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 TORCH_NCCL_HIGH_PRIORITY=1
F='^W1\|OMP_NUM\|\*\*\*\*\|UserWarning\|return \|Variable._exec\|Guessing\|warn'
L=$OUT/call3.log; nvidia-smi -L > $L
echo "=== check_op_gpu --quick" >> $L
CUDA_VISIBLE_DEVICES=0 timeout 110 python3 bench/check_op_gpu.py --quick --json $OUT/check.json 2>&1 | tail -25 >> $L
echo "=== exchange P=2" >> $L
timeout 60 torchrun --standalone --nproc-per-node=2 bench/exchange.py --json $OUT/exchange2.json 2>&1 | grep -v "$F" | tail -22 >> $L
echo "=== check P=2" >> $L
LASP_FX_AUTOTUNE=0 timeout 100 torchrun --standalone --nproc-per-node=2 bench/sp.py --check-only --reps 3 --json $OUT/sp2_check.json 2>&1 | grep -v "$F" | grep "rel RMS\|exchange\|Error\|error" | cut -c1-600 >> $L
SP="bench/sp.py --tlocal 32768 --skip-check --reps 10"
echo "=== P=2" >> $L
timeout 80 torchrun --standalone --nproc-per-node=2 $SP --impls allgather-nocheck,ring-nocheck --json $OUT/sp2.json 2>&1 | grep -v "$F" | grep -A4 "^P=\|Error" >> $L
echo "=== P=2 LASP_FX_PEER=0" >> $L
LASP_FX_PEER=0 timeout 60 torchrun --standalone --nproc-per-node=2 $SP --impls allgather-nocheck 2>&1 | grep -v "$F" | grep -A3 "^P=\|Error" >> $L
echo "=== op 32K" >> $L
CUDA_VISIBLE_DEVICES=0 timeout 100 python3 bench/op.py --ts 32768 --big "" --impls lasp_fx --decays const,const_learn,gate --json $OUT/op.json 2>&1 | grep -v "^$" | tail -5 >> $L
cat $L
