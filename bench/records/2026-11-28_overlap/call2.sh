# Call 2 (nvidia-h200-x2; x4 was not lent): LASP timed as CUDA graphs too (device time alone), NCCL at high
# stream priority against default, a timeline of the all-gather path, and the host's time per LASP piece.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
F='^W1\|OMP_NUM\|\*\*\*\*\|UserWarning\|return \|Variable._exec\|Guessing\|warn'
L=$OUT/call2.log; nvidia-smi -L > $L; N=$(nvidia-smi -L | wc -l)
SP="bench/sp.py --tlocal 32768 --skip-check --reps 10 --impls ring-nocheck,allgather-nocheck"
echo "=== sp$N default priority" >> $L
timeout 150 torchrun --standalone --nproc-per-node=$N $SP --json $OUT/sp.json 2>&1 | grep -v "$F" >> $L
echo "=== sp$N TORCH_NCCL_HIGH_PRIORITY=1" >> $L
TORCH_NCCL_HIGH_PRIORITY=1 timeout 150 torchrun --standalone --nproc-per-node=$N $SP --json $OUT/sp_hp.json 2>&1 | grep -v "$F" >> $L
echo "=== profile allgather P=$N" >> $L
mkdir -p /tmp/tr && timeout 80 torchrun --standalone --nproc-per-node=$N bench/sp.py --profile 32768 --method allgather --trace-dir /tmp/tr 2>&1 | grep -v "$F" | grep -A14 "profile rank" >> $L
cp /tmp/tr/trace_allgather_rank0.json.gz /tmp/tr/trace_allgather_rank$((N-1)).json.gz $OUT/
echo "=== host P=2" >> $L
CUDA_VISIBLE_DEVICES=0,1 timeout 100 torchrun --standalone --nproc-per-node=2 bench/host.py 2>&1 | grep -v "$F" >> $L
grep -v "^{" $L | grep -v "^ *$" | head -90
