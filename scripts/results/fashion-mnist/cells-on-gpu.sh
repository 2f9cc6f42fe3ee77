#!/bin/bash
# Issue #20 on one borrowed GPU: the cells of budget-cells.yaml (CELLS, default all) through scripts/run_cells.py and,
# beside them when CELL1=1, cell 1's seeds 1-2 (partial/h200/run-on-h200.sh), all stopped with checkpoints at
# DEADLINE seconds. Compiled (2x eager on an H200 for DM). Run from the repository root on the device machine with
# .whl (datasets, kornia, evaluate and their pure-Python needs for its Python 3.12) and .devdata/fashion-mnist (the
# IDX files of dataset-fashion-mnist) carried. Back here:
#   for f in <files_at>/cells/*.tgz; do tar xzf $f -C scripts/results/fashion-mnist/budget; done
#   (CELL1=1) see partial/README.md for cell1-gpu.tgz
set -u
START=$(date +%s); DEADLINE=${DEADLINE:-500}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 HF_HOME=/tmp/hf PYTHONUNBUFFERED=1
mkdir -p /usr/share/datasets/fashion-mnist && cp .devdata/fashion-mnist/* /usr/share/datasets/fashion-mnist/
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
if [ "${CELL1:-0}" = 1 ]; then
  NOPIP=1 RESUME=1 COMPILE=true DEADLINE=$DEADLINE EXTRA="--threads_per_process 2" \
    bash scripts/results/fashion-mnist/partial/h200/run-on-h200.sh > $OUT/cell1.log 2>&1 &
  CELL1_PID=$!
fi
python3 scripts/run_cells.py scripts/results/fashion-mnist/budget-cells.yaml ${CELLS:+--cells $CELLS} \
  --deadline $(( DEADLINE - ($(date +%s) - START) )) --parallel ${PARALLEL:-6} --pack $OUT/cells \
  --extra --threads_per_process 2 --compile true
[ -z "${CELL1_PID:-}" ] || { wait $CELL1_PID; tail -30 $OUT/cell1.log; }
ls -la $OUT; echo "done $(( $(date +%s) - START )) s"
