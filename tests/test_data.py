"""Loading image-classification datasets: sources, column detection, normalization, stores, clear errors."""

import shutil

import huggingface_hub
import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value, load_dataset

from cmidd_hf.data.errors import DataError
from cmidd_hf.data.loading import EMBEDDED_DIR, RealImageStore, known_stats, load_image_classification


def tiny_rgb(n_per_class=4, classes=3, size=8, seed=0, image_col="img", label_col="label"):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (n_per_class * classes, size, size, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(classes), n_per_class)
    features = Features({image_col: Image(), label_col: ClassLabel(names=[f"c{i}" for i in range(classes)])})
    return Dataset.from_dict({image_col: list(pixels), label_col: labels.tolist()}, features=features), pixels


def test_embedded_mnist5k_loads_offline_with_mnist_stats():
    data = load_image_classification("mnist-5k")
    assert data.image_shape == (1, 28, 28) and data.num_classes == 10
    assert len(data.train) == 4000 and len(data.test) == 1000
    assert [data.train.class_count(c) for c in range(10)] == [400] * 10
    assert [int((data.test.labels == c).sum()) for c in range(10)] == [100] * 10
    assert data.mean == (0.1307,) and data.std == (0.3081,)
    # load_dataset works on the shipped folder directly too
    dsd = load_dataset(str(EMBEDDED_DIR / "mnist-5k"))
    assert dsd["train"].num_rows == 4000 and dsd["train"].features["label"].num_classes == 10


def test_dataset_dict_with_cifar_like_columns_and_computed_stats():
    train, pixels = tiny_rgb(image_col="img")
    coarse = ClassLabel(names=["a", "b"])
    train = train.rename_column("label", "fine_label").add_column("coarse_label", [0, 1] * 6).cast_column(
        "coarse_label", coarse)
    test, _ = tiny_rgb(seed=1)
    data = load_image_classification(DatasetDict({"train": train, "test": test.rename_column("label", "fine_label")}))
    assert data.class_names == ["c0", "c1", "c2"]
    assert torch.equal(data.train.uint8(torch.arange(12)), torch.from_numpy(pixels).permute(0, 3, 1, 2))
    expected_mean = tuple(np.round(pixels.reshape(-1, 3).mean(0) / 255, 4))
    assert np.allclose(data.mean, expected_mean, atol=1e-4)


def test_known_stats_by_hub_id():
    assert known_stats("uoft-cs/cifar10")[0] == (0.4914, 0.4822, 0.4465)
    assert known_stats("some/unknown") is None


def test_channel_conversion_and_resize():
    train, _ = tiny_rgb()
    data = load_image_classification(DatasetDict({"train": train}), test_split=None, channels=1, image_size=12)
    assert data.image_shape == (1, 12, 12) and data.test is None


def test_photos_of_other_shapes_are_covered_then_center_cropped_not_squashed():
    from PIL import Image as PILImage

    rng = np.random.default_rng(0)
    wide = rng.integers(0, 256, (8, 16, 3), dtype=np.uint8)  # H 8, W 16
    tall = rng.integers(0, 256, (12, 6, 3), dtype=np.uint8)
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b"])})
    train = Dataset.from_dict({"image": [wide, tall], "label": [0, 1]}, features=features)
    for in_memory in (True, False):
        data = load_image_classification(DatasetDict({"train": train}), test_split=None, image_size=4,
                                         in_memory=in_memory)
        got = data.train.uint8(torch.arange(2)).permute(0, 2, 3, 1).numpy()
        # ImageNet's Resize(shorter side) + CenterCrop, done by hand with PIL
        want_wide = np.asarray(PILImage.fromarray(wide).resize((8, 4), PILImage.BILINEAR))[:, 2:6]
        want_tall = np.asarray(PILImage.fromarray(tall).resize((4, 8), PILImage.BILINEAR))[2:6]
        assert np.array_equal(got[0], want_wide) and np.array_equal(got[1], want_tall)


def test_arrow_backed_store_matches_in_memory():
    train, _ = tiny_rgb()
    dsd = DatasetDict({"train": train, "test": train})
    memory = load_image_classification(dsd)
    arrow = load_image_classification(dsd, in_memory=False)
    idx = torch.tensor([5, 0, 11])
    assert torch.equal(memory.train.uint8(idx), arrow.train.uint8(idx))
    assert memory.mean == arrow.mean


def test_streamed_store_decodes_in_workers_in_the_callers_order():
    train, pixels = tiny_rgb(n_per_class=10)
    dsd = DatasetDict({"train": train, "test": train})
    memory = load_image_classification(dsd)
    streamed = load_image_classification(dsd, in_memory=False, num_workers=2)
    assert streamed.train.streamed and not memory.train.streamed and streamed.train.num_workers == 2
    assert load_image_classification(dsd, num_workers=2).train.num_workers == 0  # in memory: nothing to decode
    chunks = list(torch.randperm(30, generator=torch.Generator().manual_seed(0)).split(7))
    got = list(streamed.train.batches(chunks))
    want = list(memory.train.batches(chunks))
    assert len(got) == len(want) == 5
    for (x, y), (x_ref, y_ref), chunk in zip(got, want, chunks, strict=True):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref) and torch.equal(y, memory.train.labels[chunk])
    assert streamed.validation is None and streamed.train.subset(torch.arange(3)).num_workers == 2
    with pytest.raises(DataError, match="num_workers=-1"):
        load_image_classification(dsd, in_memory=False, num_workers=-1)


def test_training_on_a_streamed_store_matches_the_in_memory_one():
    """Teacher / proxy / whole-set training reads a streamed store through DataLoader workers: same network."""
    from cmidd_hf.evaluation.protocols import get_protocol
    from cmidd_hf.evaluation.trainer import NetworkTrainer, StoreSet

    train, _ = tiny_rgb(n_per_class=20, size=16)
    dsd = DatasetDict({"train": train, "test": train})
    protocol = get_protocol("dsa", epochs=2, batch_size=16)
    states, accuracies = [], []
    for data in (load_image_classification(dsd), load_image_classification(dsd, in_memory=False, num_workers=2)):
        trainer = NetworkTrainer("convnet3", 3, data.image_shape, protocol, "cpu", precision="fp32")
        trainer.train(StoreSet(data.train, None, "cpu"), seed=0)
        states.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
        accuracies.append(trainer.accuracy(data.test, batch_size=16))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert accuracies[0] == accuracies[1]


def test_seeded_class_balanced_sampling_and_validation_split():
    data = load_image_classification("mnist-5k", validation_per_class=20, seed=3)
    assert len(data.train) == 3800 and len(data.validation) == 200
    held_out = set(data.validation.indices.tolist())
    assert held_out.isdisjoint(data.train.indices.tolist())
    a = data.train.sample(4, 16, torch.Generator().manual_seed(9))
    b = data.train.sample(4, 16, torch.Generator().manual_seed(9))
    assert torch.equal(a, b) and a.shape == (16, 1, 28, 28)
    positions = data.train.sample_positions(4, 16, torch.Generator().manual_seed(9))
    assert (data.train.labels[positions] == 4).all() and len(set(positions.tolist())) == 16
    normalized = data.train.images(positions)
    assert torch.allclose(data.train.denormalize(normalized) * 255, data.train.uint8(positions).float(), atol=1e-3)


def test_hub_id_resolves_through_the_hub_cache_offline(tmp_path, monkeypatch):
    commit = "a" * 40
    root = tmp_path / "datasets--someone--mnist-5k"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    shutil.copytree(EMBEDDED_DIR / "mnist-5k", root / "snapshots" / commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    data = load_image_classification("someone/mnist-5k")
    assert len(data.train) == 4000 and data.mean == (0.1307,)  # known stats by name
    with pytest.raises(DataError, match="could not be fetched"):
        load_image_classification("someone/missing")


# ------------------------------------------------------------------------------------------ clear errors


def test_error_no_image_column():
    ds = Dataset.from_dict({"x": [1, 2], "label": [0, 1]}, features=Features(
        {"x": Value("int64"), "label": ClassLabel(names=["a", "b"])}))
    with pytest.raises(DataError, match="no image column.*image_column"):
        load_image_classification(ds, test_split=None)


def test_error_no_label_column():
    train, _ = tiny_rgb()
    ds = train.remove_columns("label").add_column("caption", ["x"] * 12)
    with pytest.raises(DataError, match="no label column.*label_column"):
        load_image_classification(ds, test_split=None)


def test_error_several_candidates_without_override_and_override_works():
    train, _ = tiny_rgb()
    ds = train.add_column("other", [0] * 12).cast_column("other", ClassLabel(names=["z"]))
    ds = ds.rename_column("label", "species")
    with pytest.raises(DataError, match="several label columns.*label_column"):
        load_image_classification(ds, test_split=None)
    assert load_image_classification(ds, test_split=None, label_column="species").num_classes == 3
    two_images = Dataset.from_dict(
        {"img": list(np.zeros((4, 8, 8, 3), np.uint8)), "mask": list(np.zeros((4, 8, 8, 3), np.uint8)),
         "label": [0, 1, 2, 0]},
        features=Features({"img": Image(), "mask": Image(), "label": ClassLabel(names=["a", "b", "c"])}))
    with pytest.raises(DataError, match="several image columns"):
        load_image_classification(two_images, test_split=None)
    with pytest.raises(DataError, match="image_column='nope'"):
        load_image_classification(two_images, test_split=None, image_column="nope")


def test_error_class_with_too_few_images():
    data = load_image_classification("mnist-5k")
    with pytest.raises(DataError, match="class 2 has 400 images but 401 were requested"):
        data.train.sample(2, 401, torch.Generator().manual_seed(0))


def test_error_unreadable_image_names_the_row():
    train, _ = tiny_rgb()
    raw = train.cast_column("img", Image(decode=False))
    rows = [raw[i]["img"] for i in range(12)]
    rows[7] = {"bytes": b"definitely not a png", "path": None}
    broken = Dataset.from_dict({"img": rows, "label": train["label"][:]},
                               features=Features({"img": Image(), "label": train.features["label"]}))
    with pytest.raises(DataError, match="unreadable image in column 'img', row 7"):
        load_image_classification(broken, test_split=None, channels=3)


def test_error_unknown_dataset_and_split():
    with pytest.raises(DataError, match="unknown dataset='not-a-dataset'"):
        load_image_classification("not-a-dataset")
    with pytest.raises(DataError, match="test_split='validation' not found"):
        load_image_classification("mnist-5k", test_split="validation")


def test_store_from_tensors():
    images = torch.randint(0, 256, (6, 1, 4, 4), dtype=torch.uint8)
    store = RealImageStore(images, torch.tensor([0, 0, 1, 1, 2, 2]), 3, (0.5,), (0.25,), (1, 4, 4))
    assert torch.allclose(store.images(torch.tensor([1])), (images[1:2].float() / 255 - 0.5) / 0.25)
