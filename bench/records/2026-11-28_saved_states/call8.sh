# Call 8 (nvidia-h200-x4, warm): LASP's check on 4 GPUs (call 6's was cut by its time limit after the first part).
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 LASP_FX_AUTOTUNE=0; timeout 85 torchrun --standalone --nproc-per-node=4 bench/sp.py --check-only --reps 3 2>&1 | grep --line-buffered "rel RMS\|vs float64\|Error" | cut -c1-900 | tee $OUT/check4.log
