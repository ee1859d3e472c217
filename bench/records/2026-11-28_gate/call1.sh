# Call 1 (nvidia-h200): per-kernel device time of fwd+bwd at 32K for none / const (buffer) / gate (learnable)
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
nvidia-smi -L
timeout 250 python3 bench/op.py --ts 32768 --big= --decays const,gate --impls lasp_fx --profile 32768 2>&1 | grep -v "^$"
