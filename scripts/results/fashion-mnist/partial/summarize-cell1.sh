#!/bin/bash
# Cell 1's summary and curves from the committed runs (finished or not), and its finished runs as rows of cells.csv;
# run from the repository root.
P=scripts/results/fashion-mnist/partial
python scripts/budget_study.py --title "Cell 1: DM vs DM + CMI (λ 20), Fashion-MNIST IPC 10, 20,000 iterations" \
  --arm DM $P/dm-seed0/run/set $P/dm-seed1/run/set $P/dm-seed2/run/set \
  --arm "DM + CMI" $P/dm+cmi-seed0/run/set $P/dm+cmi-seed1/run/set $P/dm+cmi-seed2/run/set \
  --markdown $P/cell1-summary.md --plot $P/cell1-curves.png --csv scripts/results/fashion-mnist/cells.csv --grid fmnist-budget-cell1
