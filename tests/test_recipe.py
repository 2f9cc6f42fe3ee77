"""recipes/distill_dm.py end to end (outputs, card) and its refusals of bad input."""

import importlib.util
import json
import os
from pathlib import Path

import pytest
import timm
import torch
import yaml
from datasets import load_dataset
from huggingface_hub import DatasetCard

from cmidd_hf.artifacts.experts import ExpertRecipe
from cmidd_hf.artifacts.proxies import ProxyTrainingSpec, expand_specs
from cmidd_hf.cli import runner
from cmidd_hf.cli.arguments import parse_recipe, validate
from cmidd_hf.cli.runner import available_cpus, main_entry, set_process_threads
from cmidd_hf.data.loading import EMBEDDED_DATASETS, FASHION_MNIST_NAMES, known_stats
from cmidd_hf.engine.errors import ConfigError
from cmidd_hf.engine.method import Sharding, get_method
from cmidd_hf.hub.synthetic_set import load_synthetic

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "tiny_dm_cmi.yaml"


def argv(tmp_path, proxy_cache, *extra):
    return ["--config", str(TINY), "--output_dir", str(tmp_path / "out"), "--proxy_cache_dir",
            str(proxy_cache), "--run_name", "run", *extra]


@pytest.fixture(scope="module")
def finished_run(proxy_cache, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("recipe")
    assert main_entry(argv(tmp_path, proxy_cache), None) == 0
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
    assert result["arch"] == "convnet3_w32" and result["runs"] == 1 and len(result["accuracies"]) == 1
    assert isinstance(block["final_cmi"], float)
    assert "| convnet3_w32 | dsa |" in card.text and "grid.png" in card.text
    assert meta["license"] == "cc-by-sa-3.0" and "dataset-distillation" in meta["tags"]
    records = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "cmi" in r] == [1, 2, 3, 4]
    assert records[-1]["final"] is True and "accuracy/convnet3_w32" in records[-1]
    config = yaml.safe_load((finished_run / "config.yaml").read_text())
    assert config["ipc"] == 2 and config["cmi_weight"] == 10


def test_default_run_prints_random_baseline_gain_and_initial_to_final_cmi(proxy_cache, tmp_path, capsys):
    """The quickstart's shipped default (no --config; compiled) shortened: it evaluates the random real subset
    too, prints the gain against it, and the set's CMI before and after; the initial CMI is that of the initial
    set, recomputed here from the cached proxies. The proxies come as a command-line train: spec, the tests'
    small one (trained once per session; training the default's two ConvNet-3s is the quickstart's job)."""
    from cmidd_hf.artifacts.proxies import ProxyPool
    from cmidd_hf.cli.runner import build_method
    from cmidd_hf.cmi.class_aware import dataset_cmi
    from cmidd_hf.data.loading import load_image_classification

    default = ROOT / "recipes" / "configs" / "dm_cmi" / "mnist-5k_ipc10.yaml"
    args = ["--output_dir", str(tmp_path / "out"), "--proxy_cache_dir", str(proxy_cache),
            "--iterations", "3", "--eval_runs", "2", "--eval_epochs", "2", "--checkpoint_every", "0",
            "--proxies", "{train: {arch: convnet3_w32, count: 2, epochs: 1, batch_size: 512}}"]
    assert main_entry(args, default) == 0
    out = capsys.readouterr().out
    assert "final accuracy convnet3 [dsa, 2 epochs, 2 runs]" in out
    assert "baseline (random real ipc 10) convnet3 [dsa, 2 epochs, 2 runs]" in out
    assert "convnet3: distilled " in out and "vs random real subset" in out and "points (" in out
    meta = yaml.safe_load((tmp_path / "out" / "mnist-5k-dm-cmi-ipc10" / "README.md").read_text().split("---")[1])
    block = meta["distillation"]["default"]
    assert f"{block['initial_cmi']:.4f} initial -> {block['final_cmi']:.4f} final" in out
    (baseline,) = block["baselines"]
    assert baseline["kind"] == "random real subset, ipc 10" and len(baseline["accuracies"]) == 2

    recipe = parse_recipe(args, "dm", default)
    validate(recipe)  # the command-line spec becomes the mapping the run trained
    assert recipe.cmi.proxies == yaml.safe_load(TINY.read_text())["proxies"]
    assert yaml.safe_load((tmp_path / "out" / "mnist-5k-dm-cmi-ipc10" / "config.yaml").read_text())["compile"]
    data = load_image_classification(recipe.data.dataset)
    initial = build_method(recipe, data, torch.device("cpu")).init_synthetic().decode()
    pool = ProxyPool.from_pretrained(recipe.cmi.proxies, data, cache_dir=recipe.cmi.proxy_cache_dir)
    values = dataset_cmi(*(t.detach() for t in initial), list(pool), space="feature", num_classes=10)
    assert block["initial_cmi"] == pytest.approx(sum(values) / len(values), rel=1e-5)  # the card keeps 6 digits
    assert block["initial_cmi"] != pytest.approx(block["final_cmi"], rel=1e-6)


def test_gain_line_compares_against_the_noise_of_both():
    from cmidd_hf.cli.runner import gain_line
    from cmidd_hf.evaluation.evaluate import EvaluationResult

    def result(*accuracies):
        return EvaluationResult("convnet3", "dsa", 50, list(accuracies), list(range(len(accuracies))), 100)

    # distilled 0.92 ± 0.03, random 0.89 ± 0.04: +3 points, noise sqrt(3² + 4²) = 5 points
    assert gain_line(result(0.89, 0.95), result(0.85, 0.93)) == (
        "convnet3: distilled 92.00 % vs random real subset 89.00 %: +3.00 points (within the noise, ±5.00)")
    assert gain_line(result(0.92, 0.93), result(0.89, 0.89)).endswith("+3.50 points (above the noise, ±0.50)")
    assert gain_line(result(0.89, 0.89), result(0.92, 0.93)).endswith("-3.50 points (below the noise, ±0.50)")


def test_pixel_values_are_exact_and_image_is_their_rendering(finished_run):
    ds = load_dataset(str(finished_run), split="train").with_format("torch")
    pixels, images = ds["pixel_values"][:], ds["image"][:]
    assert pixels.dtype == torch.float32 and pixels.shape == (20, 1, 28, 28)
    # not quantized: optimized values fall between the 256 levels a PNG can hold
    levels = (pixels * 0.3081 + 0.1307) * 255
    assert (levels - levels.round()).abs().max() > 1e-3
    rendered = (levels / 255).clamp(0, 1).mul(255).round().to(torch.uint8)
    assert torch.equal(images.reshape(rendered.shape), rendered)


def test_streamed_data_with_workers_gives_the_same_run(finished_run, proxy_cache, tmp_path):
    """--in_memory false --num_workers 1 (the ImageNet presets' path) reaches the loader and changes nothing: the
    same set and the same final accuracy as the in-memory run."""
    assert main_entry(argv(tmp_path, proxy_cache, "--in_memory", "false", "--num_workers", "1"), None) == 0
    streamed, memory = load_synthetic(tmp_path / "out" / "run"), load_synthetic(finished_run)
    assert torch.equal(streamed.images, memory.images)
    assert streamed.results[0]["accuracies"] == memory.results[0]["accuracies"]
    assert yaml.safe_load((tmp_path / "out" / "run" / "config.yaml").read_text())["in_memory"] is False


def test_resume_latest_continues_and_refuses_a_changed_configuration(proxy_cache, finished_run, capsys):
    tmp_path = finished_run.parents[1]
    before = (finished_run / "README.md").read_text()
    for extra, changed in [(["--ipc", "3"], "ipc: checkpoint 2 vs now 3"),
                           (["--seed", "1"], "seed: checkpoint 0 vs now 1"),
                           (["--net_arch", "convnet4"], "net_arch: checkpoint 'convnet3_w32' vs now 'convnet4'"),
                           (["--init", "noise"], "init: checkpoint 'real' vs now 'noise'")]:
        assert main_entry(argv(tmp_path, proxy_cache, *extra, "--resume_from_checkpoint", "latest"), None) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: cannot resume") and changed in err and "\n" not in err
    # other proxies would change the term that shaped the set (here one of its two)
    (first,) = proxy_cache.glob("mnist-5k-convnet3_w32-e1-*-b512-s0/proxy-0")
    assert main_entry(argv(tmp_path, proxy_cache, "--proxies", f"local-dir:{first}", "--resume_from_checkpoint",
                           "latest"), None) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot resume") and "proxies: checkpoint [" in err and "\n" not in err
    assert main_entry(argv(tmp_path, proxy_cache, "--resume_from_checkpoint", "latest"), None, method="dsa") == 2
    assert "method: checkpoint 'dm' vs now 'dsa'" in capsys.readouterr().err
    assert (finished_run / "README.md").read_text() == before  # refusals touched nothing
    assert main_entry(argv(tmp_path, proxy_cache, "--iterations", "6", "--resume_from_checkpoint", "latest"), None) == 0
    meta = yaml.safe_load((finished_run / "README.md").read_text().split("---")[1])
    assert meta["distillation"]["default"]["iterations"] == 6
    steps = [json.loads(line)["step"] for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6, 6]  # six iterations, then the one final evaluation record


def test_a_checkpoint_older_than_an_identity_key_resumes_and_a_changed_key_is_refused():
    """Checkpoints written before the proxies and artifacts joined the identity (2026-12-06) still resume; any
    other key they lack, or a changed value, is refused, naming it."""
    from cmidd_hf.engine.distill import ResumeError, check_compatible

    check_compatible({"seed": 0}, {"seed": 0, "proxies": ["ab"], "artifacts": {"experts": "cd"}})
    with pytest.raises(ResumeError, match="validation_per_class: checkpoint None vs now 100"):
        check_compatible({"seed": 0}, {"seed": 0, "validation_per_class": 100})  # only the later keys may be absent
    with pytest.raises(ResumeError, match=r"proxies: checkpoint \['ab'\] vs now \['cd'\]"):
        check_compatible({"seed": 0, "proxies": ["ab"]}, {"seed": 0, "proxies": ["cd"]})


def test_config_defaults_cli_overrides_and_unknown_keys(tmp_path):
    recipe = parse_recipe(["--config", str(TINY), "--ipc", "3", "--cmi_weight", "0.5"], "dm")
    assert (recipe.synthetic.ipc, recipe.cmi.cmi_weight, recipe.method.batch_real) == (3, 0.5, 8)
    # a list the config sets is emptied with `[]` (argparse's nargs="+" cannot take zero values)
    fashion = ROOT / "recipes" / "configs" / "dm_cmi" / "fashion-mnist_ipc10.yaml"
    assert parse_recipe(["--config", str(fashion)], "dm").evaluation.eval_at == [2000, 4000]
    cleared = parse_recipe(["--config", str(fashion), "--eval_at", "[]", "--proxies=[]", "--ipc", "2"], "dm")
    assert (cleared.evaluation.eval_at, cleared.cmi.proxies, cleared.synthetic.ipc) == ([], [], 2)
    assert recipe.run.method == "dm" and recipe.config == str(TINY)
    bad = tmp_path / "bad.yaml"
    bad.write_text("ipc: 2\nlearning_rate: 3\n")
    with pytest.raises(ConfigError, match=r"unknown keys \['learning_rate'\]"):
        parse_recipe(["--config", str(bad)], "dm")
    bad.write_text("ipc: 2\nlr_net: 0.1\n")  # a DC setting is not a DM argument
    with pytest.raises(ConfigError, match=r"unknown keys \['lr_net'\]"):
        parse_recipe(["--config", str(bad)], "dm")
    bad.write_text("method: dc\n")
    with pytest.raises(ConfigError, match="run recipes/distill_dc.py"):
        parse_recipe(["--config", str(bad)], "dm")


@pytest.mark.parametrize("config", sorted((ROOT / "recipes" / "configs").glob("*/*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_config_parses_and_validates(config, tmp_path):

    method = config.parent.name.removesuffix("_cmi")
    recipe = parse_recipe(["--config", str(config), "--output_dir", str(tmp_path / "out")], method)
    validate(recipe)
    assert recipe.run.method == method
    if recipe.method.decoded_per_class(recipe.synthetic.ipc) > 1:
        assert recipe.cmi.cmi_weight > 0 and recipe.cmi.proxies
    else:  # one image per class: a CMI of exactly 0, so the base method, without proxies to train
        assert recipe.cmi.cmi_weight == 0 and not recipe.cmi.proxies and "exactly 0" in config.read_text()
    assert not (tmp_path / "out").exists()
    # the dataset is one the library knows how to load (embedded, Fashion-MNIST, or a Hub id with known stats)
    dataset = recipe.data.dataset
    assert dataset in EMBEDDED_DATASETS or dataset in FASHION_MNIST_NAMES or (
        dataset.count("/") == 1 and known_stats(dataset) is not None), dataset
    # every proxy resolves without the network: a training plan (trained once, cached) or a local folder; a
    # Hub repo named by a shipped preset would 404 for users until someone publishes it, unless it is one of
    # timm's published pre-trained weights (ImageNet presets)
    published = set(timm.list_pretrained())

    def resolves(spec) -> bool:
        if isinstance(spec, dict):
            return set(spec) == {"train"} and ProxyTrainingSpec.from_mapping(spec["train"]) is not None
        if spec.startswith("hf-hub:timm/"):
            return spec.removeprefix("hf-hub:timm/") in published
        return spec.startswith("local-dir:") and Path(spec.removeprefix("local-dir:")).is_dir()

    for spec in expand_specs(recipe.cmi.proxies):
        assert resolves(spec), spec
    # so do a trajectory-matching preset's experts (a training plan; validate() checked it covers the epochs)
    if method == "mtt":
        assert set(recipe.method.experts) == {"train"}, recipe.method.experts
        assert ExpertRecipe.from_mapping(recipe.method.experts["train"]).zca == recipe.method.zca
    if method == "sre2l":  # and a recover preset's teacher (a BN architecture: trained once and cached, or timm's)
        teacher = recipe.method.teacher
        assert resolves(teacher), teacher
        arch = (teacher.removeprefix("hf-hub:timm/").split(".")[0] if isinstance(teacher, str) else
                ProxyTrainingSpec.from_mapping(teacher["train"]).arch)
        network = timm.create_model(arch, num_classes=10)
        assert any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in network.modules()), arch


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--ipc", "0"], "ipc=0"),
        (["--ipc", "401"], "ipc=401 exceeds the 400 training images"),
        (["--cmi_weight", "-1"], "cmi_weight=-1.0"),
        (["--dataset", "no-such-dataset"], "unknown dataset='no-such-dataset'"),
        (["--dataset", "/nonexistent"], "dataset='/nonexistent': no such folder"),
        (["--dataset", "{tmp}/missing"], "missing': no such folder"),
        (["--label_column", "digit"], "label_column='digit' is not a column"),
        (["--net_arch", "convnet99"], "net_arch: unknown architecture 'convnet99'"),
        (["--proxies", "no_such_proxy_net"], "unknown proxy 'no_such_proxy_net'"),
        (["--proxies", "resnet18_cifar_bn"], "proxy 'resnet18_cifar_bn' could not be loaded"),
        (["--proxies", "{arch: convnet3}"], "proxies: a mapping must be {train: {...}}, got keys ['arch']"),
        (["--resume_from_checkpoint", "latest"], "holds no checkpoint"),
        (["--dsa_strategy", "color_blur"], "dsa_strategy"),
        (["--push_to_hub", "no-namespace"], "push_to_hub='no-namespace': use the form 'org/name'"),
        (["--hub_config", "data"], "hub_config='data'"),
        (["--lr_img", "nan"], "lr_img=nan: must be a finite number"),
        (["--cmi_weight", "inf"], "cmi_weight=inf: must be a finite number"),
        (["--batch_real", "401"], "batch_real=401 exceeds the 400 training images"),
        (["--dataset", "{tmp}/empty"], "cannot be read as a Hub-layout dataset"),
        (["--config", "{tmp}/broken.yaml"], "not valid YAML (line 2)"),
        (["--eval_at", "1", "99"], "eval_at=99: must be an iteration in 0.."),
        (["--ipc", "1"], "cmi_weight=10 with 1 synthetic image per class: the class-aware CMI of one image"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(proxy_cache, tmp_path, capsys, extra, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.yaml").write_text("ipc: [1\n")
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    assert main_entry(argv(tmp_path, proxy_cache, *extra), None) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method, extra, message", [
    ("dc", ["--outer_loop", "0"], "outer_loop=0: must be >= 1"),
    ("dc", ["--lr_net", "0"], "lr_net=0.0: must be > 0"),
    ("dc", ["--inner_loop", "-1"], "inner_loop=-1: must be >= 0"),
    ("dsa", ["--outer_loop", "0"], "outer_loop=0: must be >= 1"),
    ("dsa", ["--lr_net", "-0.1"], "lr_net=-0.1: must be > 0"),
    ("dsa", ["--batch_train", "0"], "batch_train=0: must be >= 1"),
    ("idm", ["--initial_nets", "5", "--net_num", "3"], "initial_nets=5 exceeds net_num=3"),
    ("idm", ["--train_net_num", "4"], "train_net_num=4 exceeds the initial pool"),
    ("idm", ["--ce_weight", "-1"], "ce_weight=-1.0: must be >= 0"),
    ("idm", ["--lr_net", "0"], "need lr_net > 0"),
    ("idm", ["--factor", "0"], "factor=0: must be >= 1"),
    ("idc", ["--inner_loop", "0"], "inner_loop=0: must be >= 1"),
    ("idc", ["--lr_img", "0.1", "--lr_img_base", "0.001"], "set only one of them"),
])
def test_method_refusals_through_the_recipes(proxy_cache, tmp_path, capsys, method, extra, message):
    config = ROOT / "tests" / "fixtures" / f"tiny_{method}_cmi.yaml"
    args = ["--config", str(config), "--output_dir", str(tmp_path / "out"), "--proxy_cache_dir", str(proxy_cache),
            *extra]
    assert main_entry(args, None, method=method) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_proxy_shape_mismatch_is_refused(proxy_cache, tmp_path, capsys):
    import timm
    from timm.models import save_for_hf

    import cmidd_hf  # noqa: F401

    save_for_hf(timm.create_model("convnet3", num_classes=10), tmp_path / "rgb_proxy", safe_serialization=True)
    assert main_entry(argv(tmp_path, proxy_cache, "--proxies", f"local-dir:{tmp_path / 'rgb_proxy'}"), None) == 2
    assert "does not accept" in capsys.readouterr().err


def test_unwritable_output_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main_entry(["--config", str(TINY), "--output_dir", str(blocker / "sub")], None) == 2
    assert "output_dir=" in capsys.readouterr().err


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_output_pushes_loads_back_and_evaluates_on_four_architectures(finished_run, fake_hub, monkeypatch,
                                                                          capsys):
    """The 'done' flow: push a run's folder, load it by repo id, evaluate 4 architectures, see the card updated."""
    push, evaluate = load_script("push_to_hub"), load_script("evaluate_synthetic")
    for script in (push, evaluate):  # the fake Hub is offline by design; check_can_push is tested on its own
        monkeypatch.setattr(script, "check_can_push", lambda repo_id: None)
    repo = "org/mnist-5k-dm-cmi-ipc2"
    assert push.main([str(finished_run), repo]) == 0
    (upload,) = fake_hub.commits
    assert upload["files"] == ["README.md", "config.yaml", "curves.png", "data/train-00000-of-00001.parquet",
                               "grid.png", "metrics.jsonl"]  # no checkpoints, no logs
    local, remote = load_synthetic(finished_run), load_synthetic(repo)
    assert torch.equal(local.images, remote.images) and remote.results == local.results

    archs = ["convnet3", "alexnet_cifar", "vgg11_cifar", "resnet18_cifar"]
    assert evaluate.main([repo, "--arch", *archs, "--epochs", "1", "--runs", "1", "--no_compile",
                          "--update-card", "--push"]) == 0
    out = capsys.readouterr().out
    assert all(f"distilled    {arch:<16} dsa" in out for arch in archs)
    updated = load_synthetic(repo)
    assert [r["arch"] for r in updated.results if r["epochs"] == 1] == archs
    assert any(r["epochs"] == 2 for r in updated.results)  # the recipe's own result is kept
    assert torch.equal(updated.images, local.images)
    card = fake_hub.commits[-1]["contents"]["README.md"].decode()
    assert "| default | distilled set | resnet18_cifar | dsa | 1 | 1 |" in card


def test_evaluate_script_imports_pt_and_refuses_unclear_input(tmp_path, capsys):
    evaluate = load_script("evaluate_synthetic")
    mnist = load_dataset(str(ROOT / "cmidd_hf" / "data" / "embedded" / "mnist-5k"), split="train").with_format("torch")
    pixels = mnist.select(range(0, 4000, 200))  # 20 real images, class-mixed
    order = torch.argsort(pixels["label"][:], stable=True)
    images = (pixels["image"][:].float().reshape(20, 1, 28, 28) / 255)[order]
    torch.save([images, pixels["label"][:][order]], tmp_path / "idc.pt")
    assert evaluate.main([str(tmp_path / "idc.pt"), "--dataset", "mnist-5k"]) == 2
    assert "say whether the tensors are normalized" in capsys.readouterr().err
    assert evaluate.main([str(tmp_path / "idc.pt"), "--dataset", "mnist-5k", "--update-card"]) == 2
    assert "use --save DIR" in capsys.readouterr().err
    assert evaluate.main(["org/some-set", "--update-card"]) == 2
    assert "add --push" in capsys.readouterr().err
    assert evaluate.main([str(tmp_path / "idc.pt"), "--dataset", "mnist-5k", "--pixels", "--arch", "convnet99"]) == 2
    assert "unknown architecture(s) ['convnet99']" in capsys.readouterr().err
    assert evaluate.main([str(tmp_path / "idc.pt"), "--dataset", "mnist-5k", "--pixels", "--epochs", "1",
                          "--runs", "1", "--no_compile", "--save", str(tmp_path / "imported")]) == 0
    saved = load_synthetic(tmp_path / "imported")
    assert saved.results[0]["arch"] == "convnet3" and saved.distillation["imported_from"].endswith("idc.pt")
    assert torch.allclose(saved.denormalized(), images, atol=1e-6)


def test_push_is_checked_before_any_work(monkeypatch):
    from huggingface_hub import constants

    from cmidd_hf.cli.arguments import check_can_push

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE is set"):
        check_can_push("org/name")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", "/nonexistent/token")
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", "/nonexistent/stored_tokens")
    with pytest.raises(ConfigError, match="needs a Hugging Face token"):
        check_can_push("org/name")
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    check_can_push("org/name")


def test_tensorboard_tracker_receives_losses_cmi_and_accuracy(proxy_cache, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main_entry(argv(tmp_path, proxy_cache, "--report_to", "tensorboard", "--eval_every", "2"), None) == 0
    (events,) = (tmp_path / "out" / "run" / "logs" / "run").glob("events.out.tfevents.*")  # hparams: a sub-run
    scalars = EventAccumulator(str(events)).Reload()
    tags = set(scalars.Tags()["scalars"])
    assert tags == {"loss", "matching_loss", "cmi", "seconds", "accuracy/convnet3_w32", "set_cmi", "final_cmi"}
    assert [e.step for e in scalars.Scalars("cmi")] == [1, 2, 3, 4]
    assert [e.step for e in scalars.Scalars("accuracy/convnet3_w32")] == [0, 2, 4]


def test_an_unavailable_tracker_is_refused(proxy_cache, tmp_path, capsys, monkeypatch):
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    assert main_entry(argv(tmp_path, proxy_cache, "--report_to", "wandb"), None) == 2
    assert "report_to=wandb: the wandb package is not installed" in capsys.readouterr().err


FASHION_CONFIGS = sorted((ROOT / "recipes" / "configs").glob("*/fashion-mnist_ipc*.yaml"))


@pytest.fixture(scope="module")
def fashion_mnist():
    from cmidd_hf.data.idx import DEBIAN_FASHION_MNIST
    from cmidd_hf.data.loading import load_image_classification

    if not DEBIAN_FASHION_MNIST.is_dir() and os.environ.get("CMIDD_REQUIRE_FASHION_MNIST") != "1":
        pytest.skip("apt-get install dataset-fashion-mnist (CI installs it and requires these tests)")
    return load_image_classification("fashion-mnist")


def fashion_experts(data, recipe, folder: Path) -> Path:
    """One expert with the preset's recipe and epochs, trained on 50 training images (the start only needs a
    trajectory of the preset's length; each epoch on them still costs a ConvNet-3 pass, so keep it small)."""
    from cmidd_hf.artifacts.experts import train_experts

    expert = ExpertRecipe.from_mapping({**recipe.method.experts["train"], "num_experts": 1})
    small = type(data)(data.name, data.train.subset(torch.arange(50)), None, None, data.class_names, data.mean,
                       data.std)
    return train_experts(expert, small, folder / "experts", "fashion-mnist", compile=False, progress=False)


@pytest.mark.parametrize("config", FASHION_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_fashion_mnist_config_starts_on_the_real_set(config, fashion_mnist, tmp_path):
    """The budget study's presets (issue #20): parsed, validated, the method built on the real Fashion-MNIST,
    its set initialized and one image step's losses computed for two classes."""
    from cmidd_hf.cli.runner import build_method

    method = config.parent.name.removesuffix("_cmi")
    recipe = parse_recipe(["--config", str(config), "--output_dir", str(tmp_path / "out"), "--compile", "false"],
                          method)
    validate(recipe)
    assert recipe.data.dataset == "fashion-mnist" and recipe.data.validation_per_class == 100
    artifacts = None
    if method == "mtt":  # experts of the preset's length on 50 real images (its train: spec would take hours)
        recipe.method.experts = f"local-dir:{fashion_experts(fashion_mnist, recipe, tmp_path)}"
        # 3 student steps instead of the preset's 50-60: the count changes nothing this start checks, and the
        # unrolled double backward of 60 steps over 100 images was 80 % of this test's time (tests/test_mtt.py
        # pins the multi-step gradient)
        recipe.method.syn_steps = 3
        artifacts = get_method(method).resolve_artifacts(recipe.method, fashion_mnist, progress=False)
    if method == "sre2l":  # a BN teacher of the preset's architecture, untrained (its train: spec takes hours)
        from cmidd_hf.engine.method import MethodArtifacts
        from cmidd_hf.models import build_network

        arch = ProxyTrainingSpec.from_mapping(recipe.method.teacher["train"]).arch
        artifacts = MethodArtifacts(items={"teacher": build_network(arch, 10, 1, (28, 28)).eval()})
    algorithm = build_method(recipe, fashion_mnist, torch.device("cpu"), artifacts)
    blocks = algorithm.blocks()
    synthetic = algorithm.init_synthetic() if blocks is None else algorithm.init_block(blocks[0])
    assert synthetic.num_classes == 10
    assert synthetic.rows_per_class == (recipe.synthetic.ipc if blocks is None else blocks[0].per_class)
    algorithm.begin_iteration(synthetic, 0)
    units = [0, 1] if algorithm.sharding is not Sharding.DATA else list(range(algorithm.work_units))
    losses = algorithm.losses(synthetic, units, 0, 0)
    assert all(torch.isfinite(v) for v in losses.values()) and sum(losses.values()).requires_grad
    if method == "idc":
        assert algorithm.lr_img == pytest.approx(1e-4 * recipe.synthetic.ipc / 10 * (28 / 32) ** 2)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU affinity is a Linux interface")
def test_default_threads_follow_the_cpu_affinity(monkeypatch):
    """A run restricted to some cores (taskset, a cgroup cpuset) shares those, not the machine's count."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert available_cpus() == 1


def test_process_threads_follow_the_request_else_share_the_cores(monkeypatch):
    """On every device (a GPU run once kept all cores per process and ignored --threads_per_process)."""
    before = torch.get_num_threads()
    monkeypatch.setattr(runner, "available_cpus", lambda: 16)
    try:
        assert set_process_threads(3, 4) == 3
        assert set_process_threads(None, 4) == 4
        assert set_process_threads(None, 32) == 1
    finally:
        torch.set_num_threads(before)
