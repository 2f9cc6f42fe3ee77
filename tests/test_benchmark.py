"""scripts/benchmark.py (grid, resume, budget refusal, table beside published numbers) and the t-SNE figure."""

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cmidd_hf import build_network, load_image_classification
from cmidd_hf.hub.figures import plot_tsne

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "tiny_dm_cmi.yaml"


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_grid_runs_resumes_and_refuses_another_budget(tmp_path, proxy_cache, capsys):
    benchmark = load_script("benchmark")
    grid = ["--dataset", "mnist-5k", "--ipc", "2", "--methods", "random", "dm+cmi", "--seeds", "0",
            "--iterations", "5", "--eval_epochs", "1", "--eval_runs", "1", "--output_dir", str(tmp_path / "grid"),
            "--cmi_weight", "dm+cmi=10", "--extra", f"dm+cmi=--config {TINY} --proxy_cache_dir {proxy_cache}",
            "random=--no_compile"]
    assert benchmark.main(grid) == 0
    table = (tmp_path / "grid" / "results.md").read_text()
    assert "| random | " in table and "| dm+cmi | " in table and "@1/10" in table
    rows = (tmp_path / "grid" / "results.csv").read_text().splitlines()
    assert rows[0].startswith("dataset,ipc,method,seed,accuracy") and len(rows) == 3
    assert (tmp_path / "grid" / "results.png").stat().st_size > 0
    cmi_cell = json.loads((tmp_path / "grid" / "cells" / "dm+cmi-ipc2-seed0" / "result.json").read_text())
    assert "--cmi_weight 10" in cmi_cell["command"] and cmi_cell["final_cmi"] is not None
    assert "--eval_baseline false" in cmi_cell["command"]  # the grid's own random rows are the baseline
    # 5 iterations: 1/5 is iteration 1 (evaluated, read back), 1/10 is iteration 0 (no column value)
    assert "--eval_at 1 " in cmi_cell["command"] and "--eval_every " not in cmi_cell["command"]
    assert cmi_cell["acc_at_20pct"] is not None and cmi_cell["acc_at_10pct"] is None
    records = (tmp_path / "grid" / "cells" / "dm+cmi-ipc2-seed0" / "set" / "metrics.jsonl").read_text()
    assert [json.loads(r)["step"] for r in records.splitlines() if '"evaluation"' in r][:-1] == [1]
    capsys.readouterr()
    assert benchmark.main(grid) == 0  # finished cells are not run again
    assert "[random" not in capsys.readouterr().out
    changed = [a if a != "5" else "6" for a in grid]
    assert benchmark.main(changed) == 2
    assert "another budget (iterations" in capsys.readouterr().err
    single = [a if a != "2" else "1" for a in grid]  # DM at IPC 1: a +cmi cell would be plain DM
    with pytest.raises(SystemExit) as refused:
        benchmark.main([*single, "--output_dir", str(tmp_path / "other")])
    assert refused.value.code == 2 and "dm+cmi at ipc 1: one synthetic image per class" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_cells_evaluate_only_at_the_table_fractions():
    benchmark = load_script("benchmark")
    args = SimpleNamespace(dataset="fashion-mnist", iterations=300, eval_epochs=300, eval_runs=3, proxies=[],
                           output_dir=Path("grid"), cmi_weight={"dm+cmi": "1000"}, extra={})
    command = benchmark.cell_command(args, "dm+cmi", 50, 0, Path("grid/cells/x"))
    at = command.index("--eval_at")
    assert command[at + 1:at + 3] == ["30", "60"] and command[at + 3].startswith("--")
    assert "--eval_every" not in command  # ten evaluations of a 500-image set would cost more than the run
    assert benchmark.fraction_steps(9) == ["1"] and benchmark.fraction_steps(4) == []


def test_table_shows_published_numbers_and_seed_spread(tmp_path):
    benchmark = load_script("benchmark")
    rows = [{"dataset": "fashion-mnist", "ipc": 10, "method": "dm", "seed": s, "accuracy": a, "acc_at_10pct": 0.7,
             "acc_at_20pct": 0.75, "wall_s": 1.0, "command": "x"} for s, a in ((0, 0.80), (1, 0.82))]
    rows.append({"dataset": "fashion-mnist", "ipc": 10, "method": "whole", "seed": 0, "accuracy": 0.9,
                 "wall_s": 1.0, "command": "y"})
    budget = {"dataset": "fashion-mnist", "iterations": 10, "eval_epochs": 5, "eval_runs": 1, "whole_epochs": 2}
    benchmark.tabulate(tmp_path, rows, budget)  # dm's rows come first, as --table_only reads them (folder order)
    table = (tmp_path / "results.md").read_text()
    assert table.index("| whole |") < table.index("| dm |")  # coresets, whole set, then each method and its +cmi
    assert "| dm | 81.00 ± 1.41 (2) |" in table
    assert "| dsa (published) | 84.6 |" in table and "| idc (published) | 86.0 |" in table
    assert "| whole | 90.00 ± 0.00 (1) |" in table
    assert "70.00 ± 0.00 (2) | 75.00 ± 0.00 (2)" in table
    assert "Gain of the CMI term" not in table  # no dm+cmi cells


def test_cmi_gain_is_paired_by_seed_with_validation(tmp_path):
    benchmark = load_script("benchmark")
    cells = {("dm", 0): (0.80, 0.81), ("dm", 1): (0.82, 0.85), ("dm+cmi", 0): (0.81, 0.80),
             ("dm+cmi", 1): (0.85, 0.86), ("dm+cmi", 2): (0.99, 0.99)}  # seed 2 has no DM partner: left out
    rows = [{"dataset": "fashion-mnist", "ipc": 10, "method": m, "seed": seed, "accuracy": test,
             "val_accuracy": val, "acc_at_10pct": 0.7, "acc_at_20pct": None, "wall_s": 1.0, "command": "x"}
            for (m, seed), (test, val) in cells.items()]
    budget = {"dataset": "fashion-mnist", "iterations": 10, "eval_epochs": 5, "eval_runs": 1, "whole_epochs": 2}
    benchmark.tabulate(tmp_path, rows, budget)
    table = (tmp_path / "results.md").read_text()
    # test gains +1, +3 -> +2.00 ± 1.41; validation -1, +1 -> +0.00 ± 1.41; @1/10 equal; @1/5 missing
    assert "| dm+cmi − dm | +2.00 ± 1.41 (2) | +0.00 ± 1.41 (2) | +0.00 ± 0.00 (2) | – |" in table


def test_unknown_method_and_missing_lambda_are_refused(tmp_path):
    benchmark = load_script("benchmark")
    with pytest.raises(SystemExit):
        benchmark.main(["--methods", "dm", "mtt", "--output_dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        benchmark.main(["--methods", "dm+cmi", "--output_dir", str(tmp_path)])
    assert not any(tmp_path.iterdir())


def test_tsne_figure_has_one_panel_per_set(tmp_path):
    mnist = load_image_classification("mnist-5k")
    torch.manual_seed(0)
    proxy = build_network("convnet3", 10, 1, (28, 28))
    real = (mnist.train.images(torch.arange(0, 4000, 40)), mnist.train.labels[torch.arange(0, 4000, 40)])
    first = (mnist.train.images(torch.arange(20)), mnist.train.labels[:20])
    second = (first[0] + 0.1, first[1])
    path = plot_tsne({"DM": first, "DM + CMI": second}, real, proxy, tmp_path / "tsne.png",
                     class_names=mnist.class_names)
    from PIL import Image

    width, height = Image.open(path).size
    assert width > 1.8 * height  # two panels side by side
