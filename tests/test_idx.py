"""IDX (MNIST-format) folders and Fashion-MNIST: reading, one-time conversion, offline fallback, the real set."""

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator

import cmidd_hf.data.idx as idx
from cmidd_hf import load_image_classification
from cmidd_hf.data.errors import DataError
from cmidd_hf.engine.distill import Distiller
from cmidd_hf.methods import DistributionMatching, DMConfig, MethodContext


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(data)


def make_folder(folder: Path, per_class=(3, 2), classes=4, compress=True) -> dict:
    folder.mkdir(parents=True)
    arrays = {}
    g = np.random.default_rng(0)
    for split, n in zip(("train", "t10k"), per_class, strict=True):
        labels = np.repeat(np.arange(classes), n)
        images = g.integers(0, 256, (len(labels), 6, 5))
        suffix = ".gz" if compress else ""
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels, compress)
        arrays[split] = (images, labels)
    return arrays


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setattr(idx, "cache_root", lambda: root)
    return root


@pytest.mark.parametrize("compress", [True, False])
def test_idx_folder_reads_and_converts_once(tmp_path, cache, compress):
    arrays = make_folder(tmp_path / "kmnist", compress=compress)
    assert np.array_equal(idx.read_idx(next((tmp_path / "kmnist").glob("train-images*"))), arrays["train"][0])
    data = load_image_classification(f"idx:{tmp_path / 'kmnist'}")
    assert data.class_names == ["0", "1", "2", "3"] and data.image_shape == (1, 6, 5)
    assert [data.train.class_count(c) for c in range(4)] == [3] * 4 and len(data.test) == 8
    order = torch.argsort(data.train.labels, stable=True)
    assert torch.equal(data.train.uint8(order)[:, 0], torch.from_numpy(arrays["train"][0].astype(np.uint8)))
    (converted,) = cache.iterdir()
    stamp = (converted / "README.md").stat().st_mtime_ns
    load_image_classification(f"idx:{tmp_path / 'kmnist'}")
    assert list(cache.iterdir()) == [converted] and (converted / "README.md").stat().st_mtime_ns == stamp


def test_bad_idx_input_is_a_data_error(tmp_path, cache):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="not an IDX file"):
        idx.read_idx(tmp_path / "bad" / "train-images-idx3-ubyte")
    with pytest.raises(DataError, match="not an IDX file"):
        load_image_classification(f"idx:{tmp_path / 'bad'}")
    make_folder(tmp_path / "partial")
    (tmp_path / "partial" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="has no train-labels-idx1-ubyte"):
        load_image_classification(f"idx:{tmp_path / 'partial'}")
    with pytest.raises(DataError, match="does not exist"):
        load_image_classification(f"idx:{tmp_path / 'missing'}")


def test_fashion_mnist_without_hub_or_idx_files_says_how_to_get_them(tmp_path, monkeypatch, cache):
    monkeypatch.setattr(idx, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist.*idx:/folder"):
        load_image_classification("fashion-mnist")


REAL = idx.DEBIAN_FASHION_MNIST


@pytest.mark.slow
@pytest.mark.skipif(not REAL.is_dir() and os.environ.get("CMIDD_REQUIRE_FASHION_MNIST") != "1",
                    reason="apt-get install dataset-fashion-mnist (CI installs it and requires this test)")
def test_real_fashion_mnist_counts_labels_statistics_and_a_few_dm_steps(cache, tmp_path, monkeypatch):
    import huggingface_hub

    # an empty, offline Hub cache: the set must come from Debian's IDX files, converted once into `cache`
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    data = load_image_classification("fashion-mnist")
    (converted,) = cache.iterdir()
    assert converted.name.startswith("fashion-mnist-")
    assert f"IDX files in `{REAL}`" in (converted / "README.md").read_text()
    assert data.num_classes == 10 and data.class_names == idx.FASHION_MNIST_CLASSES
    assert [data.train.class_count(c) for c in range(10)] == [6000] * 10
    assert [data.test.class_count(c) for c in range(10)] == [1000] * 10
    assert data.image_shape == (1, 28, 28) and data.license == "mit"
    assert (data.mean, data.std) == ((0.2861,), (0.3530,))
    pixels = data.train.uint8(torch.arange(len(data.train))).float() / 255
    assert pixels.mean().item() == pytest.approx(0.2860, abs=5e-4)  # the known statistics of the full set
    assert pixels.std().item() == pytest.approx(0.3530, abs=5e-4)
    method = DistributionMatching(DMConfig(batch_real=32), MethodContext(real=data.train, ipc=2, precision="fp32"))
    distiller = Distiller(Accelerator(cpu=True), method, method.init_synthetic(), None, 3, tmp_path, {},
                          progress=False)
    start = distiller.synthetic.images.detach().clone()
    distiller.run()
    assert not torch.equal(start, distiller.synthetic.images.detach())
