"""Runs several recipes one after another in this process, or in each process of an ``accelerate launch``.

The 1-vs-2-process tests start the library once per side instead of once per method (its imports are most of a
tiny run). Each recipe goes through ``main_entry`` as ``recipes/distill_<method>.py`` does; its stdout goes to
``<logs>/<method>.rank<r>.out`` and its exit code to ``<logs>/exit-codes.rank<r>.json``.

    python tests/run_recipes.py PLAN.json LOGS   # PLAN: {"dm": {"argv": [...], "master_port": 29517}, "dc": ...}
"""

import contextlib
import json
import os
import sys
from pathlib import Path

from accelerate.state import AcceleratorState

from cmidd_hf.cli.runner import main_entry


def main(plan_file: str, logs: str) -> int:
    plan = json.loads(Path(plan_file).read_text())
    rank = os.environ.get("RANK", "0")
    Path(logs).mkdir(parents=True, exist_ok=True)
    codes = {}
    for method, run in plan.items():
        # a group of its own on a port of its own, its store hosted by rank 0 (not by torchrun's agent): reusing
        # the last group's store races with that group's teardown
        os.environ.update(MASTER_PORT=str(run["master_port"]), TORCHELASTIC_USE_AGENT_STORE="False")
        with open(Path(logs) / f"{method}.rank{rank}.out", "w") as out, contextlib.redirect_stdout(out):
            codes[method] = main_entry(run["argv"], None, method=method)
        # accelerate keeps its process state in a singleton and end_training() destroyed the process group:
        # clear it so that the next recipe's Accelerator starts a group, as a fresh process would
        AcceleratorState._reset_state(reset_partial_state=True)
    (Path(logs) / f"exit-codes.rank{rank}.json").write_text(json.dumps(codes))
    return max(codes.values())


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
