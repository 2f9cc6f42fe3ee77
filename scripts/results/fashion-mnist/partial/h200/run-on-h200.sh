#!/bin/bash
# Issue #20 cell 1 (DM vs DM+CMI, Fashion-MNIST IPC 10, 20,000 iterations), seeds 1 and 2, on one H200.
# Four runs side by side, eager (--compile false; COMPILE=true compiles: 2× faster after 30 s), each stopped by SIGTERM (checkpoint) at the deadline.
# RESUME=1 continues the runs committed beside this script instead of starting them.
# Carried: .whl (datasets, kornia, evaluate and their pure-Python needs for the machine's Python 3.12) and
# .devdata/fashion-mnist (the IDX files of dataset-fashion-mnist). Run from the repository root.
set -u
START=$(date +%s); DEADLINE=${DEADLINE:-520}
[ -n "${NOPIP:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 HF_HOME=${HF_HOME_DEV:-/tmp/hf} PYTHONUNBUFFERED=1
mkdir -p /usr/share/datasets/fashion-mnist && cp .devdata/fashion-mnist/* /usr/share/datasets/fashion-mnist/
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; python3 -c "import torch;print(torch.__version__, torch.cuda.is_available())"
G=/tmp/grid; mkdir -p $G; cp -r scripts/results/fashion-mnist/partial/dm-seed0/proxy-cache $G/proxy-cache
# Cell 1 began (2026-12-03/04) with the two proxies seed 0 trained, shared by every seed, before caches were kept per
# training split; its runs keep them by name so a resume never changes a run's proxies.
P=$G/proxy-cache/fashion-mnist-minus-val100-seed0-convnet3-e5-lr0.01-wd0.001-b256-s0
python3 -c "from cmidd_hf.data.loading import load_image_classification as l; d=l('fashion-mnist'); print('data ok', d)" 2>&1 | tail -3
echo "prep $(( $(date +%s) - START )) s"
PIDS=()
for seed in ${SEEDS:-1 2}; do
  for arm in dm dm+cmi; do
    w=""; [ $arm = dm ] && w="--cmi_weight 0"
    if [ -n "${RESUME:-}" ]; then  # continue the committed partial runs
      src=scripts/results/fashion-mnist/partial/$arm-seed$seed  # seed 1 moved on to a CPU on 2026-12-05
      [ -d $src ] || src=scripts/results/fashion-mnist/partial/h200/$arm-seed$seed
      cp -r $src/run $G/$arm-seed$seed
      w="$w --resume_from_checkpoint latest"
    fi
    left=$(( DEADLINE - ($(date +%s) - START) ))
    timeout -s TERM -k 60 $left python3 recipes/distill_dm.py --config recipes/configs/dm_cmi/fashion-mnist_ipc10.yaml $w \
      --seed $seed --compile ${COMPILE:-false} --proxies local-dir:$P/proxy-0 local-dir:$P/proxy-1 --output_dir $G/$arm-seed$seed --run_name set \
      --eval_baseline false ${EXTRA:-} > $G/$arm-seed$seed.log 2>&1 &
    PIDS+=($!)
  done
done
( while sleep 60; do for f in $G/*.log; do echo "$(basename $f): $(tr '\r' '\n' < $f | grep -v '^\s*$' | tail -1 | cut -c1-150)"; done; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; done ) &
MON=$!
for p in "${PIDS[@]}"; do wait $p; echo "run $p exit $?"; done
kill $MON
echo "runs ended $(( $(date +%s) - START )) s"
for f in $G/*.log; do echo "== $f"; tr '\r' '\n' < $f | grep -v '^\s*$' | grep -v "it/s\]$\|s/it\]$" | tail -8; done
cd $G && tar czf $OUT/cell1-gpu.tgz --exclude=proxy-cache . && ls -la $OUT
