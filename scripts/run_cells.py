"""Run the budget study's cells (issue #20) side by side until a deadline, then stop every run with a checkpoint;
the next call continues them. Built for borrowed time on one machine: a GPU call, a working session.

A manifest (YAML) names each cell: the recipe, its preset, the budget, the seeds, and λ — fixed, or chosen on the
validation split among a few values at a tenth of the budget (seed 0). Each cell then has the jobs
``select-lambda<λ>`` (only when λ is chosen), ``base-seed<s>`` (λ 0) and ``cmi-seed<s>`` (the chosen λ, started
once every selection run has finished; the choice and its scores land in ``<cell>/lambda.json``). Every job is one
recipe run in ``<root>/<cell>/<job>/set``: finished once its card (README.md) exists, resumed from its latest
checkpoint otherwise. ``first_alone: true`` runs a cell's first job alone first (it fills the shared caches).

    python scripts/run_cells.py scripts/results/fashion-mnist/budget-cells.yaml --cells dsa-ipc10 \\
        --deadline 500 --parallel 6 --extra --threads_per_process 2 --compile true --pack $OUT
"""

import argparse
import fnmatch
import json
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STOP_GRACE_S = 90  # a stopped run writes its checkpoint within this, else it is killed
CELL_KEYS = ("name", "recipe", "config", "iterations", "seeds", "lambda")


@dataclass
class Job:
    """One recipe run of a cell."""

    cell: dict
    name: str
    seed: int
    iterations: int
    weight: float | None  # None: the cell's λ, chosen once its selection runs have finished
    args: list[str] = field(default_factory=list)

    @property
    def folder(self) -> Path:
        return Path(self.cell["root"]) / self.cell["name"] / self.name

    @property
    def finished(self) -> bool:
        return (self.folder / "set" / "README.md").exists()

    def command(self, weight: float, extra: list[str]) -> list[str]:
        resume = ["--resume_from_checkpoint", "latest"] if list(self.folder.glob("set/checkpoints/step_*")) else []
        return [sys.executable, str(ROOT / "recipes" / f"distill_{self.cell['recipe']}.py"),
                "--config", self.cell["config"], "--seed", str(self.seed), "--iterations", str(self.iterations),
                "--cmi_weight", f"{weight:g}", "--proxy_cache_dir", self.cell["proxy_cache_dir"],
                "--output_dir", str(self.folder), "--run_name", "set", "--eval_baseline", "false",
                *self.cell.get("args", []), *self.args, *extra, *resume]


def cell_jobs(cell: dict) -> list[Job]:
    """The jobs of one manifest cell, selection first."""
    jobs, lam = [], cell["lambda"]
    if isinstance(lam, dict):  # chosen on the validation split among lam["select"]
        half = lam["iterations"] // 2  # one mid-run network; the presets' own eval_at lie past a short run
        for value in lam["select"]:
            jobs.append(Job(cell, f"select-lambda{value:g}", lam.get("seed", 0), lam["iterations"], float(value),
                            ["--eval_every", "0", "--eval_at", str(half), *lam.get("args", [])]))
    for seed in cell["seeds"]:
        jobs.append(Job(cell, f"base-seed{seed}", seed, cell["iterations"], 0.0))
        jobs.append(Job(cell, f"cmi-seed{seed}", seed, cell["iterations"],
                        None if isinstance(lam, dict) else float(lam)))
    return jobs


def chosen_weight(cell: dict) -> float | None:
    """The cell's λ: fixed, or the selection value of best mean validation accuracy once all have finished."""
    if not isinstance(cell["lambda"], dict):
        return float(cell["lambda"])
    selection = [j for j in cell_jobs(cell) if j.name.startswith("select-")]
    if not all(j.finished for j in selection):
        return None
    from cmidd_hf.hub.synthetic_set import load_synthetic

    scores = {}
    for job in selection:
        validation = load_synthetic(job.folder / "set").results[0].get("validation_accuracies")
        if not validation:
            raise SystemExit(f"error: {job.folder}/set has no validation accuracies; give the cell's preset "
                             "validation_per_class > 0 so λ is chosen on held-out data, never on test")
        scores[job.weight] = sum(validation) / len(validation)
    best = max(scores, key=scores.get)
    record = Path(cell["root"]) / cell["name"] / "lambda.json"
    record.write_text(json.dumps({"chosen": best, "validation": {f"{k:g}": v for k, v in scores.items()},
                                  "iterations": cell["lambda"]["iterations"]}, indent=2) + "\n")
    return best


def waits_for_first(job: Job) -> bool:
    """With ``first_alone`` a cell's first job runs alone until it finishes: it trains the artifacts the cell's
    runs share (experts, proxies) into their caches once, instead of every run training its own copy at once."""
    first = cell_jobs(job.cell)[0]
    return bool(job.cell.get("first_alone")) and job.name != first.name and not first.finished


def load_cells(manifest: Path, names: list[str] | None) -> list[dict]:
    """The manifest's cells (all, or those named), each carrying the manifest's root and proxy cache; the manifest's
    paths are relative to the repository root (or absolute)."""
    if not manifest.is_file():
        raise SystemExit(f"error: manifest {manifest} does not exist")
    spec = yaml.safe_load(manifest.read_text()) or {}
    missing = [key for key in ("root", "proxy_cache_dir", "cells") if key not in spec]
    for cell in spec.get("cells") or []:
        missing += [f"cells[{cell.get('name', '?')}].{key}" for key in CELL_KEYS if key not in cell]
    if missing:
        raise SystemExit(f"error: {manifest} lacks {', '.join(missing)} (see scripts/run_cells.py's docstring)")
    shared = {"root": str(ROOT / spec["root"]), "proxy_cache_dir": str(ROOT / spec["proxy_cache_dir"])}
    cells = {c["name"]: {**shared, **c, "config": str(ROOT / c["config"])} for c in spec["cells"]}
    unknown = sorted(set(names or []) - cells.keys())
    if unknown:
        raise SystemExit(f"error: --cells {' '.join(unknown)}: not in {manifest} (it has {', '.join(cells)})")
    for cell in cells.values():
        if not Path(cell["config"]).is_file():
            raise SystemExit(f"error: cell {cell['name']}: config {cell['config']} does not exist")
        if not (ROOT / "recipes" / f"distill_{cell['recipe']}.py").is_file():
            raise SystemExit(f"error: cell {cell['name']}: recipe {cell['recipe']!r} has no recipes/distill_"
                             f"{cell['recipe']}.py")
    return [cells[n] for n in names] if names else list(cells.values())


def last_line(log: Path) -> str:
    """The last progress line of a run's log (tqdm redraws with carriage returns)."""
    text = log.read_text(errors="replace").replace("\r", "\n") if log.exists() else ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:140] if lines else ""


def run(jobs: list[Job], cells: list[dict], deadline_s: float, parallel: int, extra: list[str]) -> None:
    """Start ready jobs up to ``parallel`` at a time until all finish or the deadline; then stop them cleanly."""
    started, last_report = time.monotonic(), 0.0
    running: dict[str, tuple[Job, subprocess.Popen]] = {}
    pending, failed, chosen = [j for j in jobs if not j.finished], set(), {}
    while pending or running:
        for key, (job, proc) in list(running.items()):
            if proc.poll() is not None:
                del running[key]
                if proc.returncode != 0:
                    failed.add(key)
                    print(f"[{key}] exit {proc.returncode}: {last_line(job.folder / 'log.txt')}", flush=True)
        if time.monotonic() - started >= deadline_s:
            break
        for job in list(pending):
            if len(running) >= parallel or waits_for_first(job):
                continue
            weight = job.weight
            if weight is None:  # the cell's λ, read from its selection runs once they have all finished
                if job.cell["name"] not in chosen and (value := chosen_weight(job.cell)) is not None:
                    chosen[job.cell["name"]] = value
                weight = chosen.get(job.cell["name"])
            if weight is None:
                continue  # its λ is not chosen yet
            job.folder.mkdir(parents=True, exist_ok=True)
            command = job.command(weight, extra)
            print(f"[{job.cell['name']}/{job.name}] {shlex.join(command[1:])}", flush=True)
            with open(job.folder / "log.txt", "a") as log:
                proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
            running[f"{job.cell['name']}/{job.name}"] = (job, proc)
            pending.remove(job)
        if not running:
            break  # what is left waits on a selection that failed
        if time.monotonic() - last_report >= 60:
            last_report = time.monotonic()
            for key, (job, _) in running.items():
                print(f"  {key}: {last_line(job.folder / 'log.txt')}", flush=True)
        time.sleep(1)
    for _, proc in running.values():
        proc.send_signal(signal.SIGTERM)  # each run checkpoints and exits
    for _, proc in running.values():
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
    for cell in cells:
        chosen_weight(cell)
    print(f"after {time.monotonic() - started:.0f} s:")
    for job in jobs:
        key = f"{job.cell['name']}/{job.name}"
        state = ("finished" if job.finished else "failed" if key in failed
                 else "to continue" if job.folder.exists() else "not started")
        print(f"  {key}: {state}; {last_line(job.folder / 'log.txt')}", flush=True)


def pack(cells: list[dict], folder: Path) -> None:
    """Each cell's folder as ``<folder>/<cell>.tgz`` of ``<cell>/<job>/...`` (unpack it into the manifest's root);
    an unfinished run keeps only its latest checkpoint (what a resume needs), a finished one none. One archive per
    cell, so a cell whose checkpoints are too large to bring back (IDM's network pool) costs only itself."""
    folder.mkdir(parents=True, exist_ok=True)
    for cell in cells:
        root = Path(cell["root"])
        if not (root / cell["name"]).exists():
            continue
        stale = set()
        for checkpoints in (root / cell["name"]).glob("*/set/checkpoints"):
            steps = sorted(checkpoints.glob("step_*"))
            keep = 0 if (checkpoints.parent / "README.md").exists() else 1
            stale.update(str(p.relative_to(root)) for p in steps[: len(steps) - keep])
        with tarfile.open(folder / f"{cell['name']}.tgz", "w:gz") as archive:
            archive.add(root / cell["name"], arcname=cell["name"],
                        filter=lambda info, stale=stale: None if info.name in stale else info)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--cells", nargs="+", help="the cells to run (default: all)")
    parser.add_argument("--jobs", nargs="+", default=["*"], metavar="PATTERN",
                        help="only the jobs whose names match (e.g. 'select-*' to choose λ on this machine)")
    parser.add_argument("--deadline", type=float, default=500, help="seconds until every run is stopped")
    parser.add_argument("--parallel", type=int, default=4, help="runs at a time")
    parser.add_argument("--pack", type=Path, help="write each cell's folder (latest checkpoints) here as <cell>.tgz")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="options for every run, last (e.g. --threads_per_process 2 --compile true)")
    args = parser.parse_args(argv)
    cells = load_cells(args.manifest, args.cells)
    jobs = [job for cell in cells for job in cell_jobs(cell)
            if any(fnmatch.fnmatchcase(job.name, pattern) for pattern in args.jobs)]
    run(jobs, cells, args.deadline, args.parallel, args.extra)
    if args.pack:
        pack(cells, args.pack)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
