python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
F='^W1\|OMP_NUM\|\*\*\*\*\|UserWarning\|return \|Variable._exec\|Guessing\|warn'
nvidia-smi -L > $OUT/card.txt
CUDA_VISIBLE_DEVICES=0 timeout 110 python3 bench/check_op_gpu.py --quick --json $OUT/check.json 2>&1 | grep -v "$F" > $OUT/check.log
CUDA_VISIBLE_DEVICES=0 timeout 60 python3 bench/host.py 2>&1 | grep -v "$F" > $OUT/host1.log
CUDA_VISIBLE_DEVICES=0,1 timeout 100 torchrun --standalone --nproc-per-node=2 bench/host.py --trace 30 --reps 20 --only "LASP ring fwd+bwd (check" 2>&1 | grep -v "$F" > $OUT/trace2.log
CUDA_VISIBLE_DEVICES=0,1 timeout 100 torchrun --standalone --nproc-per-node=2 bench/sp.py --tlocal 32768 --skip-check --reps 10 --impls ring-nocheck,allgather-nocheck --json $OUT/sp2.json 2>&1 | grep -v "$F" > $OUT/sp2.log
[ "$(nvidia-smi -L | wc -l)" -ge 4 ] && timeout 120 torchrun --standalone --nproc-per-node=4 bench/sp.py --tlocal 32768 --skip-check --reps 10 --impls ring-nocheck,allgather-nocheck --json $OUT/sp4.json 2>&1 | grep -v "$F" > $OUT/sp4.log
grep -v "^ok" $OUT/check.log; cat $OUT/host1.log; grep -A3 "^impl" $OUT/sp2.log $OUT/sp4.log
