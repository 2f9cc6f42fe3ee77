#!/usr/bin/env bash
# Issue #21 evidence on Fashion-MNIST, IPC 50 (and DM's IPC 10 set under kd, the last lines of run.sh):
# SRe2L and SRe2L + CMI (lambda 0.01, the shipped preset's) with the ConvNet-3-BN teacher trained here, evaluated
# with kd (a random real subset of 500 images under the same kd beside them) and with the hard-label dsa protocol;
# DM's sets (300 iterations) under the same kd; the hard-label dsa protocol on the IPC 10 preset set too. Two chains
# side by side, one thread each (two cores); outputs under grids/sre2l-fmnist (git-ignored), summaries copied next
# to this script. Proxies and teacher: the budget study's cache (same specs and split as run.sh).
# Rerunnable: a step whose result is already in its set's card is skipped, so a cut-short run continues.
set -euo pipefail
OUT=${OUT:-grids/sre2l-fmnist}
CACHE=${CACHE:-grids/fmnist-budget-ipc10/proxy-cache}
TEACHER=local-dir:$CACHE/fashion-mnist-convnet3_bn-e10-lr0.01-wd0.001-b256-s0/proxy-0
COMMON=(--config recipes/configs/sre2l_cmi/fashion-mnist_ipc50.yaml --output_dir "$OUT" --threads_per_process 1
        --teacher_cache_dir "$CACHE" --proxy_cache_dir "$CACHE")

finished() { [ -f "$OUT/$1/README.md" ]; }  # the card is written last
evaluated() { grep -q "| distilled set | convnet3 | $2 | 300 | 3 |" "$OUT/$1/README.md" 2>/dev/null; }

sre2l() {  # a finished SRe2L set: $1 run name, $2 lambda, then extra flags
  local run=$1 lambda=$2; shift 2
  finished "$run" || python recipes/distill_sre2l.py "${COMMON[@]}" --run_name "$run" --cmi_weight "$lambda" "$@"
}

dsa() {  # the hard-label protocol on a finished set
  evaluated "$1" dsa || OMP_NUM_THREADS=1 python scripts/evaluate_synthetic.py "$OUT/$1" --protocol dsa \
    --epochs 300 --runs 3 --dataset fashion-mnist --update-card
}

dm_under_kd() {  # DM's set at IPC $1 (300 iterations, lambda 0), then the same kd as SRe2L's sets
  finished "dm-ipc$1-300" || python recipes/distill_dm.py --config "recipes/configs/dm_cmi/fashion-mnist_ipc$1.yaml" \
    --cmi_weight 0 --iterations 300 --eval_every 0 --eval_at '[]' --output_dir "$OUT" --run_name "dm-ipc$1-300" \
    --threads_per_process 1 --proxy_cache_dir "$CACHE" --eval_runs 3 --eval_epochs 300
  evaluated "dm-ipc$1-300" kd || OMP_NUM_THREADS=1 python scripts/evaluate_synthetic.py "$OUT/dm-ipc$1-300" \
    --protocol kd --epochs 300 --runs 3 --teacher "$TEACHER" --dataset fashion-mnist --update-card
}

(sre2l sre2l-ipc50 0
 dsa sre2l-ipc50
 dsa sre2l-cmi-l0.01-ipc10
 dm_under_kd 10) > "$OUT/ipc50-chain-a.log" 2>&1 &
(sre2l sre2l-cmi-l0.01-ipc50 0.01 --eval_baseline false  # the random subset under kd is sre2l-ipc50's (same seed, split)
 dsa sre2l-cmi-l0.01-ipc50
 dm_under_kd 50) > "$OUT/ipc50-chain-b.log" 2>&1 &
wait
