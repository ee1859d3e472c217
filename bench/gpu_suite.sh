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
#   faults bench/check_faults_gpu.py: the exchange kernels with their header checks, -inf gates through the op,
#          a mismatch raised at the next step (distributed/watch.py) and that path's cost (~120 s)
#   models bench/check_models_gpu.py: every example model through parallelize() and backend="lasp", one
#          process per model side by side (MODELS=...; 5 at once take ~400 s: each compiles on the CPU)
#   cuda   the pytest cases that run on the GPU only (device "cuda" and the kernel files), 14 workers (~150 s)
#   e2e    bench/e2e.py: the ~1B lightning LM through parallelize(), the op and fla by hand, with checkpointing and
#          the vocabulary-chunked loss at 32K and 128K tokens ($OUT/e2e.json, e2e.png; E2E_BUDGET s, default 240;
#          E2E_LENGTHS, E2E_LEVERS, E2E_VARIANTS, E2E_TILES override the lengths, lever sets, variants and the
#          tiles of the lever "tiles"; E2E_STEPS, E2E_WARMUP the timed and warm-up steps, fewer for the longest;
#          E2E_GPUS ranks (default 1: lengths are global, so P x the tokens per GPU), E2E_DP data-parallel replicas)
#   header bench/header.py on GPU 0: what the rank check's headers cost beside the op (~60 s)
#   length bench/check_length_gpu.py on GPU 0: bf16 against float64 up to 1M tokens, and >2^31 elements (~4 min)
#   decay  bench/check_decay_grad_gpu.py on GPU 0: the decay gradient's precision as T grows (~60 s)
#   cost   bench/cost_model.py on this call's sp*.json: the auto cost model against what sp4 / sp2 measured
#   cli    `lasp-fx bench` (python3 -m lasp_fx bench) into $OUT/cli/, LASP on every GPU when there are 2 or more
#   packed bench/check_packed_gpu.py --quick (packed kernels against float64), then bench/packed.py (128K tokens,
#          documents of 4K, against the unpacked op) (~200 s)
#   softmax bench/softmax_sp.py: a hybrid's softmax layer as rank 3 of 4 at 32K tokens per rank (~150 s)
#   trainpack bench/check_train_pack_gpu.py: examples/train.py --pack under parallelize() against the plain model (~120 s)
#   padding bench/padding.py: HF attention_mask (none, ones, right, left) through a sharded layer, checked, timed (~20 s)
#   parity bench/loss_parity.py on every GPU (2 or more): 300 steps of the hybrid model, 8K tokens, through
#          parallelize() against the model as written on GPU 0 ($OUT/parity.json, parity.png)
#   memory bench/memory_breakdown.py: the ~1B LM's live tensors at a step's peak (or at its out-of-memory failure),
#          with every lever, MEM_TOKENS tokens (default 1048576) and MEM_TILES tiles (default 4) ($OUT/mem.json; ~5 min)
#   smoke  every single-process bench script once, small, autotuning off, on GPU 0: a line
#          "smoke <script> rc=<exit status>" each, JSON under $OUT/smoke/ (at most 550 s)
#   smoke-ranks  the same for check_peer_gpu.py, the torchrun scripts (sp.py, host.py's LASP cases, exchange.py:
#          2 ranks, or 1 on a one-GPU machine), cost_model.py, `lasp-fx bench` and e2e.py --tiny (CPU) (at most 540 s)
# SP_IMPLS limits the timed paths of sp4 / sp2 (default: all of them).
# A record of a call (bench/records/README.md) names its command as the log's first line shows it.
set -o pipefail
PARTS=${PARTS:-check op sp4 sp2}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null || exit 1
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
# the backend "lasp" is found through the package's entry point: install it into this python3
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "pip install -e . failed"
LOG="$OUT/suite.log"
NOISE='^W1\|OMP_NUM\|\*\*\*\*\|UserWarning\|return \|Variable._exec\|Guessing'
IMPLS=${SP_IMPLS:+--impls $SP_IMPLS}
NGPU=$(nvidia-smi -L | wc -l)
_run() {  # name, seconds, command...: the command's exit status on a line of its own
  local name=$1 limit=$2
  shift 2
  timeout "$limit" "$@"
  echo "smoke $name rc=$?"
}
smoke() {  # the single-process scripts once each, small, on GPU 0
  local S="$OUT/smoke"
  mkdir -p "$S"
  export LASP_FX_AUTOTUNE=0 CUDA_VISIBLE_DEVICES=0
  _run op.py 90 python3 bench/op.py --ts 2048 --big "" --impls lasp_fx,sdpa,lightning --decays const,gate \
    --profile 2048 --json "$S/op.json"
  _run segments.py 60 python3 bench/segments.py --ts 4096 --nsubs 4 --decays const
  _run host.py 45 python3 bench/host.py --reps 5
  _run header.py 45 python3 bench/header.py --device cuda --reps 5 --json "$S/header.json"
  _run check_decay_grad_gpu.py 75 python3 bench/check_decay_grad_gpu.py --ts 2048 --heads 2 --json "$S/decay.json"
  _run check_length_gpu.py 75 python3 bench/check_length_gpu.py --ts 2048 --heads 2 --dim 32 --large 0 \
    --json "$S/length.json"
  _run check_faults_gpu.py 150 python3 bench/check_faults_gpu.py --json "$S/faults.json"
  _run check_op_gpu.py--help 30 python3 bench/check_op_gpu.py --help  # its run: part check
  _run check_models_gpu.py--help 30 python3 bench/check_models_gpu.py --help  # its run: part models
}
smoke_ranks() {  # the scripts that run under torchrun (as many ranks as GPUs, at most 2), lasp-fx bench, e2e
  local S="$OUT/smoke" P=$(( NGPU < 2 ? 1 : 2 ))
  mkdir -p "$S"
  export LASP_FX_AUTOTUNE=0
  CUDA_VISIBLE_DEVICES=0 _run check_peer_gpu.py 60 python3 bench/check_peer_gpu.py
  _run sp.py 150 torchrun --standalone --nproc-per-node=$P bench/sp.py --tlocal 2048 --skip-check --reps 3 \
    --json "$S/sp$P.json"
  _run cost_model.py 30 python3 bench/cost_model.py "$S/sp$P.json" --predict 4
  _run host.py-lasp 60 torchrun --standalone --nproc-per-node=$P bench/host.py --reps 5 --only LASP
  _run exchange.py 60 torchrun --standalone --nproc-per-node=$P bench/exchange.py --reps 5 --json "$S/exchange.json"
  _run lasp-fx-bench 90 python3 -m lasp_fx bench --out "$S/cli" --device cuda --lengths 1024 --reps 3 \
    --ranks $(( NGPU < 2 ? 0 : 2 ))
  _run e2e.py 90 torchrun --standalone --nproc-per-node=1 bench/e2e.py --tiny --variants parallelize,hand --levers none \
    --json "$S/e2e.json"
}
{ echo "command: PARTS=\"$PARTS\"${SP_IMPLS:+ SP_IMPLS=$SP_IMPLS}${E2E_BUDGET:+ E2E_BUDGET=$E2E_BUDGET}\
${E2E_LENGTHS:+ E2E_LENGTHS=$E2E_LENGTHS}${E2E_LEVERS:+ E2E_LEVERS=$E2E_LEVERS}\
${E2E_VARIANTS:+ E2E_VARIANTS=$E2E_VARIANTS}${E2E_TILES:+ E2E_TILES=$E2E_TILES}\
${E2E_STEPS:+ E2E_STEPS=$E2E_STEPS}${E2E_WARMUP:+ E2E_WARMUP=$E2E_WARMUP}${E2E_GPUS:+ E2E_GPUS=$E2E_GPUS}${E2E_DP:+ E2E_DP=$E2E_DP}${CUDA_TESTS_S:+ CUDA_TESTS_S=$CUDA_TESTS_S}${MODELS:+ MODELS=\"$MODELS\"}${MEM_TOKENS:+ MEM_TOKENS=$MEM_TOKENS}${MEM_TILES:+ MEM_TILES=$MEM_TILES}\
 bash bench/gpu_suite.sh"
  date -u; git log --oneline -1 2>/dev/null; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; } > "$LOG"
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
    faults) CUDA_VISIBLE_DEVICES=0 timeout 150 python3 bench/check_faults_gpu.py --json "$OUT/faults.json" ;;
    models) # one process per model, side by side: each compiles for ~100 s on the CPU, the GPU work is small
            port=29600
            for m in ${MODELS:-lightning retnet linear gated hybrid}; do
              port=$((port + 1))
              CUDA_VISIBLE_DEVICES=0 timeout 420 torchrun --nnodes=1 --nproc-per-node=1 --master-port=$port \
                bench/check_models_gpu.py --models "$m" --tokens 2048 --json "$OUT/models_$m.json" &
            done
            wait ;;
    cuda) LASP_FX_AUTOTUNE=0 timeout -s INT -k 20 ${CUDA_TESTS_S:-200} python3 -m pytest -q -n 14 -p xdist \
            --dist loadgroup -p no:cacheprovider --junitxml="$OUT/tests_cuda.xml" \
            -k "cuda or triton or kernel or saved or gathered or decay_grad or op_split or forget or launch" tests ;;
    e2e) CUDA_VISIBLE_DEVICES=$(seq -s, 0 $(( ${E2E_GPUS:-1} - 1 ))) timeout $(( ${E2E_BUDGET:-240} + 90 )) \
           torchrun --standalone --nproc-per-node=${E2E_GPUS:-1} \
           bench/e2e.py --lengths ${E2E_LENGTHS:-32768,131072} --levers ${E2E_LEVERS:-ckpt+chunkloss} \
           --variants ${E2E_VARIANTS:-parallelize,hand,fla} ${E2E_DP:+--dp $E2E_DP} \
           ${E2E_TILES:+--tiles $E2E_TILES} ${E2E_STEPS:+--steps $E2E_STEPS} ${E2E_WARMUP:+--warmup $E2E_WARMUP} \
           --budget ${E2E_BUDGET:-240} --json "$OUT/e2e.json" --png "$OUT/e2e.png" ;;
    header) CUDA_VISIBLE_DEVICES=0 timeout 150 python3 bench/header.py --device cuda --json "$OUT/header.json" ;;
    length) CUDA_VISIBLE_DEVICES=0 timeout 330 python3 bench/check_length_gpu.py --json "$OUT/check_length.json" ;;
    decay) CUDA_VISIBLE_DEVICES=0 timeout 150 python3 bench/check_decay_grad_gpu.py --json "$OUT/check_decay_grad.json" ;;
    cost) timeout 60 python3 bench/cost_model.py $(ls "$OUT"/sp*.json 2>/dev/null) ;;
    cli) timeout 300 python3 -m lasp_fx bench --out "$OUT/cli" --device cuda --ranks $(( NGPU < 2 ? 0 : NGPU )) ;;
    packed) CUDA_VISIBLE_DEVICES=0 timeout 150 python3 bench/check_packed_gpu.py --quick --json "$OUT/check_packed.json"
            CUDA_VISIBLE_DEVICES=0 timeout 240 python3 bench/packed.py --profile --json "$OUT/packed.json" ;;
    softmax) CUDA_VISIBLE_DEVICES=0 timeout 200 python3 bench/softmax_sp.py --json "$OUT/softmax_sp.json" ;;
    padding) CUDA_VISIBLE_DEVICES=0 timeout 120 python3 bench/padding.py --json "$OUT/padding.json" ;;
    trainpack) CUDA_VISIBLE_DEVICES=0 timeout 300 python3 bench/check_train_pack_gpu.py --json "$OUT/train_pack_gpu.json" ;;
    parity) timeout 500 torchrun --standalone --nproc-per-node=$NGPU bench/loss_parity.py --json "$OUT/parity.json" \
              --png "$OUT/parity.png" --model hybrid --steps 300 --seq-len 8192 --batch-size 1 --dim 512 --layers 4 \
              --heads 8 --vocab 256 ;;
    memory) CUDA_VISIBLE_DEVICES=0 timeout 560 torchrun --standalone --nproc-per-node=1 bench/memory_breakdown.py --device cuda \
              --big --tokens "${MEM_TOKENS:-1048576}" --warm-tokens 16384 --tiles "${MEM_TILES:-4}" --top 40 --json "$OUT/mem.json" ;;
    smoke) smoke ;;
    smoke-ranks) smoke_ranks ;;
    *) echo "unknown part $part" ;;
  esac 2>&1 | grep --line-buffered -v "$NOISE" >> "$LOG"
done
grep "^smoke \| passed\| failed\|^FAILED\|^ERROR\|ALL OK\|FAILURES\|FAIL \|^ *[0-9]* \(none\|const\|gate\)\|<-\|^  [a-zA-Z]\|max rel\|^[a-z-]*-nocheck\|^single\|^ring\|^allgather\|^auto\|^ulysses\|^lasp-orig\|^P=\|rror" "$LOG" \
  || true  # an e2e-only log has no line of this summary: not a failure
