python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
F='^W1\|OMP_NUM\|\*\*\*\*\|UserWarning\|return \|Variable._exec\|Guessing\|warn'
nvidia-smi -L > $OUT/card.txt
timeout 200 python3 bench/segments.py --ts 32768,131072 --decays const,gate --nsubs 4,8,16,32 2>&1 | grep -v "$F" > $OUT/segments.log
timeout 60 python3 bench/host.py 2>&1 | grep -v "$F" > $OUT/host1.log
timeout 200 python3 bench/op.py --ts 32768 --big "" --impls lasp_fx,fla --decays const,gate --json $OUT/op.json 2>&1 | grep -v "$F" > $OUT/op.log
cat $OUT/card.txt $OUT/segments.log $OUT/host1.log $OUT/op.log
