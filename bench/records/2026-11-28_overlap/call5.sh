# Call 5 (nvidia-h200-x4): the exposed all-gather (folded into the output / dk / dv kernels): LASP check on 4 GPUs,
# timings at P=4 (with the baselines) and P=2 under TORCH_NCCL_HIGH_PRIORITY=1, then P=4 at default priority.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
F='^W1\|OMP_NUM\|\*\*\*\*\|UserWarning\|return \|Variable._exec\|Guessing\|warn'
L=$OUT/call5.log; nvidia-smi -L > $L
LASP_FX_AUTOTUNE=0 timeout 110 torchrun --standalone --nproc-per-node=4 bench/sp.py --check-only --reps 3 --json $OUT/sp4_check.json 2>&1 | grep -v "$F" | grep "rel RMS\|exchange\|Error" >> $L
SP="bench/sp.py --tlocal 32768 --skip-check --reps 10"
echo "=== P=4 TORCH_NCCL_HIGH_PRIORITY=1" >> $L
TORCH_NCCL_HIGH_PRIORITY=1 timeout 130 torchrun --standalone --nproc-per-node=4 $SP --impls ring-nocheck,allgather-nocheck,ulysses,lasp-original --json $OUT/sp4_hp1.json 2>&1 | grep -v "$F" | grep -A6 "^P=" >> $L
echo "=== P=2 TORCH_NCCL_HIGH_PRIORITY=1" >> $L
CUDA_VISIBLE_DEVICES=0,1 TORCH_NCCL_HIGH_PRIORITY=1 timeout 90 torchrun --standalone --nproc-per-node=2 $SP --impls ring-nocheck,allgather-nocheck --json $OUT/sp2_hp1.json 2>&1 | grep -v "$F" | grep -A4 "^P=" >> $L
echo "=== P=4 default priority" >> $L
timeout 80 torchrun --standalone --nproc-per-node=4 $SP --impls ring-nocheck,allgather-nocheck --json $OUT/sp4_hp0.json 2>&1 | grep -v "$F" | grep -A4 "^P=" >> $L
cat $L
