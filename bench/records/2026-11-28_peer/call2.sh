# Call 2 (nvidia-h200-x4): the peer exchange kernel (ops/triton/peer.py) against NCCL + combination, alone and
# beside a matmul; LASP (all-gather through peer memory, now the default on CUDA) checked on 4 GPUs; timings at
# P=4 (peer, ring, and the NCCL all-gather with LASP_FX_PEER=0) and P=2; a graph-replay trace of P=4.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 TORCH_NCCL_HIGH_PRIORITY=1
F='^W1\|OMP_NUM\|\*\*\*\*\|UserWarning\|return \|Variable._exec\|Guessing\|warn'
L=$OUT/call2.log; git log --oneline -1 > $L
echo "=== exchange P=4" >> $L
timeout 90 torchrun --standalone --nproc-per-node=4 bench/exchange.py --json $OUT/exchange4.json 2>&1 | grep -v "$F" | tail -30 >> $L
echo "=== check P=4" >> $L
LASP_FX_AUTOTUNE=0 timeout 120 torchrun --standalone --nproc-per-node=4 bench/sp.py --check-only --reps 3 --json $OUT/sp4_check.json 2>&1 | grep -v "$F" | grep "rel RMS\|exchange\|Error\|error" | cut -c1-600 >> $L
SP="bench/sp.py --tlocal 32768 --skip-check --reps 10"
echo "=== P=4" >> $L
timeout 90 torchrun --standalone --nproc-per-node=4 $SP --impls allgather-nocheck,ring-nocheck --json $OUT/sp4.json 2>&1 | grep -v "$F" | grep -A4 "^P=\|Error" >> $L
echo "=== P=4 LASP_FX_PEER=0" >> $L
LASP_FX_PEER=0 timeout 80 torchrun --standalone --nproc-per-node=4 $SP --impls allgather-nocheck 2>&1 | grep -v "$F" | grep -A4 "^P=\|Error" >> $L
echo "=== P=2" >> $L
CUDA_VISIBLE_DEVICES=0,1 timeout 80 torchrun --standalone --nproc-per-node=2 $SP --impls allgather-nocheck,ring-nocheck --json $OUT/sp2.json 2>&1 | grep -v "$F" | grep -A4 "^P=\|Error" >> $L
echo "=== trace P=4 graph" >> $L
timeout 60 torchrun --standalone --nproc-per-node=4 bench/sp.py --profile 32768 --method allgather --graph --trace-dir $OUT 2>&1 | grep -v "$F" | tail -5 >> $L
rm -f $OUT/*rank1* $OUT/*rank2*; ls $OUT >> $L
cat $L
