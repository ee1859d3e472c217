python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
F='^W1\|OMP_NUM\|\*\*\*\*\|UserWarning\|return \|Variable._exec\|Guessing\|warn'
nvidia-smi -L > $OUT/card.txt
timeout 150 python3 bench/op.py --ts 32768 --big "" --impls lasp_fx,fla --decays const,gate --json $OUT/op.json 2>&1 | grep -v "$F" > $OUT/op.log
timeout 90 python3 bench/segments.py --ts 8192 --decays const --nsubs 4,8,16,32 2>&1 | grep -v "$F" > $OUT/segments.log
cat $OUT/card.txt $OUT/op.log $OUT/segments.log
