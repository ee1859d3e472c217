# Call 4 (nvidia-h200; its venv has pytest): the tests on the GPU machine's torch 2.11 (CI runs 2.13 on CPU): the Triton kernels on the
# GPU itself (test_triton_kernels, test_saved_states), and the custom ops' new schemas under opcheck / compile /
# the "lasp" backend / parallelize on gloo (CPU tensors) with torch 2.11.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 LASP_FX_AUTOTUNE=0
L=$OUT/call4.log; nvidia-smi -L > $L; python3 -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $L
timeout 480 python3 -m pytest -q -p no:cacheprovider tests/test_saved_states.py tests/test_triton_kernels.py tests/test_op_compile.py tests/test_backend.py tests/test_known_kernels.py tests/test_op.py 2>&1 | grep -v "Warning\|^  \|^$" | tail -30 >> $L
cat $L
