"""scripts/budget_study.py: finals, paired differences, the "sooner" iteration and unfinished runs, on run folders
written by hand (the recipe's config.yaml / metrics.jsonl layout)."""

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("budget_study", ROOT / "scripts" / "budget_study.py")
budget_study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(budget_study)


def fake_run(folder: Path, seed: int, curve: dict[int, float], final: float | None, iterations: int = 6000) -> Path:
    """A run folder as a recipe leaves it: per-iteration rows, periodic evaluations and, when done, the final one."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "iterations": iterations, "method": "dm"}))
    reached = iterations if final is not None else max(curve) + 17
    records = [{"step": s, "seconds": 0.1, "matching_loss": 1.0} for s in range(1, reached + 1, 500)]
    records += [{"step": s, "event": "evaluation", "accuracy/convnet3": a, "set_cmi": 0.03} for s, a in curve.items()]
    records.append({"step": reached, "seconds": 0.1})
    if final is not None:
        records.append({"step": iterations, "event": "evaluation", "final": True, "accuracy/convnet3": final})
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return folder


@pytest.fixture
def cell(tmp_path):
    runs = {
        "base0": fake_run(tmp_path / "b0", 0, {0: 0.70, 2000: 0.80, 4000: 0.83, 6000: 0.84}, 0.845),
        "base1": fake_run(tmp_path / "b1", 1, {0: 0.71, 2000: 0.81, 4000: 0.82, 6000: 0.83}, 0.825),
        "cmi0": fake_run(tmp_path / "c0", 0, {0: 0.70, 2000: 0.82, 4000: 0.845, 6000: 0.85}, 0.850),
        "cmi1": fake_run(tmp_path / "c1", 1, {0: 0.71, 2000: 0.81, 4000: 0.83}, None),
    }
    return runs


def test_a_run_reads_its_curve_final_and_sooner_iteration(cell):
    run = budget_study.read_run(cell["base0"])
    assert (run.seed, run.iterations, run.reached, run.finished) == (0, 6000, 6000, True)
    assert run.curve == {0: 0.70, 2000: 0.80, 4000: 0.83, 6000: 0.84}
    assert run.sooner == 6000  # 0.84 is the first checkpoint within half a point of 0.845
    assert budget_study.read_run(cell["base1"]).sooner == 4000  # 0.82 >= 0.825 - 0.005
    unfinished = budget_study.read_run(cell["cmi1"])
    assert not unfinished.finished and unfinished.sooner is None and unfinished.reached == 4017


def test_summary_pairs_finished_seeds_only_and_checkpoints_all_runs_reached(cell, tmp_path):
    md, png = tmp_path / "cell.md", tmp_path / "cell.png"
    assert budget_study.main(["--title", "toy cell", "--arm", "DM", str(cell["base0"]), str(cell["base1"]),
                              "--arm", "DM + CMI", str(cell["cmi0"]), str(cell["cmi1"]),
                              "--markdown", str(md), "--plot", str(png)]) == 0
    text = md.read_text()
    assert "| DM + CMI | 1 | 4,017 / 6,000 | unfinished | – |" in text
    assert "| DM | 0 | 6,000 / 6,000 | 84.50 | 6,000 |" in text
    assert "| DM | 2 | 83.50 ± 1.41 |" in text and "| DM + CMI | 1 | 85.00 (one seed) |" in text
    assert "(DM + CMI − DM, points): +0.50 (one seed) (seed 0: +0.50)" in text  # seed 1 of DM + CMI is unfinished
    # checkpoints every run reached: 6,000 is missing from the unfinished run, so it is left out
    assert "| iteration | 0 | 2,000 | 4,000 |" in text
    assert "| difference | +0.00 ± 0.00 | +1.00 ± 1.41 | +1.25 ± 0.35 |" in text
    assert png.stat().st_size > 10_000


def test_a_folder_without_metrics_is_one_clear_error(tmp_path, cell):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="has no config.yaml; pass the run folder"):
        budget_study.main(["--title", "t", "--arm", "DM", str(tmp_path / "empty"), "--arm", "X", str(cell["cmi0"])])


def test_csv_rows_of_finished_runs_replace_their_own_and_keep_the_others(tmp_path):
    """On the committed cell-1 seed-0 runs (both finished) beside an unfinished run written by hand."""
    partial = ROOT / "scripts" / "results" / "fashion-mnist" / "partial"
    table = tmp_path / "cells.csv"
    other = {f: "x" for f in budget_study.CSV_FIELDS} | {"grid": "another", "method": "dm", "seed": "0"}
    stale = other | {"grid": "cell1", "accuracy": "0.1"}
    with open(table, "w", newline="") as f:
        writer = budget_study.csv.DictWriter(f, fieldnames=budget_study.CSV_FIELDS)
        writer.writeheader()
        writer.writerows([other, stale])
    assert budget_study.main(["--title", "cell 1", "--arm", "DM", str(partial / "dm-seed0/run/set"),
                              str(fake_run(tmp_path / "unfinished", 2, {0: 0.7}, None)), "--arm", "DM + CMI",
                              str(partial / "dm+cmi-seed0/run/set"), "--markdown", str(tmp_path / "c.md"),
                              "--csv", str(table), "--grid", "cell1"]) == 0
    with open(table, newline="") as f:
        rows = list(budget_study.csv.DictReader(f))
    assert [(r["grid"], r["method"], r["seed"]) for r in rows] == [
        ("another", "dm", "0"), ("cell1", "dm", "0"), ("cell1", "dm+cmi", "0")]
    dm = rows[1]
    assert (dm["dataset"], dm["ipc"], dm["accuracy"]) == ("fashion-mnist", "10", "0.834533")
    assert dm["final_cmi"] == "0.038036"
    assert float(dm["val_accuracy"]) == pytest.approx((0.866 + 0.851 + 0.854) / 3)  # the card's three networks
    assert (dm["acc_at_10pct"], dm["acc_at_20pct"]) == ("0.8258", "0.8301")  # one network at 2,000 and 4,000
    assert float(dm["wall_s"]) > 10_000
    assert dm["command"] == f"python recipes/distill_dm.py --config {partial / 'dm-seed0/run/set/config.yaml'}"
    with pytest.raises(SystemExit):
        budget_study.main(["--title", "t", "--arm", "A", str(partial / "dm-seed0/run/set"), "--arm", "B",
                           str(partial / "dm+cmi-seed0/run/set"), "--csv", str(table)])  # no --grid
    before = table.read_text()
    with pytest.raises(SystemExit, match="has no card"):
        bare = budget_study.read_run(fake_run(tmp_path / "f", 0, {0: 0.7}, 0.8))  # no card, no checkpoint
        budget_study.write_csv(table, "cell1", {"A": [bare]})
    assert table.read_text() == before  # nothing half-written
