"""DM vs DM+CMI on mnist-5k at the same number of iterations: a lambda sweep with accuracy and final CMI.

Every run uses the default recipe (recipes/configs/dm_cmi/mnist-5k_ipc10.yaml: ConvNet proxies trained once
and cached, DSA on) with only ``cmi_weight`` and this script's budget changed, and no random-subset baseline;
lambda = 0 is plain DM (its CMI is still measured). The README's sweep ran with the previous default's
5-epoch proxies (today's default trains them 2 epochs), so a rerun prints slightly different numbers.
Accuracy is reported at an intermediate iteration too, to see whether CMI gets there sooner.

    python scripts/bench_accuracy.py
    python scripts/bench_accuracy.py --weights 0 10 100 1000 --ipc 50 --iterations 500
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cmidd_hf.cli.arguments import parse_recipe
from cmidd_hf.cli.runner import run_distillation

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "dm_cmi" / "mnist-5k_ipc10.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=float, nargs="+", default=[0, 10, 100, 1000])
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--midpoint", type=int, default=250, help="iteration of the intermediate evaluation (0: none)")
    parser.add_argument("--eval_runs", type=int, default=5)
    parser.add_argument("--eval_epochs", type=int, default=300)
    parser.add_argument("--midpoint_runs", type=int, default=2)
    parser.add_argument("--output_dir", default="outputs/bench-accuracy")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more recipe flags")
    args = parser.parse_args()

    rows = []
    for weight in args.weights:
        run = parse_recipe([
            "--cmi_weight", str(weight), "--ipc", str(args.ipc), "--iterations", str(args.iterations),
            "--eval_every", str(args.midpoint), "--eval_every_runs", str(args.midpoint_runs), "--eval_at_start",
            "false", "--eval_runs", str(args.eval_runs), "--eval_epochs", str(args.eval_epochs),
            "--eval_baseline", "false", "--checkpoint_every", "0", "--output_dir", args.output_dir,
            "--run_name", f"ipc{args.ipc}-lambda{weight:g}",
            *args.extra], "dm", DEFAULT_CONFIG)
        summary = run_distillation(run)
        metrics = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
        midpoint = next((m for m in metrics if m.get("event") == "evaluation" and m["step"] == args.midpoint), {})
        (result,) = summary["results"]
        rows.append((weight, result, summary["final_cmi"], midpoint.get("accuracy/convnet3")))

    print(f"\nmnist-5k, IPC {args.ipc}, {args.iterations} iterations, ConvNet-3, DSA; final: {args.eval_runs} runs x "
          f"{args.eval_epochs} epochs; acc@{args.midpoint}: {args.midpoint_runs} runs")
    midpoint = f"{args.midpoint} it" if args.midpoint else "midpoint (off)"
    print(f"| lambda | accuracy (%) | final CMI (nats) | acc @ {midpoint} (%) |")
    print("|---|---|---|---|")
    for weight, result, cmi, mid in rows:
        mid_text = f"{100 * mid:.2f}" if mid is not None else "-"
        print(f"| {weight:g} | {100 * result['mean']:.2f} ± {100 * result['std']:.2f} | {cmi:.4f} | {mid_text} |")


if __name__ == "__main__":
    main()
