"""scripts/run_cells.py: λ chosen on the validation split before the +CMI arm starts, runs stopped with a checkpoint
at the deadline, archives that keep only the latest checkpoint — on tiny mnist-5k cells."""

import importlib.util
import json
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "tiny_dm_cmi.yaml"
spec = importlib.util.spec_from_file_location("run_cells", ROOT / "scripts" / "run_cells.py")
run_cells = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_cells)


def manifest(tmp_path: Path, proxy_cache: Path, **cell) -> Path:
    path = tmp_path / "cells.yaml"
    path.write_text(yaml.safe_dump({"root": str(tmp_path / "cells"), "proxy_cache_dir": str(proxy_cache),
                                    "cells": [{"name": "toy", "recipe": "dm", "config": str(TINY), **cell}]}))
    return path


@pytest.mark.slow
def test_lambda_is_chosen_on_validation_then_used_by_the_cmi_arm(tmp_path, proxy_cache):
    path = manifest(tmp_path, proxy_cache, iterations=4, seeds=[0], args=["--validation_per_class", "5"],
                    **{"lambda": {"select": [1, 300], "iterations": 2}})
    assert run_cells.main([str(path), "--deadline", "600", "--parallel", "2",
                           "--extra", "--threads_per_process", "1"]) == 0
    cell = tmp_path / "cells" / "toy"
    record = json.loads((cell / "lambda.json").read_text())
    scores = record["validation"]
    assert set(scores) == {"1", "300"} and record["chosen"] == float(max(scores, key=scores.get))
    config = {job: yaml.safe_load((cell / job / "set" / "config.yaml").read_text())
              for job in ("select-lambda1", "select-lambda300", "base-seed0", "cmi-seed0")}
    assert config["select-lambda300"]["iterations"] == 2 and config["select-lambda300"]["cmi_weight"] == 300
    assert config["base-seed0"]["cmi_weight"] == 0 and config["base-seed0"]["iterations"] == 4
    assert config["cmi-seed0"]["cmi_weight"] == record["chosen"]
    assert all((cell / job / "set" / "README.md").exists() for job in config)
    # a second call finds every run finished and starts nothing
    assert run_cells.main([str(path), "--deadline", "600"]) == 0
    assert (cell / "cmi-seed0" / "log.txt").read_text().count("wrote ") == 1


STAND_IN = """
import signal, sys, time
from pathlib import Path
folder = Path(sys.argv[sys.argv.index("--output_dir") + 1]) / "set" / "checkpoints"
step = 0
def stop(*_):
    (folder / f"step_{step:06d}").mkdir(parents=True, exist_ok=True)  # the loop may have just written it
    print(f"interrupted: checkpoint saved at {step}", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
while True:
    step += 1
    if step % 5 == 0:
        (folder / f"step_{step:06d}").mkdir(parents=True)
    time.sleep(0.02)
"""


def test_the_deadline_stops_runs_with_a_checkpoint_and_the_archive_keeps_the_latest(tmp_path, proxy_cache, capsys,
                                                                                   monkeypatch):
    """The scheduler on a stand-in recipe (the engine's own stop-and-checkpoint is tested in test_distill)."""
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    real_command = run_cells.Job.command
    monkeypatch.setattr(run_cells.Job, "command",
                        lambda job, weight, extra: [sys.executable, str(script), *real_command(job, weight, extra)[2:]])
    path = manifest(tmp_path, proxy_cache, iterations=100_000, seeds=[0], **{"lambda": 10})
    assert run_cells.main([str(path), "--deadline", "3", "--parallel", "1", "--pack", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "toy/base-seed0: to continue; interrupted: checkpoint saved" in out
    assert "toy/cmi-seed0: not started" in out  # one at a time: it never got a slot
    checkpoints = sorted((tmp_path / "cells" / "toy" / "base-seed0" / "set" / "checkpoints").glob("step_*"))
    assert len(checkpoints) > 2
    with tarfile.open(tmp_path / "c" / "toy.tgz") as archive:
        names = archive.getnames()
    kept = {n.split("/")[4] for n in names if "/checkpoints/step_" in n}
    assert kept == {checkpoints[-1].name} and "toy/base-seed0/log.txt" in names
    finished = tmp_path / "cells" / "toy" / "cmi-seed0" / "set"  # a finished run needs no checkpoint at all
    (finished / "checkpoints" / "step_000004").mkdir(parents=True)
    (finished / "README.md").write_text("card")
    run_cells.pack(run_cells.load_cells(path, None), tmp_path / "d")
    with tarfile.open(tmp_path / "d" / "toy.tgz") as archive:
        names = archive.getnames()
    assert "toy/cmi-seed0/set/README.md" in names and not any("cmi-seed0/set/checkpoints/" in n for n in names)
    assert f"toy/base-seed0/set/checkpoints/{checkpoints[-1].name}" in names
    monkeypatch.undo()
    job = run_cells.cell_jobs(run_cells.load_cells(path, None)[0])[0]
    assert job.command(0.0, [])[-2:] == ["--resume_from_checkpoint", "latest"]


def test_the_best_validation_accuracy_wins_and_test_accuracy_is_never_read(tmp_path, proxy_cache, monkeypatch):
    from types import SimpleNamespace

    import cmidd_hf.hub.synthetic_set as synthetic_set

    path = manifest(tmp_path, proxy_cache, iterations=4, seeds=[0],
                    **{"lambda": {"select": [1, 30, 300], "iterations": 2}})
    cell = run_cells.load_cells(path, None)[0]
    assert run_cells.chosen_weight(cell) is None  # nothing has finished: the +CMI arm waits
    validation = {"select-lambda1": [0.5, 0.6], "select-lambda30": [0.7, 0.72], "select-lambda300": [0.69, 0.70]}
    for name in validation:
        (tmp_path / "cells" / "toy" / name / "set").mkdir(parents=True)
        (tmp_path / "cells" / "toy" / name / "set" / "README.md").write_text("card")
    def card(folder):
        test_mean = 0.99 if "lambda300" in str(folder) else 0.1
        return SimpleNamespace(results=[{"mean": test_mean, "validation_accuracies": validation[folder.parent.name]}])

    monkeypatch.setattr(synthetic_set, "load_synthetic", card)
    assert run_cells.chosen_weight(cell) == 30.0  # the best on validation, not λ 300's better test mean
    record = json.loads((tmp_path / "cells" / "toy" / "lambda.json").read_text())
    assert record["validation"]["30"] == pytest.approx(0.71)


def test_jobs_filter_runs_only_the_named_jobs_and_an_unchosen_lambda_still_holds_the_cmi_arm(tmp_path, proxy_cache,
                                                                                              monkeypatch, capsys):
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    real_command = run_cells.Job.command
    monkeypatch.setattr(run_cells.Job, "command",
                        lambda job, weight, extra: [sys.executable, str(script), *real_command(job, weight, extra)[2:]])
    path = manifest(tmp_path, proxy_cache, iterations=4, seeds=[0, 1],
                    **{"lambda": {"select": [1, 30], "iterations": 2}})
    assert run_cells.main([str(path), "--jobs", "base-seed1", "cmi-*", "--deadline", "3", "--parallel", "4"]) == 0
    out = capsys.readouterr().out
    assert "toy/base-seed1: to continue" in out and "toy/cmi-seed0: not started" in out
    assert "select-" not in out and "base-seed0" not in out
    assert sorted(p.name for p in (tmp_path / "cells" / "toy").iterdir()) == ["base-seed1"]


def test_first_alone_holds_the_cells_other_runs_until_its_first_has_finished(tmp_path, proxy_cache):
    path = manifest(tmp_path, proxy_cache, iterations=4, seeds=[0, 1], first_alone=True, **{"lambda": 10})
    jobs = run_cells.cell_jobs(run_cells.load_cells(path, None)[0])
    assert [run_cells.waits_for_first(j) for j in jobs] == [False, True, True, True]
    (jobs[0].folder / "set").mkdir(parents=True)
    (jobs[0].folder / "set" / "README.md").write_text("card")
    assert not any(run_cells.waits_for_first(j) for j in jobs)
    plain = run_cells.cell_jobs(run_cells.load_cells(manifest(tmp_path, proxy_cache, iterations=4, seeds=[0],
                                                              **{"lambda": 10}), None)[0])
    assert not any(run_cells.waits_for_first(j) for j in plain)


def test_unknown_cells_and_missing_configs_are_one_line_errors(tmp_path, proxy_cache):
    path = manifest(tmp_path, proxy_cache, iterations=4, seeds=[0], **{"lambda": 10})
    with pytest.raises(SystemExit, match=r"--cells nope: not in .*cells.yaml \(it has toy\)"):
        run_cells.main([str(path), "--cells", "nope"])
    spec = yaml.safe_load(path.read_text())
    spec["cells"][0]["config"] = "recipes/configs/none.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SystemExit, match="cell toy: config .*none.yaml does not exist"):
        run_cells.main([str(path)])
    spec["cells"][0]["config"] = str(TINY)
    spec["cells"][0]["recipe"] = "dmx"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SystemExit, match="cell toy: recipe 'dmx' has no recipes/distill_dmx.py"):
        run_cells.main([str(path)])
    del spec["cells"][0]["lambda"], spec["proxy_cache_dir"]
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SystemExit, match=r"lacks proxy_cache_dir, cells\[toy\].lambda \(see"):
        run_cells.main([str(path)])
    with pytest.raises(SystemExit, match="manifest .*nothing.yaml does not exist"):
        run_cells.main([str(tmp_path / "nothing.yaml")])


def test_every_job_of_the_shipped_budget_manifest_parses_and_validates():
    from cmidd_hf.cli.arguments import parse_recipe, validate

    path = ROOT / "scripts" / "results" / "fashion-mnist" / "budget-cells.yaml"
    cells = run_cells.load_cells(path, None)
    assert {c["name"] for c in cells} == {"idm-ipc10", "dsa-ipc10", "dm-ipc50", "mtt-ipc10"}
    for cell in cells:
        for job in run_cells.cell_jobs(cell):
            command = job.command(job.weight if job.weight is not None else 20.0, ["--threads_per_process", "2"])
            recipe = parse_recipe(command[2:], cell["recipe"])
            validate(recipe)  # e.g. an eval_at past a selection run's iterations fails here
            assert recipe.run.iterations == job.iterations and recipe.data.validation_per_class == 100
