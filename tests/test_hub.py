"""SyntheticSet: Hub-layout save/load, cards, push (faked Hub), repo-id loading, .pt / image-folder interop."""

import os
from dataclasses import replace
from pathlib import Path

import datasets
import pytest
import torch
import yaml
from datasets import load_dataset
from huggingface_hub import DatasetCard

from cmidd_hf import SyntheticSet, export_set, load_imagefolder, load_pt, load_synthetic
from cmidd_hf.data.errors import DataError
from cmidd_hf.hub.figures import to_uint8_images

NAMES = [str(d) for d in range(10)]
MEAN, STD = (0.1307,), (0.3081,)
RESULT = {"arch": "convnet3", "protocol": "dsa", "epochs": 3, "runs": 2, "accuracies": [0.5, 0.625],
          "mean": 0.5625, "std": 0.0625}


def make_set(ipc=2, seed=0, config_name="default", **block) -> SyntheticSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(10 * ipc, 1, 28, 28, generator=g) * 1.5  # values outside [0, 1] after de-normalizing
    distillation = {"method": "dm", "ipc": ipc, "iterations": 5, "seed": seed,
                    "regularizer": {"name": "class_aware_cmi", "weight": 10.0, "space": "feature",
                                    "normalization": "global", "proxies": [
                                        {"name": "hf-hub:org/p-0", "repo_id": "org/p-0", "revision": "a" * 40}]},
                    "results": [RESULT], **block}
    return SyntheticSet(images, torch.arange(10).repeat_interleave(ipc), NAMES, MEAN, STD, distillation,
                        source="mnist-5k", license="cc-by-sa-3.0", config_name=config_name)


def front_matter(path):
    return yaml.safe_load(path.read_text().split("---")[1])


def test_save_then_load_dataset_is_bit_identical_and_card_is_plain_yaml(tmp_path):
    synthetic = make_set()
    folder = synthetic.save(tmp_path / "set")
    ds = load_dataset(str(folder), split="train").with_format("torch")
    assert torch.equal(ds["pixel_values"][:], synthetic.images)
    assert torch.equal(ds["label"][:], synthetic.labels)
    rendered = torch.from_numpy(to_uint8_images(synthetic.images, MEAN, STD))
    assert torch.equal(ds["image"][:].reshape(rendered.shape), rendered)
    card = DatasetCard.load(folder / "README.md")
    meta = front_matter(folder / "README.md")  # yaml.safe_load: no numpy/tuple tags anywhere
    assert meta["license"] == "cc-by-sa-3.0" and meta["task_categories"] == ["image-classification"]
    assert {"dataset-distillation", "synthetic"} <= set(meta["tags"]) and meta["source_datasets"] == ["mnist-5k"]
    assert meta["size_categories"] == ["n<1K"] and meta["pretty_name"] == "mnist-5k distilled (DM+CMI)"
    block = meta["distillation"]["default"]
    assert block["results"] == [RESULT] and block["normalization"] == {"mean": [0.1307], "std": [0.3081]}
    assert block["regularizer"]["proxies"][0]["revision"] == "a" * 40 and block["image_size"] == [1, 28, 28]
    assert card.data.distillation["default"]["ipc"] == 2
    for text in ("| default | distilled set | convnet3 | dsa | 3 | 2 | 56.25 ± 6.25 | 50.0, 62.5 |", "grid.png",
                 "cmidd_hf.load_synthetic(", "@inproceedings{cmidd2025", "Dataset Condensation with Distribution",
                 "Gradient-Based Learning Applied to Document Recognition"):
        assert text in card.text, text
    assert (folder / "grid.png").stat().st_size > 0


def test_load_synthetic_restores_everything(tmp_path):
    synthetic = make_set()
    loaded = load_synthetic(synthetic.save(tmp_path / "set"))
    assert torch.equal(loaded.images, synthetic.images) and torch.equal(loaded.labels, synthetic.labels)
    assert loaded.class_names == NAMES and (loaded.mean, loaded.std) == (MEAN, STD)
    assert loaded.results == [RESULT] and loaded.distillation["regularizer"]["weight"] == 10.0
    assert (loaded.source, loaded.license, loaded.ipc, loaded.config_name) == ("mnist-5k", "cc-by-sa-3.0", 2, "default")


def test_second_config_keeps_the_first(tmp_path):
    folder = tmp_path / "set"
    first, second = make_set(ipc=2), make_set(ipc=5, seed=1, config_name="ipc5")
    first.save(folder)
    second.save(folder)
    meta = front_matter(folder / "README.md")
    assert sorted(meta["distillation"]) == ["default", "ipc5"]
    assert [c["config_name"] for c in meta["configs"]] == ["default", "ipc5"]
    assert torch.equal(load_synthetic(folder).images, first.images)
    assert torch.equal(load_synthetic(folder, config="ipc5").images, second.images)
    assert load_dataset(str(folder), split="train").num_rows == 20  # plain load_dataset: the default config
    assert (folder / "ipc5" / "grid.png").exists() and "| ipc5 | distilled set |" in (folder / "README.md").read_text()
    with pytest.raises(DataError, match=r"config='ipc9' not in .* configs are \['default', 'ipc5'\]"):
        load_synthetic(folder, config="ipc9")


def test_record_results_replaces_same_arch_protocol_epochs():
    synthetic = make_set()
    synthetic.record_results([{**RESULT, "mean": 0.7}, {**RESULT, "arch": "alexnet_cifar"}])
    assert [(r["arch"], r["mean"]) for r in synthetic.results] == [("convnet3", 0.7), ("alexnet_cifar", 0.5625)]


def test_bad_sets_are_refused():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        SyntheticSet(torch.zeros(2, 1, 4, 4), torch.tensor([0, 10]), NAMES, MEAN, STD)
    with pytest.raises(ValueError, match="mean/std have 1/1 values for 3-channel"):
        SyntheticSet(torch.zeros(2, 3, 4, 4), torch.tensor([0, 1]), NAMES, MEAN, STD)
    with pytest.raises(ValueError, match="'data' is reserved"):
        replace(make_set(), config_name="data")


# ------------------------------------------------------------------------------------------------ push


def test_push_is_one_create_repo_and_one_commit_of_exactly_the_set(fake_hub, tmp_path):
    curves = tmp_path / "curves.png"
    curves.write_bytes(b"png")
    commit = make_set().push_to_hub("org/mnist-dm-cmi", token=fake_hub.token, extra_files={"curves.png": curves})
    assert fake_hub.created == [{"repo_id": "org/mnist-dm-cmi", "repo_type": "dataset", "private": False,
                                 "exist_ok": True, "token": fake_hub.token}]
    (upload,) = fake_hub.commits
    assert upload["repo_type"] == "dataset" and commit.commit_url.endswith("/commit/1")
    assert upload["files"] == ["README.md", "curves.png", "data/train-00000-of-00001.parquet", "grid.png"]
    assert not any(fake_hub.token.encode() in content for content in upload["contents"].values())
    assert "cmidd_hf.load_synthetic(\"org/mnist-dm-cmi\")" in upload["contents"]["README.md"].decode()


def test_pushing_a_second_ipc_keeps_the_first_and_loads_by_repo_id(fake_hub):
    first, second = make_set(ipc=2), make_set(ipc=5, seed=1, config_name="ipc5")
    first.push_to_hub("org/mnist-dm-cmi")
    second.push_to_hub("org/mnist-dm-cmi")
    assert fake_hub.commits[1]["files"] == ["README.md", "ipc5/grid.png", "ipc5/train-00000-of-00001.parquet"]
    meta = yaml.safe_load(fake_hub.commits[1]["contents"]["README.md"].decode().split("---")[1])
    assert sorted(meta["distillation"]) == ["default", "ipc5"]
    # loading by repo id: snapshot_download from the (offline) Hub cache, then load_dataset(local path)
    loaded = load_synthetic("org/mnist-dm-cmi")
    assert torch.equal(loaded.images, first.images) and loaded.results == [RESULT]
    assert torch.equal(load_synthetic("org/mnist-dm-cmi", config="ipc5").images, second.images)


def test_push_refuses_a_bad_repo_id():
    with pytest.raises(ValueError, match="repo_id='no-namespace'"):
        make_set().push_to_hub("no-namespace")


def test_unknown_repo_offline_is_a_clear_error(fake_hub):
    with pytest.raises(DataError, match="could not be fetched .* Hub cache"):
        load_synthetic("org/absent")


def test_unfinished_run_folder_is_a_clear_error(tmp_path):
    """A run folder before its set is saved (config, metrics, checkpoints; no card) is named as unfinished, not
    handed to ``load_dataset`` (which fails on the jsonl/yaml files with a CastError traceback)."""
    (tmp_path / "config.yaml").write_text("method: dm\n")
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    (tmp_path / "checkpoints" / "checkpoint_1").mkdir(parents=True)
    with pytest.raises(DataError, match="run folder without a finished set .* --resume_from_checkpoint latest"):
        load_synthetic(str(tmp_path))


def test_plain_image_dataset_loads_with_known_normalization(tmp_path):
    """A Hub image dataset without pixel_values (e.g. uploaded by hand) is normalized with the known stats."""
    loaded = load_synthetic(str(_embedded_mnist()))
    assert loaded.mean == MEAN and loaded.images.shape == (4000, 1, 28, 28)
    assert abs(float(loaded.denormalized().min())) < 1e-6 and float(loaded.denormalized().max()) == pytest.approx(1)


def _embedded_mnist():
    from cmidd_hf.data.loading import EMBEDDED_DIR

    return EMBEDDED_DIR / "mnist-5k"


# ------------------------------------------------------------------------------------------ interop


def test_pt_export_import_round_trips_and_reads_the_research_layouts(tmp_path):
    synthetic = make_set()
    same = load_pt(export_set(synthetic, "pt", tmp_path / "set.pt"))
    assert torch.equal(same.images, synthetic.images) and torch.equal(same.labels, synthetic.labels)
    assert same.class_names == NAMES and same.mean == MEAN
    raw = load_pt(export_set(synthetic, "pt", tmp_path / "raw.pt", normalized=False))
    assert torch.allclose(raw.images, synthetic.images, atol=1e-5)
    dm_style = torch.load(tmp_path / "set.pt", weights_only=True)
    assert torch.equal(dm_style["data"][0][0], synthetic.images)  # what DC/DSA/DM/DC-BENCH read

    common = dict(class_names=NAMES, mean=MEAN, std=STD)
    torch.save([synthetic.images, synthetic.labels], tmp_path / "idc.pt")  # IDC
    assert torch.equal(load_pt(tmp_path / "idc.pt", normalized=True, **common).images, synthetic.images)
    pixels = synthetic.denormalized()
    torch.save({"data": [[pixels[:10], synthetic.labels[:10]], [pixels, synthetic.labels]], "accs_all_exps": {}},
               tmp_path / "dm.pt")  # DM: one pair per experiment, here in pixel space
    assert torch.allclose(load_pt(tmp_path / "dm.pt", normalized=False, **common).images, synthetic.images,
                          atol=1e-5)
    torch.save(synthetic.images, tmp_path / "images_best.pt")  # MTT: separate files, soft labels allowed
    torch.save(torch.nn.functional.one_hot(synthetic.labels, 10).float(), tmp_path / "labels_best.pt")
    mtt = load_pt(tmp_path / "images_best.pt", labels_path=tmp_path / "labels_best.pt", normalized=True, **common)
    assert mtt.soft and torch.equal(mtt.hard_labels, synthetic.labels)  # soft rows kept, argmax = the class
    bare = load_pt(tmp_path / "images_best.pt", normalized=True, **common)  # class-sorted layout
    assert torch.equal(bare.labels, synthetic.labels)
    with pytest.raises(DataError, match="say whether the tensors are normalized"):
        load_pt(tmp_path / "idc.pt", **common)


def test_imagefolder_export_import_round_trip(tmp_path):
    synthetic = make_set()
    folder = export_set(synthetic, "imagefolder", tmp_path / "folder")
    assert sorted(os.listdir(folder))[:2] == ["000_0", "001_1"] and len(os.listdir(folder / "003_3")) == 2
    back = load_imagefolder(folder, class_names=NAMES, mean=MEAN, std=STD)
    quantized = torch.from_numpy(to_uint8_images(synthetic.images, MEAN, STD)).float().unsqueeze(1) / 255
    assert torch.equal(back.labels, synthetic.labels)
    assert torch.allclose(back.images, (quantized - MEAN[0]) / STD[0], atol=1e-6)


def test_imagefolder_maps_numbered_and_named_folders(tmp_path):
    synthetic = make_set()
    folder = export_set(synthetic, "imagefolder", tmp_path / "folder")
    for sub in sorted(folder.iterdir()):  # SRe2L-style names: new000, new001, ...
        sub.rename(folder / f"new{sub.name[:3]}")
    (folder / "new007").rename(folder / "new0x7")  # breaks the numbering rule ...
    with pytest.raises(DataError, match="cannot map"):
        load_imagefolder(folder, class_names=[*NAMES, "extra"], mean=MEAN, std=STD)
    (folder / "new0x7").rename(folder / "new007")
    assert torch.equal(load_imagefolder(folder, class_names=NAMES, mean=MEAN, std=STD).labels, synthetic.labels)


# ------------------------------------------------------------------------------------------ live Hub


@pytest.mark.skipif(os.environ.get("CMIDD_LIVE_HUB") != "1", reason="set CMIDD_LIVE_HUB=1 and HF_TOKEN to run")
def test_live_push_and_load_back():
    import uuid

    from huggingface_hub import HfApi

    api = HfApi()
    repo_id = f"{api.whoami()['name']}/cmidd-hf-live-test-{uuid.uuid4().hex[:8]}"
    synthetic = make_set()
    try:
        synthetic.push_to_hub(repo_id, private=True)
        loaded = load_synthetic(repo_id)
        assert torch.equal(loaded.images, synthetic.images) and loaded.results == [RESULT]
    finally:
        api.delete_repo(repo_id, repo_type="dataset", missing_ok=True)


def test_folders_of_the_same_name_and_shape_read_back_their_own_rows(tmp_path):
    """datasets 5.2 keys the cache of a carded folder by its name, features and file patterns, not its files:
    a second set saved as .../b/set (or .../a/set rewritten) was read back with the first one's pixels."""
    from cmidd_hf.data.loading import resolve_dataset

    def save(folder, value):
        SyntheticSet(torch.full((4, 1, 8, 8), value), torch.tensor([0, 1, 0, 1]), ["a", "b"], (0.5,), (0.5,),
                     {"method": "test"}).save(folder)

    a, b = tmp_path / "a" / "set", tmp_path / "b" / "set"
    caches = Path(datasets.config.HF_DATASETS_CACHE) / "cmidd-local"
    before = set(caches.iterdir()) if caches.exists() else set()
    for folder, value in ((a, 0.25), (b, 0.75), (a, -0.5)):
        save(folder, value)
        assert load_synthetic(str(folder)).images.unique().tolist() == [value]
        rows, _ = resolve_dataset(str(folder))
        assert torch.tensor(rows["train"]["pixel_values"]).unique().tolist() == [value]
    # one cached copy per folder: a's first version was dropped when a was rewritten
    assert len(set(caches.iterdir()) - before) == 2


def test_card_floats_keep_six_significant_digits():
    """Small settings survive the card (MTT's lr_lr 1e-7, IDC's lr_img 7.66e-5); long floats are shortened."""
    from cmidd_hf.hub.card import plain

    assert plain({"lr_lr": 1e-7, "lr_img": 7.65625e-5, "acc": 0.76216666666, "nan": float("nan")}) == {
        "lr_lr": 1e-7, "lr_img": 7.65625e-5, "acc": 0.762167, "nan": "nan"}
