# Call 1 (nvidia-h200-x4): where op.py's profile finds 3 x 92 us elementwise kernels per fwd+bwd (scratch);
# the all-gather by transport (NCCL, peer memory) alone and beside a matmul; LASP's all-gather through peer
# memory (LASP_FX_PEER=1, the experiment's switch): its check on 4 GPUs, timings at P=4 and P=2 against NCCL's.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
F='^W1\|OMP_NUM\|\*\*\*\*\|UserWarning\|return \|Variable._exec\|Guessing\|warn'
L=$OUT/call1.log; nvidia-smi -L > $L; env | grep -i "NVLS\|MULTICAST" >> $L
echo "=== scratch profile" >> $L
CUDA_VISIBLE_DEVICES=0 timeout 80 python3 scratch_prof.py 2>&1 | grep -v "$F" | cut -c1-400 >> $L
echo "=== exchange P=4" >> $L
timeout 60 torchrun --standalone --nproc-per-node=4 bench/exchange.py --json $OUT/exchange4.json 2>&1 | grep -v "$F" | tail -30 >> $L
echo "=== check P=4 peer" >> $L
LASP_FX_PEER=1 LASP_FX_AUTOTUNE=0 timeout 120 torchrun --standalone --nproc-per-node=4 bench/sp.py --check-only --reps 3 --json $OUT/sp4_check.json 2>&1 | grep -v "$F" | grep "rel RMS\|exchange\|Error\|error" | cut -c1-600 >> $L
SP="bench/sp.py --tlocal 32768 --skip-check --reps 10"
export TORCH_NCCL_HIGH_PRIORITY=1
echo "=== P=4 peer" >> $L
LASP_FX_PEER=1 timeout 80 torchrun --standalone --nproc-per-node=4 $SP --impls allgather-nocheck --json $OUT/sp4_peer.json 2>&1 | grep -v "$F" | grep -A4 "^P=\|Error" >> $L
echo "=== P=4 nccl" >> $L
timeout 80 torchrun --standalone --nproc-per-node=4 $SP --impls allgather-nocheck,ring-nocheck --json $OUT/sp4_nccl.json 2>&1 | grep -v "$F" | grep -A4 "^P=\|Error" >> $L
echo "=== P=2 peer" >> $L
CUDA_VISIBLE_DEVICES=0,1 LASP_FX_PEER=1 timeout 70 torchrun --standalone --nproc-per-node=2 $SP --impls allgather-nocheck --json $OUT/sp2_peer.json 2>&1 | grep -v "$F" | grep -A4 "^P=\|Error" >> $L
cat $L
