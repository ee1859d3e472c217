# Call 5 (nvidia-h200-x2): precision of the split (HEAD 9e63de7, copied to bench/_old, untracked) beside the
# final code on the same inputs (call 4's H = 2 rows at 4K; H = 4 as call 2), one GPU each.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONUNBUFFERED=1
for h in 2 4; do
  echo "=== heads $h: new (GPU 0) | old (GPU 1)"
  CUDA_VISIBLE_DEVICES=0 PYTHONPATH=/tmp/site:. timeout 100 python3 bench/decay_grad_precision.py --ts 4096 --heads $h > $OUT/new$h.log 2>&1 &
  CUDA_VISIBLE_DEVICES=1 PYTHONPATH=/tmp/site:bench/_old:. timeout 100 python3 bench/decay_grad_precision.py --ts 4096 --heads $h > $OUT/old$h.log 2>&1
  wait
  paste $OUT/new$h.log $OUT/old$h.log | grep -v Warn
done
