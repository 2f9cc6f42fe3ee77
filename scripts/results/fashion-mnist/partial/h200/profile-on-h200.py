"""Where one DM (+ CMI) run spends its time on this device: the budget study's config, 30 iterations, eager, under
``torch.profiler`` (CPU and, where present, CUDA activity); operator tables by self CPU and by self device time
go to ``$OUT``. ``python profile-on-h200.py LAMBDA`` from the repository root."""

import json
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from cmidd_hf.cli.runner import main_entry

weight = sys.argv[1]
out = os.environ.get("OUT", "/tmp")
activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
started = time.time()
with profile(activities=activities) as prof:
    main_entry(["--config", "recipes/configs/dm_cmi/fashion-mnist_ipc10.yaml", "--cmi_weight", weight,
                "--iterations", "30", "--eval_every", "0", "--eval_at", "29", "--eval_runs", "1",
                "--eval_epochs", "1", "--compile", "false", "--threads_per_process", "4",
                "--proxy_cache_dir", "/tmp/pc", "--output_dir", f"/tmp/prof{weight}", "--eval_baseline", "false",
                "--run_name", "set", "--checkpoint_every", "1000"], None, method="dm")
rows = [json.loads(line) for line in open(f"/tmp/prof{weight}/set/metrics.jsonl") if '"seconds"' in line]
print(f"lambda {weight}: s/it over steps 10..30:", sum(r["seconds"] for r in rows[10:]) / len(rows[10:]),
      "wall", time.time() - started)
keys = ("self_cpu_time_total",) + (("self_device_time_total",) if torch.cuda.is_available() else ())
for key in keys:
    with open(f"{out}/profile-lambda{weight}-{key}.txt", "w") as f:
        f.write(prof.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=70))
