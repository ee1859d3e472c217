#!/usr/bin/env bash
# One device call that checks and times lasp_fx on a 4-GPU machine, all logs in one file ($OUT/suite.log;
# the device tool brings back at most 8 files). From the repository root, with the wheels in .whl/:
#   run(kind="nvidia-h100-x4", carry=[".whl"], command="bash bench/gpu_suite.sh")
#   run(kind="nvidia-h100-x4", carry=[".whl"], command="PARTS='check sp4' bash bench/gpu_suite.sh")
# Parts (in this order; each has its own time limit, ~450 s in all):
#   check  bench/check_op_gpu.py --quick: the kernels against float64 on one GPU (~75 s)
#   op     bench/op.py, lasp_fx alone on GPU 0 at 32K and 128K, every decay form, with a profile (~150 s)
#   sp4    bench/sp.py on 4 GPUs: the LASP check (autotuning off; its bf16 part compiles for ~2 min), then timings at 32K/GPU (~250 s)
#   sp2    bench/sp.py on GPUs 0,1: timings at 32K/GPU (~80 s)
#   fla    bench/op.py, lasp_fx and fla at 32K and 128K, const and gate (fla's first 128K call tunes for minutes)
#   seg    bench/segments.py: chunks per segment against speed at 8K, 32K, 128K (~150 s)
#   host   bench/host.py on GPUs 0,1: host time per call, launch paths, autograd's thread (~60 s)
#   peer   bench/check_peer_gpu.py on GPU 0 (the peer exchange kernel, P ranks simulated), then
#          bench/exchange.py on all GPUs (peer kernel against NCCL's all-gather, alone and beside a matmul) (~60 s)
#   tests  the whole pytest suite: every device-taking test on CPU and on CUDA (multi-rank ones over NCCL, one
#          rank per GPU), 8 xdist workers (the tests of one test_distributed_sp spawn on one worker), junit XML
#          in $OUT/tests.xml; at most 540 s, SIGINT first so that the XML and the summary are still written
#   faults bench/check_faults_gpu.py: the exchange kernels with their header checks, -inf gates through the op (~60 s)
#   models bench/check_models_gpu.py: every example model through parallelize() and backend="lasp", one
#          process per model side by side (MODELS=...; ~150 s)
#   cuda   the pytest cases that run on the GPU only (device "cuda" and the kernel files), 14 workers (~150 s)
#   e2e    bench/e2e.py: the ~1B lightning LM through parallelize(), the op and fla by hand, with checkpointing and
#          the vocabulary-chunked loss at 32K and 128K tokens ($OUT/e2e.json, e2e.png; E2E_BUDGET s, default 240)
# SP_IMPLS limits the timed paths of sp4 / sp2 (default: all of them).
set -o pipefail
PARTS=${PARTS:-check op sp4 sp2}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null || exit 1
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
# the backend "lasp" is found through the package's entry point: install it into this python3
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "pip install -e . failed"
LOG="$OUT/suite.log"
NOISE='^W1\|OMP_NUM\|\*\*\*\*\|UserWarning\|return \|Variable._exec\|Guessing'
IMPLS=${SP_IMPLS:+--impls $SP_IMPLS}
{ date -u; git log --oneline -1 2>/dev/null; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; } > "$LOG"
for part in $PARTS; do
  echo "=== $part" >> "$LOG"
  case $part in
    check) CUDA_VISIBLE_DEVICES=0 timeout 110 python3 bench/check_op_gpu.py --quick --json "$OUT/check.json" ;;
    op) CUDA_VISIBLE_DEVICES=0 timeout 200 python3 bench/op.py --ts 32768,131072 --big "" --impls lasp_fx \
          --profile 32768 --json "$OUT/op.json" ;;
    sp4) LASP_FX_AUTOTUNE=0 timeout 160 torchrun --standalone --nproc-per-node=4 bench/sp.py --check-only --reps 3 \
           --json "$OUT/sp4_check.json"
         timeout 130 torchrun --standalone --nproc-per-node=4 bench/sp.py --tlocal 32768 --skip-check --reps 10 \
           $IMPLS --json "$OUT/sp4.json" ;;
    sp2) CUDA_VISIBLE_DEVICES=0,1 timeout 100 torchrun --standalone --nproc-per-node=2 bench/sp.py --tlocal 32768 \
           --skip-check --reps 10 $IMPLS --json "$OUT/sp2.json" ;;
    fla) CUDA_VISIBLE_DEVICES=0 timeout 400 python3 bench/op.py --ts 32768,131072 --big "" --impls lasp_fx,fla \
           --decays const,gate --json "$OUT/op_fla.json" ;;
    seg) CUDA_VISIBLE_DEVICES=0 timeout 200 python3 bench/segments.py --ts 8192,32768,131072 --decays const,gate ;;
    host) CUDA_VISIBLE_DEVICES=0,1 timeout 120 torchrun --standalone --nproc-per-node=2 bench/host.py ;;
    peer) CUDA_VISIBLE_DEVICES=0 timeout 90 python3 bench/check_peer_gpu.py
          timeout 90 torchrun --standalone --nproc-per-node="$(nvidia-smi -L | wc -l)" bench/exchange.py \
            --json "$OUT/exchange.json" ;;
    tests) timeout -s INT -k 30 540 python3 -m pytest -q -n 8 -p xdist --dist loadgroup -p no:cacheprovider --durations=25 \
             --junitxml="$OUT/tests.xml" tests ;;
    faults) CUDA_VISIBLE_DEVICES=0 timeout 90 python3 bench/check_faults_gpu.py --json "$OUT/faults.json" ;;
    models) # one process per model, side by side: each compiles for ~100 s on the CPU, the GPU work is small
            port=29600
            for m in ${MODELS:-lightning retnet linear gated hybrid}; do
              port=$((port + 1))
              CUDA_VISIBLE_DEVICES=0 timeout 300 torchrun --nnodes=1 --nproc-per-node=1 --master-port=$port \
                bench/check_models_gpu.py --models "$m" --tokens 2048 --json "$OUT/models_$m.json" &
            done
            wait ;;
    cuda) LASP_FX_AUTOTUNE=0 timeout -s INT -k 20 ${CUDA_TESTS_S:-200} python3 -m pytest -q -n 14 -p xdist \
            --dist loadgroup -p no:cacheprovider --junitxml="$OUT/tests_cuda.xml" \
            -k "cuda or triton or kernel or saved or gathered or decay_grad or op_split or forget or launch" tests ;;
    e2e) CUDA_VISIBLE_DEVICES=0 timeout $(( ${E2E_BUDGET:-240} + 90 )) torchrun --standalone --nproc-per-node=1 \
           bench/e2e.py --lengths ${E2E_LENGTHS:-32768,131072} --levers ckpt+chunkloss --variants parallelize,hand,fla \
           --budget ${E2E_BUDGET:-240} --json "$OUT/e2e.json" --png "$OUT/e2e.png" ;;
    *) echo "unknown part $part" ;;
  esac 2>&1 | grep -v "$NOISE" >> "$LOG"
done
grep " passed\| failed\|^FAILED\|^ERROR\|ALL OK\|FAILURES\|FAIL \|^ *[0-9]* \(none\|const\|gate\)\|<-\|^  [a-zA-Z]\|max rel\|^[a-z-]*-nocheck\|^single\|^ring\|^allgather\|^auto\|^ulysses\|^lasp-orig\|^P=\|rror" "$LOG"
