# Call 3: after the late-output kernel rewrite, the late-state pairs and the one-kernel all-gather combination:
# GPU check, LASP check and timings (default NCCL priority and TORCH_NCCL_HIGH_PRIORITY=1) on all GPUs.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
F='^W1\|OMP_NUM\|\*\*\*\*\|UserWarning\|return \|Variable._exec\|Guessing\|warn'
L=$OUT/call3.log; nvidia-smi -L > $L; N=$(nvidia-smi -L | wc -l); git log --oneline -1 >> $L
CUDA_VISIBLE_DEVICES=0 timeout 110 python3 bench/check_op_gpu.py --quick --json $OUT/check.json 2>&1 | grep -v "$F" | grep -v "^ok" >> $L
LASP_FX_AUTOTUNE=0 timeout 100 torchrun --standalone --nproc-per-node=$N bench/sp.py --check-only --reps 3 2>&1 | grep -v "$F" | grep "rel RMS\|exchange\|rror" >> $L
SP="bench/sp.py --tlocal 32768 --skip-check --reps 10 --impls ring-nocheck,allgather-nocheck"
for hp in 1 0; do
  echo "=== P=$N TORCH_NCCL_HIGH_PRIORITY=$hp" >> $L
  TORCH_NCCL_HIGH_PRIORITY=$hp timeout 130 torchrun --standalone --nproc-per-node=$N $SP --json $OUT/sp${N}_hp$hp.json 2>&1 | grep -v "$F" | grep -A4 "^P=" >> $L
done
if [ "$N" -ge 4 ]; then
  echo "=== P=2 TORCH_NCCL_HIGH_PRIORITY=1" >> $L
  CUDA_VISIBLE_DEVICES=0,1 TORCH_NCCL_HIGH_PRIORITY=1 timeout 100 torchrun --standalone --nproc-per-node=2 $SP --json $OUT/sp2_hp1.json 2>&1 | grep -v "$F" | grep -A4 "^P=" >> $L
fi
cat $L
