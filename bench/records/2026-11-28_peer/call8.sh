# Call 8 (nvidia-h200; no multi-GPU kind was lent then): lasp_fx alone at 32K and 128K, const (buffer), const
# learnable and learnable gate, after the decay-gradient kernels (#3's gate ratio at both lengths).
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
L=$OUT/call8.log; nvidia-smi -L > $L
timeout 200 python3 bench/op.py --ts 32768,131072 --big "" --impls lasp_fx --decays const,const_learn,gate --json $OUT/op.json 2>&1 | grep -v "^$" | tail -8 >> $L
cat $L
