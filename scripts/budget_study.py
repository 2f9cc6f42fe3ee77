"""Summarize one cell of the budget study (issue #20) from its run folders: per arm the final test accuracy over
seeds, the paired difference by seed, the iteration at which each run first reaches its final accuracy − 0.5
points (the paper's "sooner" claim), the one-network accuracy at every checkpoint both arms reached, and one plot
of the curves. Unfinished runs are listed and drawn dashed, never averaged into a final number.

    python scripts/budget_study.py --title "DM vs DM + CMI, Fashion-MNIST IPC 10" \\
        --arm DM runs/dm-seed0/set runs/dm-seed1/set --arm "DM + CMI" runs/dm+cmi-seed0/set runs/dm+cmi-seed1/set \\
        --markdown cell1.md --plot cell1.png --csv cells.csv --grid fmnist-cell1

``--csv`` writes each finished run as a row of the study's ``cells.csv`` (replacing the row of the same grid,
method and seed): final test and validation accuracy from the set's card, the one-network accuracy at 1/10 and
1/5 of the iterations, the final set CMI, the distillation's own seconds (``elapsed_seconds`` of the last
checkpoint: evaluations excluded, summed over every machine the run moved through) and the command that
replays it from the run's ``config.yaml``.
"""

import argparse
import csv
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml

SOONER_MARGIN = 0.005  # "reaches its final accuracy": within half a point of it


@dataclass
class Run:
    """One distillation run as its folder records it."""

    path: Path
    seed: int
    iterations: int
    reached: int
    curve: dict[int, float] = field(default_factory=dict)  # step -> one-network test accuracy
    final: float | None = None  # mean test accuracy of the final evaluation, None while unfinished
    final_cmi: float | None = None

    @property
    def finished(self) -> bool:
        return self.final is not None

    def first_reaching(self, target: float) -> int | None:
        """The first checkpoint whose one-network accuracy is at least ``target``."""
        return next((step for step, acc in sorted(self.curve.items()) if acc >= target), None)

    @property
    def sooner(self) -> int | None:
        return self.first_reaching(self.final - SOONER_MARGIN) if self.finished else None


def read_run(path: Path) -> Run:
    """A run from its ``config.yaml`` and ``metrics.jsonl`` (the folder a recipe writes as ``<output_dir>/<run>``)."""
    for name in ("config.yaml", "metrics.jsonl"):
        if not (path / name).is_file():
            raise SystemExit(f"error: {path} has no {name}; pass the run folder (<output_dir>/<run_name>)")
    config = yaml.safe_load((path / "config.yaml").read_text())
    run = Run(path=path, seed=int(config["seed"]), iterations=int(config["iterations"]), reached=0)
    for line in (path / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        run.reached = max(run.reached, int(record.get("step", 0)))
        if record.get("event") != "evaluation":
            continue
        accuracy = next(v for k, v in record.items() if k.startswith("accuracy/"))
        if record.get("final"):
            run.final, run.final_cmi = accuracy, record.get("final_cmi")
        else:
            run.curve[int(record["step"])] = accuracy
    return run


def mean_std(values: list[float], signed: bool = False) -> str:
    """'mean ± sample std' in points; one value says so (a spread of one is not 0); '–' when there is nothing."""
    if not values:
        return "–"
    mean = f"{statistics.mean(values):{'+' if signed else ''}.2f}"
    if len(values) == 1:
        return f"{mean} (one seed)"
    return f"{mean} ± {statistics.stdev(values):.2f}"


def paired(base: list[Run], other: list[Run], value) -> list[tuple[int, float]]:
    """(seed, 100·(value(other) − value(base))) for every seed where both give a value."""
    first = {r.seed: value(r) for r in base}
    pairs = [(r.seed, value(r), first.get(r.seed)) for r in other]
    return [(seed, 100 * (b - a)) for seed, b, a in sorted(pairs) if a is not None and b is not None]


def summarize(title: str, arms: dict[str, list[Run]]) -> str:
    """The cell's markdown: runs, finals, paired differences (the first arm is the base), checkpoints."""
    lines = [f"### {title}", "", "| arm | seed | iterations done | final test acc. (%) | first within 0.5 of final |",
             "|---|---|---|---|---|"]
    for label, runs in arms.items():
        for run in sorted(runs, key=lambda r: r.seed):
            final = f"{100 * run.final:.2f}" if run.finished else "unfinished"
            sooner = f"{run.sooner:,}" if run.sooner is not None else "–"
            lines.append(f"| {label} | {run.seed} | {run.reached:,} / {run.iterations:,} | {final} | {sooner} |")
    lines += ["", "| arm | finished seeds | test acc. (%) |", "|---|---|---|"]
    for label, runs in arms.items():
        done = [100 * r.final for r in runs if r.finished]
        lines.append(f"| {label} | {len(done)} | {mean_std(done)} |")
    base_label, *others = arms
    for label in others:
        diffs = paired(arms[base_label], arms[label], lambda r: r.final)
        by_seed = ", ".join(f"seed {s}: {d:+.2f}" for s, d in diffs)
        lines += ["", f"Paired final difference ({label} − {base_label}, points): "
                      f"{mean_std([d for _, d in diffs], signed=True)}" + (f" ({by_seed})" if diffs else "")]
        steps = sorted(set.intersection(*(set(r.curve) for r in arms[base_label] + arms[label])))
        if steps:
            header = "| iteration | " + " | ".join(f"{s:,}" for s in steps) + " |"
            lines += ["", f"One network per checkpoint, paired by seed ({label} − {base_label}, points, "
                          f"{len(arms[label])} seeds):", "", header, "|---|" + "---|" * len(steps)]
            cells = [mean_std([d for _, d in paired(arms[base_label], arms[label], lambda r, s=s: r.curve[s])],
                              signed=True) for s in steps]
            lines.append("| difference | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


CSV_FIELDS = ["grid", "dataset", "ipc", "method", "seed", "accuracy", "val_accuracy", "acc_at_10pct", "acc_at_20pct",
              "final_cmi", "wall_s", "command"]


def csv_row(grid: str, run: Run) -> dict:
    """``cells.csv``'s row for a finished run, read from its card, config and last checkpoint."""
    from huggingface_hub import DatasetCard

    checkpoints = sorted((run.path / "checkpoints").glob("step_*/distill_state.json"))
    if not (run.path / "README.md").is_file() or not checkpoints:
        raise SystemExit(f"error: {run.path} has no card (README.md) or no checkpoint; --csv reads the run folder "
                         "a finished recipe run leaves (checkpoint_every > 0)")
    card = DatasetCard.load(run.path / "README.md").data.to_dict()["distillation"]["default"]
    config = yaml.safe_load((run.path / "config.yaml").read_text())
    validation = card["results"][0].get("validation_accuracies")  # the final evaluation's, when the run held one out
    elapsed = json.loads(checkpoints[-1].read_text())["elapsed_seconds"]
    method = card["method"] + ("+cmi" if float(config.get("cmi_weight") or 0) > 0 else "")
    return {"grid": grid, "dataset": config["dataset"], "ipc": card["ipc"], "method": method, "seed": run.seed,
            "accuracy": round(run.final, 6),
            "val_accuracy": round(statistics.mean(validation), 6) if validation else "",
            "acc_at_10pct": run.curve.get(run.iterations // 10, ""),
            "acc_at_20pct": run.curve.get(run.iterations // 5, ""),
            "final_cmi": round(run.final_cmi, 6) if run.final_cmi is not None else "", "wall_s": round(elapsed, 1),
            "command": f"python recipes/distill_{card['method']}.py --config {run.path / 'config.yaml'}"}


def write_csv(path: Path, grid: str, arms: dict[str, list[Run]]) -> int:
    """Put every finished run's row into ``path``, replacing the rows of the same grid, method and seed."""
    rows = [csv_row(grid, run) for runs in arms.values() for run in runs if run.finished]
    new = {(r["grid"], r["method"], str(r["seed"])) for r in rows}
    kept = []
    if path.exists():
        with open(path, newline="") as f:
            kept = [r for r in csv.DictReader(f) if (r["grid"], r["method"], r["seed"]) not in new]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(kept + rows)
    return len(rows)


def plot(path: Path, title: str, arms: dict[str, list[Run]]) -> None:
    """One-network accuracy against iteration, one line per run, dashed while unfinished; final means as stars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for (label, runs), color in zip(arms.items(), ("tab:blue", "tab:orange", "tab:green", "tab:red"), strict=False):
        for run in sorted(runs, key=lambda r: r.seed):
            steps = sorted(run.curve)
            ax.plot(steps, [100 * run.curve[s] for s in steps], color=color, marker=".", alpha=0.8,
                    linestyle="-" if run.finished else "--", label=f"{label}, seed {run.seed}"
                    + ("" if run.finished else f" (at {run.reached:,})"))
            if run.finished:
                ax.scatter([run.iterations], [100 * run.final], marker="*", s=90, color=color, zorder=3)
    ax.set_xlabel("iteration")
    ax.set_ylabel("test accuracy (%), one network; ★ final mean")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--title", required=True)
    parser.add_argument("--arm", nargs="+", action="append", required=True, metavar=("LABEL", "RUN"),
                        help="an arm's label then its run folders; the first arm is the base of the differences")
    parser.add_argument("--markdown", type=Path, help="write the summary here (else print it)")
    parser.add_argument("--plot", type=Path, help="write the curves here (PNG)")
    parser.add_argument("--csv", type=Path, help="put the finished runs' rows into this cells.csv (needs --grid)")
    parser.add_argument("--grid", help="the cell's name in --csv's grid column")
    args = parser.parse_args(argv)
    if bool(args.csv) != bool(args.grid):
        parser.error("--csv and --grid go together")
    if len(args.arm) < 2 or any(len(arm) < 2 for arm in args.arm):
        parser.error("--arm needs a label and at least one run folder, and the cell at least two arms")
    arms = {label: [read_run(Path(p)) for p in paths] for label, *paths in args.arm}
    text = summarize(args.title, arms)
    if args.markdown:
        args.markdown.write_text(text)
    else:
        print(text, end="")
    if args.plot:
        plot(args.plot, args.title, arms)
    if args.csv:
        print(f"{write_csv(args.csv, args.grid, arms)} finished runs in {args.csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
