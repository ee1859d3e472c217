# Call 4 (nvidia-h200-x4): device timelines of LASP fwd+bwd replayed as a CUDA graph at P=4 (all-gather: ranks
# 0 and 3; ring: rank 3), LASP at P=4 with NCCL held to 2 CTAs, then lasp_fx against fla on GPU 0.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 TORCH_NCCL_HIGH_PRIORITY=1
F='^W1\|OMP_NUM\|\*\*\*\*\|UserWarning\|return \|Variable._exec\|Guessing\|warn'
L=$OUT/call4.log; nvidia-smi -L > $L; N=$(nvidia-smi -L | wc -l)
mkdir -p /tmp/tr
for m in allgather ring; do
  timeout 100 torchrun --standalone --nproc-per-node=$N bench/sp.py --profile 32768 --graph --method $m --trace-dir /tmp/tr > /tmp/tr/$m.log 2>&1
  echo "profile $m rc=$?" >> $L
done
cp /tmp/tr/trace_allgather_graph_rank0.json.gz /tmp/tr/trace_allgather_graph_rank$((N-1)).json.gz /tmp/tr/trace_ring_graph_rank$((N-1)).json.gz $OUT/
echo "=== P=$N NCCL_MAX_CTAS=2" >> $L
NCCL_MAX_CTAS=2 NCCL_MAX_NCHANNELS=2 timeout 100 torchrun --standalone --nproc-per-node=$N bench/sp.py --tlocal 32768 --skip-check --reps 10 --impls ring-nocheck,allgather-nocheck 2>&1 | grep -v "$F" | grep -A4 "^P=" >> $L
echo "=== op.py lasp_fx vs fla, GPU 0" >> $L
CUDA_VISIBLE_DEVICES=0 timeout 330 python3 bench/op.py --ts 32768,131072 --big "" --impls lasp_fx,fla --decays const,gate --json $OUT/op_fla.json 2>&1 | grep -v "$F" >> $L
cat $L
