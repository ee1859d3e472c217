# Call 2 (nvidia-h200): the decay gradient through consistent 16-bit increments (no hi/lo split in the
# states) against the split of HEAD 9e63de7 (copied to bench/_old, untracked): precision vs float64 as T
# grows, the kernels' check, fwd+bwd times side by side, per-kernel profile.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONUNBUFFERED=1
nvidia-smi -L
echo "=== precision, new"
PYTHONPATH=/tmp/site:. timeout 120 python3 bench/decay_grad_precision.py --ts 4096,32768 --json $OUT/prec_new.json 2>&1 | grep -v Warn
echo "=== precision, old (split)"
PYTHONPATH=/tmp/site:bench/_old:. timeout 120 python3 bench/decay_grad_precision.py --ts 4096,32768 --json $OUT/prec_old.json 2>&1 | grep -v Warn
echo "=== check_op_gpu --quick (new)"
CUDA_VISIBLE_DEVICES=0 PYTHONPATH=/tmp/site:. timeout 200 python3 bench/check_op_gpu.py --quick --json $OUT/check.json 2>&1 | grep -v "^ok\|Warn" | tail -15
for who in new old; do
  P=/tmp/site:.; [ $who = old ] && P=/tmp/site:bench/_old:.
  echo "=== op.py $who"
  PYTHONPATH=$P timeout 150 python3 bench/op.py --ts 32768,131072 --big= --decays const,const_learn,gate --impls lasp_fx --json $OUT/op_$who.json 2>&1 | grep "lasp_fx"
done
echo "=== profile new"
PYTHONPATH=/tmp/site:. timeout 100 python3 bench/op.py --ts 32768 --big= --decays gate --impls lasp_fx --profile 32768 2>&1 | grep "kernel\|profile T"
