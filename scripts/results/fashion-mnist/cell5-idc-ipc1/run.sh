#!/bin/bash
# Issue #20, cell 5: IDC vs IDC + CMI, Fashion-MNIST IPC 1, 20 iterations (100 image steps each), seed 0.
#   bash run.sh baseline   # the IDC arm (λ 0)
#   bash run.sh cmi        # λ chosen on the validation split at a tenth of the budget (2 iterations; λ 0.2 / 2 / 20
#                          # / 2000 per class: the first three left the set's CMI where λ 0 leaves it, so a larger
#                          # one was added), then the IDC + CMI arm with it
# Run from the repository root, the two lines side by side (one thread each). Finished runs are skipped.
set -euo pipefail
G=${G:-grids/fmnist-cell5}
common=(--config recipes/configs/idc_cmi/fashion-mnist_ipc1.yaml --seed 0 --threads_per_process 1
        --proxy_cache_dir $G/proxy-cache --run_name set --eval_baseline false --checkpoint_every 1)
resume() {  # continue an interrupted run, else start it afresh
  if ls -d $1/set/checkpoints/step_* > /dev/null 2>&1; then echo --resume_from_checkpoint latest; else rm -rf $1; fi
}
arm() {
  [ -f $G/arm-lambda$1/set/README.md ] || python recipes/distill_idc.py "${common[@]}" --iterations 20 \
      --eval_every 2 --eval_at 2 4 --cmi_weight $1 --output_dir $G/arm-lambda$1 $(resume $G/arm-lambda$1) \
      > $G/arm-lambda$1.log 2>&1
}
if [ "$1" = baseline ]; then arm 0; exit; fi
for lam in 0.2 2 20 2000; do
  [ -f $G/select-lambda$lam/set/README.md ] || python recipes/distill_idc.py "${common[@]}" --iterations 2 \
      --eval_every 0 --eval_at 1 --cmi_weight $lam --output_dir $G/select-lambda$lam \
      $(resume $G/select-lambda$lam) \
      > $G/select-lambda$lam.log 2>&1
done
best=$(python - "$G" <<'PY'
import sys
from pathlib import Path
from cmidd_hf.hub.synthetic_set import load_synthetic
scores = {}
for lam in ("0.2", "2", "20", "2000"):
    v = load_synthetic(Path(sys.argv[1]) / f"select-lambda{lam}" / "set").results[0]["validation_accuracies"]
    scores[lam] = sum(v) / len(v)
    print(f"λ {lam}: validation {scores[lam]:.4f}", file=sys.stderr)
print(max(scores, key=scores.get))
PY
)
echo "λ chosen on validation: $best"
arm $best
