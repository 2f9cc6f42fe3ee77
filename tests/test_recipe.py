"""recipes/distill_dm.py end to end (outputs, card) and its refusals of bad input."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from datasets import load_dataset
from huggingface_hub import DatasetCard

from cmidd_hf.config import ConfigError, parse_args
from cmidd_hf.recipes import DistillArguments
from cmidd_hf.runner import main_entry

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "tiny_dm_cmi.yaml"


def argv(tmp_path, *extra):
    return ["--config", str(TINY), "--output_dir", str(tmp_path / "out"), "--proxy_cache_dir",
            str(tmp_path / "cache"), "--run_name", "run", *extra]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("recipe")
    assert main_entry(argv(tmp_path), None) == 0
    return tmp_path / "out" / "run"


def test_outputs_are_a_hub_layout_dataset_with_card(finished_run):
    names = {p.name for p in finished_run.iterdir()}
    assert {"data", "README.md", "grid.png", "curves.png", "metrics.jsonl", "config.yaml", "checkpoints"} <= names
    ds = load_dataset(str(finished_run), split="train")
    assert ds.num_rows == 20 and ds.features["label"].names == [str(d) for d in range(10)]
    assert ds.features["pixel_values"].shape == (1, 28, 28) and ds.features["pixel_values"].dtype == "float32"
    card = DatasetCard.load(finished_run / "README.md")
    meta = yaml.safe_load((finished_run / "README.md").read_text().split("---")[1])
    block = meta["distillation"]["default"]
    assert block["method"] == "dm" and block["ipc"] == 2 and block["iterations"] == 4
    assert block["regularizer"]["weight"] == 10 and len(block["regularizer"]["proxies"]) == 2
    assert block["normalization"] == {"mean": [0.1307], "std": [0.3081]}
    (result,) = block["results"]
    assert result["arch"] == "convnet3" and result["runs"] == 1 and len(result["accuracies"]) == 1
    assert isinstance(block["final_cmi"], float)
    assert "| convnet3 | dsa |" in card.text and "grid.png" in card.text
    assert meta["license"] == "cc-by-sa-3.0" and "dataset-distillation" in meta["tags"]
    records = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "cmi" in r] == [1, 2, 3, 4]
    assert records[-1]["final"] is True and "accuracy/convnet3" in records[-1]
    config = yaml.safe_load((finished_run / "config.yaml").read_text())
    assert config["ipc"] == 2 and config["cmi_weight"] == 10


def test_pixel_values_are_exact_and_image_is_their_rendering(finished_run):
    ds = load_dataset(str(finished_run), split="train").with_format("torch")
    pixels, images = ds["pixel_values"][:], ds["image"][:]
    assert pixels.dtype == torch.float32 and pixels.shape == (20, 1, 28, 28)
    # not quantized: optimized values fall between the 256 levels a PNG can hold
    levels = (pixels * 0.3081 + 0.1307) * 255
    assert (levels - levels.round()).abs().max() > 1e-3
    rendered = (levels / 255).clamp(0, 1).mul(255).round().to(torch.uint8)
    assert torch.equal(images.reshape(rendered.shape), rendered)


def test_resume_latest_continues_and_refuses_changed_ipc(finished_run, tmp_path_factory):
    tmp_path = finished_run.parents[1]
    assert main_entry(argv(tmp_path, "--iterations", "6", "--resume_from_checkpoint", "latest"), None) == 0
    meta = yaml.safe_load((finished_run / "README.md").read_text().split("---")[1])
    assert meta["distillation"]["default"]["iterations"] == 6


def test_config_defaults_cli_overrides_and_unknown_keys(tmp_path):
    args = parse_args(["--config", str(TINY), "--ipc", "3", "--cmi_weight", "0.5"], DistillArguments)
    assert (args.ipc, args.cmi_weight, args.batch_real) == (3, 0.5, 8)
    bad = tmp_path / "bad.yaml"
    bad.write_text("ipc: 2\nlearning_rate: 3\n")
    with pytest.raises(ConfigError, match=r"unknown keys \['learning_rate'\]"):
        parse_args(["--config", str(bad)], DistillArguments)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--ipc", "0"], "ipc=0"),
        (["--ipc", "401"], "ipc=401 exceeds the 400 training images"),
        (["--cmi_weight", "-1"], "cmi_weight=-1.0"),
        (["--dataset", "no-such-dataset"], "unknown dataset='no-such-dataset'"),
        (["--label_column", "digit"], "label_column='digit' is not a column"),
        (["--net_arch", "convnet99"], "net_arch: unknown architecture 'convnet99'"),
        (["--proxies", "no_such_proxy_net"], "unknown proxy 'no_such_proxy_net'"),
        (["--proxies", "resnet18_cifar_bn"], "proxy 'resnet18_cifar_bn' could not be loaded"),
        (["--resume_from_checkpoint", "latest"], "holds no checkpoint"),
        (["--dsa_strategy", "color_blur"], "dsa_strategy"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, extra, message):
    assert main_entry(argv(tmp_path, *extra), None) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "out" / "run").exists()


def test_proxy_shape_mismatch_is_refused(tmp_path, capsys):
    import timm
    from timm.models import save_for_hf

    import cmidd_hf  # noqa: F401

    save_for_hf(timm.create_model("convnet3", num_classes=10), tmp_path / "rgb_proxy", safe_serialization=True)
    assert main_entry(argv(tmp_path, "--proxies", f"local-dir:{tmp_path / 'rgb_proxy'}"), None) == 2
    assert "does not accept" in capsys.readouterr().err


def test_unwritable_output_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main_entry(["--config", str(TINY), "--output_dir", str(blocker / "sub")], None) == 2
    assert "output_dir=" in capsys.readouterr().err
