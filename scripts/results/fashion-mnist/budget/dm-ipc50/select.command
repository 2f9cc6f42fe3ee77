python scripts/run_cells.py scripts/results/fashion-mnist/budget-cells.yaml --cells dm-ipc50 --jobs 'select-*' --deadline 10000 --parallel 1 --extra --threads_per_process 1
