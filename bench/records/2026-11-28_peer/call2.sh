# Call 2 (nvidia-h200: no multi-GPU kind was lent then): the peer exchange kernel on one GPU with P ranks
# simulated (bench/check_peer_gpu.py: concurrent streams, graphs), then lasp_fx alone at 32K with the per-kernel
# profile of none / const (buffer) / learnable gate (where the gate's extra backward time goes, #3).
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
L=$OUT/call2.log; git log --oneline -1 > $L; nvidia-smi -L >> $L
echo "=== check_peer_gpu" >> $L
timeout 120 python3 bench/check_peer_gpu.py >> $L 2>&1
echo "=== op profile" >> $L
timeout 200 python3 bench/op.py --ts 32768 --big "" --impls lasp_fx --decays const,gate --profile 32768 --json $OUT/op.json 2>&1 | grep -v "^$\|-----\|Activity\|cuLaunch\|cudaLaunch\|cudaDeviceSync\|Self CPU" | cut -c1-60,100-130,150-250 >> $L
cat $L
