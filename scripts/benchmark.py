"""Run a results grid — dataset × IPC × method × seed — under one declared budget, and tabulate it.

Every cell is one command users can run themselves (``scripts/select_coreset.py`` for the coreset rows,
``recipes/distill_<method>.py`` with its CPU-sized default config for the distillation rows), writing its set
(card with results) under ``OUTPUT_DIR/cells/``. A finished cell is never run again, so an interrupted grid
resumes where it stopped; a grid folder refuses a different budget. The table (``results.md``), every cell
(``results.csv``) and a plot (``results.png``) are written beside the published numbers known for the dataset
(ConvNet-3). Distillation cells also evaluate one network after 1/10 and 1/5 of their iterations (``--eval_at``),
so the table shows how soon each method gets there.

    python scripts/benchmark.py --dataset fashion-mnist --ipc 10 50 --methods random herding dm dm+cmi \\
        --seeds 0 1 2 --iterations 200 --eval_epochs 300 --eval_runs 3 --output_dir outputs/benchmark/fmnist \\
        --proxies local-dir:proxies/fashion-mnist-resnet18_cifar/proxy-0 --cmi_weight dm+cmi=10
    python scripts/benchmark.py --output_dir outputs/benchmark/fmnist --table_only     # re-tabulate

Methods: the coresets ``random``, ``herding``, ``k-center``, ``forgetting``; every registered distillation
method (``dm``, ``dc``, ``dsa``, ``idc``, ``idm``) and its ``+cmi`` variant; ``whole`` (the whole training set,
one network, ``--whole_epochs``).
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: ConvNet-3 accuracies (%) published for a dataset: {dataset: {(method, ipc): (accuracy, source)}}
PUBLISHED = {
    "fashion-mnist": {
        **{("dc", ipc): (acc, "DC/DSA/DM README") for ipc, acc in ((1, 70.5), (10, 82.3), (50, 83.6))},
        **{("dsa", ipc): (acc, "DC/DSA/DM README") for ipc, acc in ((1, 70.6), (10, 84.6), (50, 88.7))},
        **{("idc", ipc): (acc, "IDC README") for ipc, acc in ((1, 81.0), (10, 86.0), (50, 86.2))},
    },
}
CORESETS = ("random", "herding", "k-center", "forgetting")
DISTILLERS = ("dm", "dc", "dsa", "idc", "idm")
BUDGET_KEYS = ("dataset", "iterations", "eval_epochs", "eval_runs", "whole_epochs", "proxies", "cmi_weight", "extra")
METHOD_ORDER = (*CORESETS, "whole", *(m for base in DISTILLERS for m in (base, f"{base}+cmi")))
FRACTIONS = {10: "acc_at_10pct", 5: "acc_at_20pct"}  # iterations // key -> the table's early-accuracy column


def parse_pairs(items: list[str], name: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"error: --{name} {item!r}: use METHOD=VALUE")
        key, value = item.split("=", 1)
        pairs[key] = value
    return pairs


def fraction_steps(iterations: int) -> list[str]:
    """The iterations after 1/10 and 1/5 of the run: the only periodic evaluations the table reads."""
    return [str(step) for step in sorted({iterations // fraction for fraction in FRACTIONS} - {0})]


def decoded_per_class(method: str, ipc: int) -> int:
    """Images per class a distillation cell's set decodes into (the method's default parametrization)."""
    import cmidd_hf.methods  # noqa: F401  (registers the methods)
    from cmidd_hf.engine.method import get_method

    return get_method(method).config_class().decoded_per_class(ipc)


def cell_command(args, method: str, ipc: int, seed: int, folder: Path) -> list[str]:
    """The command of one cell (what the CSV records)."""
    python = sys.executable
    if method in CORESETS:
        return [python, str(ROOT / "scripts" / "select_coreset.py"), "--dataset", args.dataset, "--ipc", str(ipc),
                "--method", method, "--seed", str(seed), "--output_dir", str(folder), "--eval_epochs",
                str(args.eval_epochs), "--eval_runs", str(args.eval_runs), "--proxy_cache_dir",
                str(args.output_dir / "proxy-cache"), *shlex.split(args.extra.get(method, ""))]
    base = method.removesuffix("+cmi")
    cmi = method.endswith("+cmi")
    command = [python, str(ROOT / "recipes" / f"distill_{base}.py"), "--dataset", args.dataset, "--ipc", str(ipc),
               "--seed", str(seed), "--iterations", str(args.iterations), "--output_dir", str(folder), "--run_name",
               "set", "--eval_epochs", str(args.eval_epochs), "--eval_runs", str(args.eval_runs),
               "--eval_every_runs", "1", "--eval_baseline", "false",
               "--checkpoint_every", str(max(1, args.iterations // 10)), "--proxy_cache_dir",
               str(args.output_dir / "proxy-cache")]
    if fraction_steps(args.iterations):
        command += ["--eval_at", *fraction_steps(args.iterations)]
    if args.proxies:
        command += ["--proxies", *args.proxies]
    command += ["--cmi_weight", args.cmi_weight.get(method, "0") if cmi else "0"]
    return command + shlex.split(args.extra.get(method, ""))


def run_cell(args, method: str, ipc: int, seed: int) -> dict:
    """Run (or resume) one cell; returns its CSV row. A cell is done once its result.json exists."""
    folder = args.output_dir / "cells" / f"{method}-ipc{ipc}-seed{seed}"
    done = folder / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if method == "whole":
        command = ["evaluate_whole_dataset", args.dataset, f"epochs={args.whole_epochs}", f"seed={seed}"]
        print(f"[whole seed {seed}] one network on the whole training set, {args.whole_epochs} epochs", flush=True)
        from cmidd_hf import evaluate_whole_dataset, load_image_classification
        from cmidd_hf.data.augment import default_augmentation

        data = load_image_classification(args.dataset)
        result = evaluate_whole_dataset(data, epochs=args.whole_epochs, seed=seed,
                                        augmentation=default_augmentation(data.name))
        (folder / "whole.json").write_text(json.dumps(result.to_dict()))
    else:
        command = cell_command(args, method, ipc, seed, folder)
        if method not in CORESETS and (folder / "set" / "checkpoints").exists():
            command += ["--resume_from_checkpoint", "latest"]
        print(f"[{method} ipc {ipc} seed {seed}] {shlex.join(command)}", flush=True)
        with open(folder / "log.txt", "a") as log:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode
        if code != 0:
            raise SystemExit(f"error: cell {folder.name} failed (exit {code}); see {folder / 'log.txt'}")
    row = {"dataset": args.dataset, "ipc": ipc, "method": method, "seed": seed,
           "wall_s": round(time.perf_counter() - started, 1), "command": shlex.join(command), **read_result(folder)}
    done.write_text(json.dumps(row, indent=2))
    return row


def read_result(folder: Path) -> dict:
    """Final accuracy (and, for distillation, the one-network accuracy after 1/10 and 1/5 of the iterations)."""
    if (folder / "whole.json").exists():
        return {"accuracy": json.loads((folder / "whole.json").read_text())["mean"]}
    from cmidd_hf.hub.synthetic_set import load_synthetic

    if (folder / "set").exists():
        synthetic = load_synthetic(folder / "set")
        records = [json.loads(line) for line in (folder / "set" / "metrics.jsonl").read_text().splitlines()]
        periodic = [r for r in records if r.get("event") == "evaluation" and not r.get("final") and r["step"] > 0]
        result = synthetic.results[0]
        validation = result.get("validation_accuracies")
        row = {"accuracy": result["mean"], "final_cmi": synthetic.distillation.get("final_cmi"),
               "val_accuracy": sum(validation) / len(validation) if validation else None}
        for fraction, key in FRACTIONS.items():
            match = [r for r in periodic if r["step"] == synthetic.distillation["iterations"] // fraction]
            row[key] = match[0][f"accuracy/{result['arch']}"] if match else None
        return row
    (saved,) = [p for p in folder.iterdir() if p.is_dir()]
    return {"accuracy": load_synthetic(saved).results[0]["mean"]}


def mean_std(values: list[float], signed: bool = False) -> str:
    """'mean ± sample std (count)' of a table cell; '–' when there is nothing to show."""
    if not values:
        return "–"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):{'+' if signed else ''}.2f} ± {spread:.2f} ({len(values)})"


def paired_gain(rows: list[dict], base: str, cmi: str, ipc: int, key: str) -> str:
    """Mean ± std over the seeds both methods ran of 100·(cmi − base) for one result ``key``."""
    def by_seed(method: str) -> dict:
        return {r["seed"]: r[key] for r in rows if r["method"] == method and r["ipc"] == ipc and r.get(key) is not None}

    first, second = by_seed(base), by_seed(cmi)
    return mean_std([100 * (second[s] - first[s]) for s in sorted(first.keys() & second.keys())], signed=True)


def tabulate(output_dir: Path, rows: list[dict], budget: dict) -> None:
    """results.csv (every cell), results.md (mean ± std over seeds, published numbers), results.png."""
    fields = ["dataset", "ipc", "method", "seed", "accuracy", "val_accuracy", "acc_at_10pct", "acc_at_20pct",
              "final_cmi", "wall_s", "command"]
    with open(output_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    dataset = budget["dataset"]
    ipcs = sorted({r["ipc"] for r in rows if r["method"] != "whole"})
    methods = sorted({r["method"] for r in rows}, key=METHOD_ORDER.index)  # the same order however cells were run
    published = PUBLISHED.get(dataset, {})

    def summary(method: str, ipc: int, key: str = "accuracy") -> str:
        values = [100 * r[key] for r in rows if r["method"] == method and (r["ipc"] == ipc or method == "whole")
                  and r.get(key) is not None]
        return mean_std(values)

    lines = [f"# {dataset}: ConvNet-3 test accuracy (%), mean ± std over seeds (count)", "",
             f"Budget: {budget['iterations']} iterations per distillation, final evaluation {budget['eval_runs']} "
             f"networks × {budget['eval_epochs']} epochs per seed; whole set: 1 network × {budget['whole_epochs']} "
             "epochs. Published: the methods' own protocols (1000+ iterations, 1000 epochs).", "",
             "| method | " + " | ".join(f"IPC {i}" for i in ipcs) + " |",
             "|---|" + "---|" * len(ipcs)]
    for method in methods:
        lines.append(f"| {method} | " + " | ".join(summary(method, i) for i in ipcs) + " |")
    for method in sorted({m for m, _ in published}):
        lines.append(f"| {method} (published) | " + " | ".join(
            f"{published[(method, i)][0]:.1f}" if (method, i) in published else "–" for i in ipcs) + " |")
    distilled = [m for m in methods if m not in CORESETS and m != "whole"]
    if distilled:
        lines += ["", "Accuracy after 1/10 and 1/5 of the iterations (one network per seed):", "",
                  "| method | " + " | ".join(f"IPC {i} @1/10 | IPC {i} @1/5" for i in ipcs) + " |",
                  "|---|" + "---|---|" * len(ipcs)]
        for method in distilled:
            lines.append(f"| {method} | " + " | ".join(
                f"{summary(method, i, 'acc_at_10pct')} | {summary(method, i, 'acc_at_20pct')}" for i in ipcs) + " |")
    pairs = [(m, f"{m}+cmi") for m in distilled if f"{m}+cmi" in methods]
    if pairs:
        keys = (("accuracy", "test"), ("val_accuracy", "validation"), ("acc_at_10pct", "@1/10"),
                ("acc_at_20pct", "@1/5"))
        lines += ["", "Gain of the CMI term, paired by seed (method+cmi − method, points; mean ± std (seeds)); "
                  "choose λ on the validation column, never on test:", "",
                  "| pair | " + " | ".join(f"IPC {i} {name}" for i in ipcs for _, name in keys) + " |",
                  "|---|" + "---|" * (len(ipcs) * len(keys))]
        for base, cmi in pairs:
            lines.append(f"| {cmi} − {base} | " + " | ".join(
                paired_gain(rows, base, cmi, i, key) for i in ipcs for key, _ in keys) + " |")
    sources = sorted({source for _, source in published.values()})
    if sources:
        lines += ["", "Published numbers: " + "; ".join(sources) + "."]
    (output_dir / "results.md").write_text("\n".join(lines) + "\n")
    plot(output_dir / "results.png", rows, published, ipcs, methods, dataset)
    print("\n".join(lines))


def plot(path: Path, rows: list[dict], published: dict, ipcs: list[int], methods: list[str], dataset: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method in methods:
        if method == "whole":
            values = [100 * r["accuracy"] for r in rows if r["method"] == "whole"]
            ax.axhline(statistics.mean(values), color="black", linestyle=":", label="whole training set")
            continue
        xs, means, stds = [], [], []
        for ipc in ipcs:
            values = [100 * r["accuracy"] for r in rows if r["method"] == method and r["ipc"] == ipc]
            if values:
                xs.append(ipc)
                means.append(statistics.mean(values))
                stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=method)
    for method, marker in zip(sorted({m for m, _ in published}), "x+*1234", strict=False):
        points = [(i, published[(method, i)][0]) for i in ipcs if (method, i) in published]
        if points:  # black markers: the measured lines keep the colours
            ax.scatter(*zip(*points, strict=True), marker=marker, s=60, color="black", label=f"{method} (published)")
    ax.set_xscale("log")
    ax.minorticks_off()  # the log axis would otherwise label 2×10¹, 3×10¹, ... between the IPCs
    ax.set_xticks(ipcs, [str(i) for i in ipcs])
    ax.set_xlabel("images per class")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{dataset}, ConvNet-3")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--ipc", type=int, nargs="+", default=[10])
    parser.add_argument("--methods", nargs="+", default=["random", "herding", "dm", "dm+cmi"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=200, help="iterations of every distillation cell")
    parser.add_argument("--eval_epochs", type=int, default=300)
    parser.add_argument("--eval_runs", type=int, default=3, help="networks of the final evaluation per cell")
    parser.add_argument("--whole_epochs", type=int, default=5, help="epochs of the whole-set baseline")
    parser.add_argument("--proxies", nargs="*", default=[], help="proxies of the +cmi cells (recipe syntax)")
    parser.add_argument("--cmi_weight", nargs="*", default=[], metavar="METHOD=LAMBDA",
                        help="λ of each +cmi method, e.g. dm+cmi=10 idm+cmi=100")
    parser.add_argument("--extra", nargs="*", default=[], metavar="METHOD=ARGS",
                        help="more arguments for a method's command, e.g. 'idc=--inner_loop 20'")
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--table_only", action="store_true", help="tabulate the finished cells, run nothing")
    args = parser.parse_args(argv)
    args.cmi_weight, args.extra = parse_pairs(args.cmi_weight, "cmi_weight"), parse_pairs(args.extra, "extra")
    known = set(CORESETS) | set(DISTILLERS) | {f"{m}+cmi" for m in DISTILLERS} | {"whole"}
    unknown = [m for m in args.methods if m not in known]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {sorted(known)}")
    single = [f"{m} at ipc {ipc}" for m in args.methods if m.endswith("+cmi") for ipc in args.ipc
              if decoded_per_class(m.removesuffix("+cmi"), ipc) < 2]
    if single and not args.table_only:  # old grids still tabulate
        parser.error(f"{', '.join(single)}: one synthetic image per class has a class-aware CMI of exactly 0, so "
                     "the +cmi cell would be its base method's; drop it (the base method is the IPC 1 row)")
    missing = [m for m in args.methods if m.endswith("+cmi") and m not in args.cmi_weight]
    if missing and not args.table_only:
        parser.error(f"--cmi_weight needs a λ for {missing} (e.g. {missing[0]}=10)")
    budget = {"dataset": args.dataset, "iterations": args.iterations, "eval_epochs": args.eval_epochs,
              "eval_runs": args.eval_runs, "whole_epochs": args.whole_epochs, "proxies": args.proxies,
              "cmi_weight": args.cmi_weight, "extra": args.extra}
    budget_file = args.output_dir / "budget.json"
    if budget_file.exists():
        saved = json.loads(budget_file.read_text())
        if args.table_only:
            budget = saved
        changed = [k for k in BUDGET_KEYS if saved.get(k) != budget.get(k)]
        if changed and not args.table_only:
            print(f"error: {args.output_dir} holds a grid with another budget ({', '.join(changed)}: "
                  f"{[saved.get(k) for k in changed]}); use its settings or another --output_dir", file=sys.stderr)
            return 2
    elif args.table_only:
        print(f"error: {args.output_dir} holds no grid (no budget.json)", file=sys.stderr)
        return 2
    else:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        budget_file.write_text(json.dumps(budget, indent=2))

    rows = []
    if args.table_only:
        rows = [json.loads(p.read_text()) for p in sorted((args.output_dir / "cells").glob("*/result.json"))]
    else:
        for ipc in args.ipc:
            for method in args.methods:
                if method == "whole" and ipc != args.ipc[0]:
                    continue
                for seed in args.seeds if method != "whole" else args.seeds[:1]:
                    rows.append(run_cell(args, method, ipc, seed))
    if not rows:
        print("error: no finished cells", file=sys.stderr)
        return 2
    tabulate(args.output_dir, rows, budget)
    return 0


if __name__ == "__main__":
    sys.exit(main())
