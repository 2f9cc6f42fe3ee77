"""SRe2L: the BN-statistics loss, blocks streamed to disk and resumed bit-exactly, the kd protocol, refusals."""

from __future__ import annotations

import importlib.util
import os
import signal
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from accelerate import Accelerator

from cmidd_hf import build_network, load_image_classification
from cmidd_hf.engine.blocks import BlockwiseDistiller, class_blocks, from_uint8, read_blocks, shard_path, to_uint8
from cmidd_hf.evaluation.protocols import PROTOCOLS, EvalProtocol, KDProtocol, get_protocol
from cmidd_hf.evaluation.trainer import NetworkTrainer, TensorSet
from cmidd_hf.methods import MethodContext, SRe2L, SRe2LConfig
from cmidd_hf.methods.sre2l import BatchNormStatisticsLoss, random_resized_crop_box

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "tiny_sre2l_cmi.yaml"


@pytest.fixture(scope="module")
def mnist():
    return load_image_classification("mnist-5k")


def random_bn_teacher(seed: int = 0) -> nn.Module:
    """A ConvNet-3 with BatchNorm and non-trivial running statistics (no training needed for the math)."""
    torch.manual_seed(seed)
    net = build_network("convnet3_bn", 10, 1, (28, 28)).eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net


def make_sre2l(mnist, ipc=2, seed=0, iterations=3, teacher=None, **config) -> SRe2L:
    config = SRe2LConfig(**{"teacher": "local-dir:unused", "classes_per_block": 5, "images_per_block": 2, **config})
    config.validate()
    return SRe2L(config, MethodContext(real=mnist.train, ipc=ipc, seed=seed, precision="fp32",
                                       artifacts={"teacher": teacher or random_bn_teacher()},
                                       iterations=iterations))


# ------------------------------------------------------------------------------------------ the loss


def test_bn_loss_matches_a_hand_computation():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2)).eval()
    for bn in (net[1], net[4]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(4, 1, 8, 8)
    loss = BatchNormStatisticsLoss(net, first_multiplier=10.0)
    net(x)  # not recording: no term is kept
    assert loss.terms == [None, None]
    loss.recording = True
    net(x)
    value = loss.collect()

    def term(inp, bn):  # per channel over N, H, W, with the biased variance; Euclidean norms, not squared
        flat = inp.transpose(0, 1).reshape(inp.shape[1], -1)
        mean = flat.sum(1) / flat.shape[1]
        var = ((flat - mean[:, None]) ** 2).sum(1) / flat.shape[1]
        return ((bn.running_mean - mean) ** 2).sum().sqrt() + ((bn.running_var - var) ** 2).sum().sqrt()

    first_in = net[0](x)
    second_in = net[3](net[2](net[1](first_in)))
    expected = 10.0 * term(first_in, net[1]) + term(second_in, net[4])
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="was not run"):
        loss.collect()  # forgotten after collecting


def test_losses_are_the_authors_objective_on_the_jittered_batch(mnist):
    method = make_sre2l(mnist, jitter=4)
    block = method.blocks()[1]
    synthetic = method.init_block(block)
    images, labels = synthetic.decode()
    assert labels.tolist() == [5, 5, 6, 6, 7, 7, 8, 8, 9, 9]  # dataset class ids, not block positions
    terms = method.losses(synthetic, list(range(5)), step=3, substep=0)
    moved = method.augment(images, 3)
    assert not torch.equal(moved, images) and torch.equal(moved, method.augment(images, 3))  # seeded roll
    hand = BatchNormStatisticsLoss(method.teacher, 10.0)
    hand.recording = True
    logits = method.teacher(moved)
    torch.testing.assert_close(terms["ce_loss"], F.cross_entropy(logits, labels))
    torch.testing.assert_close(terms["bn_loss"], 0.01 * hand.collect())
    hand.remove()


def test_random_resized_crop_box_stays_inside_and_covers_the_scale_range():
    gen = torch.Generator().manual_seed(0)
    boxes = [random_resized_crop_box(224, 224, gen) for _ in range(300)]
    for top, left, h, w in boxes:
        assert 0 <= top and top + h <= 224 and 0 <= left and left + w <= 224
    areas = [h * w / 224 ** 2 for _, _, h, w in boxes]
    assert min(areas) < 0.2 and max(areas) > 0.8


def test_optimizer_is_adam_with_cosine_decay_and_pixels_are_clipped(mnist):
    method = make_sre2l(mnist, iterations=4)
    synthetic = method.init_block(method.blocks()[0])
    optimizer, scheduler = method.make_optimizer(synthetic)
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["betas"] == (0.5, 0.9)
    rates = []
    for _ in range(4):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.25 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * i / 4)).item())
                                   for i in range(4)])
    with torch.no_grad():
        synthetic.images.mul_(100)
    method.after_image_step(synthetic, 0, 0)
    pixels = mnist.train.denormalize(synthetic.images.detach())
    assert float(pixels.min()) >= -1e-6 and float(pixels.max()) <= 1 + 1e-6


# ------------------------------------------------------------------------------------------ blocks


def test_class_blocks_cover_every_image_once():
    blocks = class_blocks(num_classes=7, ipc=5, classes_per_block=3, images_per_block=2)
    seen = sorted((c, block.first + i) for block in blocks for c in block.classes for i in range(block.per_class))
    assert seen == [(c, i) for c in range(7) for i in range(5)]
    assert [b.index for b in blocks] == list(range(len(blocks)))
    assert blocks[-1].per_class == 1  # the last image of each class


def test_uint8_shards_round_trip_to_the_nearest_pixel(mnist):
    images = torch.randn(6, 1, 28, 28)
    mean, std = mnist.mean, mnist.std
    back = from_uint8(to_uint8(images, mean, std), mean, std)
    pixels = (images * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)).clamp(0, 1)
    assert float((mnist.train.denormalize(back) - pixels).abs().max()) <= 0.5 / 255 + 1e-6


def blockwise(mnist, out, iterations=3, interrupt=None, seen=None):
    method = make_sre2l(mnist, iterations=iterations)
    init_block = method.init_block

    def recorded(block):
        if seen is not None:  # a block starts only when every earlier block of this process is on disk
            assert all(shard_path(out / "blocks", b).exists() for b in method.blocks()[:block.index])
            seen.append(block.index)
        return init_block(block)

    method.init_block = recorded
    if interrupt is not None:
        losses = method.losses

        def wrapped(synthetic, classes, step, substep):
            if (method.block.index, step) == interrupt:
                os.kill(os.getpid(), signal.SIGTERM)
            return losses(synthetic, classes, step, substep)

        method.losses = wrapped
    return BlockwiseDistiller(Accelerator(cpu=True), method, None, iterations, out, {"method": "sre2l"},
                              mnist.mean, mnist.std, checkpoint_every=1, progress=False)


def test_blocks_stream_to_disk_and_an_interrupted_run_resumes_bit_identically(mnist, tmp_path):
    seen = []
    straight = blockwise(mnist, tmp_path / "a", seen=seen)
    straight.run()
    straight_images, straight_labels = straight.load()
    assert seen == [0, 1]
    assert not (tmp_path / "a" / "blocks" / "block-00000").exists()  # the block's work folder is gone
    assert straight_labels.tolist() == [c for c in range(10) for _ in range(2)]
    with pytest.raises(KeyboardInterrupt):
        blockwise(mnist, tmp_path / "b", interrupt=(1, 2)).run()
    assert shard_path(tmp_path / "b" / "blocks", class_blocks(10, 2, 5, 2)[0]).exists()
    resumed = blockwise(mnist, tmp_path / "b")
    resumed.run(resume=True)
    resumed_images, resumed_labels = resumed.load()
    assert torch.equal(straight_images, resumed_images) and torch.equal(straight_labels, resumed_labels)
    records = [yaml.safe_load(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["block"] for r in records] == [0, 1] and all("bn_loss" in r for r in records)
    with pytest.raises(ValueError, match="changed"):
        blockwise(mnist, tmp_path / "b", iterations=4).run(resume=True)


def test_read_blocks_sorts_by_class_in_block_order(mnist, tmp_path):
    distiller = blockwise(mnist, tmp_path)
    distiller.run()
    images, labels = distiller.load()
    again = read_blocks(tmp_path / "blocks", class_blocks(10, 2, 5, 2), mnist.mean, mnist.std)
    assert torch.equal(images, again[0]) and torch.equal(labels, again[1])


# ------------------------------------------------------------------------------------------ kd


def test_kd_with_a_one_hot_teacher_is_cross_entropy():
    torch.manual_seed(0)
    logits, labels = torch.randn(8, 10), torch.randint(0, 10, (8,))
    one_hot = 1e4 * F.one_hot(labels, 10).float()
    kd = KDProtocol("t", epochs=1, temperature=1.0)
    torch.testing.assert_close(kd.loss(logits, labels, one_hot), F.cross_entropy(logits, labels))
    hot = KDProtocol("t", epochs=1, temperature=4.0)  # at T: cross-entropy of the softened student
    torch.testing.assert_close(hot.loss(logits, labels, one_hot), F.cross_entropy(logits / 4, labels))


class LabelTeacher(nn.Module):
    """Outputs 1e4 x the one-hot label of the training image it is shown (looked up by nearest image)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("images", images.flatten(1))
        self.register_buffer("targets", 1e4 * F.one_hot(labels, 10).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.targets[torch.cdist(x.flatten(1).float(), self.images).argmin(1)]


def test_kd_training_with_a_label_teacher_trains_the_same_network_as_cross_entropy(mnist):
    images = mnist.train.images(torch.arange(40))
    labels = mnist.train.labels[:40]
    common = dict(epochs=3, lr=1e-3, weight_decay=0.01, batch_size=16, milestones=(), optimizer="adamw",
                  schedule="cosine", augmentation=None)
    networks = []
    for protocol, teacher in ((EvalProtocol("ce", **common), None),
                              (KDProtocol("kd1", temperature=1.0, **common), LabelTeacher(images, labels))):
        trainer = NetworkTrainer("convnet3", 10, (1, 28, 28), protocol, "cpu", precision="fp32", teacher=teacher)
        trainer.train(TensorSet(images, labels, "cpu"), seed=0)
        networks.append(trainer.model.state_dict())
    for key in networks[0]:
        torch.testing.assert_close(networks[0][key], networks[1][key], rtol=1e-4, atol=1e-5)


def test_protocols_are_registered_and_kd_needs_a_teacher():
    kd = get_protocol("kd")
    assert isinstance(kd, KDProtocol) and kd.temperature == 30 and kd.optimizer == "adamw" and kd.epochs == 400
    assert kd.mixup_alpha == 0.8 and kd.schedule == "cosine" and kd.requires_teacher
    assert get_protocol("kd_imagenet").temperature == 20 and not get_protocol("dsa").requires_teacher
    assert {"dsa", "dc", "idc", "kd", "kd_imagenet"} <= set(PROTOCOLS)
    with pytest.raises(ValueError, match="teacher"):
        NetworkTrainer("convnet3", 10, (1, 28, 28), kd, "cpu")
    with pytest.raises(ValueError, match="temperature"):
        get_protocol("kd", temperature=0.0)


# ------------------------------------------------------------------------------------------ the recipe


def main(tmp_path, cache, *extra, capsys=None):
    from cmidd_hf.cli.runner import main_entry

    argv = ["--config", str(TINY), "--output_dir", str(tmp_path / "out"), "--proxy_cache_dir", str(cache),
            "--teacher_cache_dir", str(cache), "--run_name", "r", *extra]
    return main_entry(argv, None, method="sre2l")


@pytest.mark.parametrize("extra, message", [
    (["--images_per_block", "1"], "class-aware CMI is exactly 0"),
    (["--eval_every", "2"], "block by block"),
    (["--teacher", "{train: {arch: convnet3, count: 1, epochs: 1, batch_size: 512}}"], "has no BatchNorm layers"),
    (["--teacher", ""], "teacher is empty"),
    (["--jitter", "-1"], "jitter=-1"),
    (["--resume_from_checkpoint", "latest"], "holds no checkpoint"),
])
def test_bad_inputs_are_one_line_and_exit_2_before_any_work(tmp_path, tiny_teacher, extra, message, capsys,
                                                            monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert main(tmp_path, tiny_teacher, *extra) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert message in lines[-1] and lines[-1].startswith("error: ")
    assert not (tmp_path / "out").exists()


def test_dm_without_a_teacher_cannot_use_kd(tmp_path, capsys, monkeypatch):
    from cmidd_hf.cli.runner import main_entry

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    argv = ["--config", str(ROOT / "tests" / "fixtures" / "tiny_dm_cmi.yaml"), "--output_dir", str(tmp_path / "out"),
            "--cmi_weight", "0", "--proxies", "[]", "--eval_protocol", "kd"]
    assert main_entry(argv, None, method="dm") == 2
    assert "set eval_teacher" in capsys.readouterr().err


def test_recipe_writes_the_set_with_the_teacher_and_the_kd_baseline(tmp_path, tiny_teacher, capsys):
    from cmidd_hf.cli.runner import main_entry  # the recipe's entry, in this process (1-vs-2 runs the script)

    assert main_entry(["--config", str(TINY), "--output_dir", str(tmp_path / "out"), "--proxy_cache_dir",
                       str(tiny_teacher), "--teacher_cache_dir", str(tiny_teacher), "--run_name", "r",
                       "--eval_baseline", "true"], None, method="sre2l") == 0, capsys.readouterr().err[-3000:]
    assert "baseline (random real ipc 2) convnet3_w32 [kd, 2 epochs" in capsys.readouterr().out
    from cmidd_hf.hub.synthetic_set import load_synthetic

    loaded = load_synthetic(str(tmp_path / "out" / "r"))
    assert loaded.labels.tolist() == [c for c in range(10) for _ in range(2)]
    block = loaded.distillation
    assert block["method"] == "sre2l" and block["parametrization"]["type"] == "blocks"
    assert block["parametrization"]["blocks"] == 2
    assert block["evaluation"]["protocol"] == "kd" and "sha256" in block["evaluation"]["teacher"]
    assert block["artifacts"]["teacher"] == block["evaluation"]["teacher"]
    assert block["baselines"][0]["protocol"] == "kd"
    pixels = loaded.denormalized() * 255  # the set is what its uint8 shards hold
    assert float((pixels - pixels.round()).abs().max()) < 1e-3
    # the evaluation script replays kd with the teacher the card records
    spec = importlib.util.spec_from_file_location("evaluate_synthetic", ROOT / "scripts" / "evaluate_synthetic.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    # with DD-Ranking's scores: IOR from the kd results, HLR from the set and the whole set under dsa
    assert script.main([str(tmp_path / "out" / "r"), "--protocol", "kd", "--runs", "2", "--epochs", "1",
                        "--no_compile", "--teacher_cache_dir", str(tmp_path / "unused"), "--dd_ranking",
                        "--full_epochs", "1", "--update-card"]) == 0
    card = load_synthetic(str(tmp_path / "out" / "r")).distillation
    kd = next(r for r in card["results"] if r["epochs"] == 1)
    random_kd = next(r for r in card["baselines"] if r["epochs"] == 1)
    (score,) = card["dd_ranking"]
    ior = [100 * (a - b) for a, b in zip(kd["accuracies"], random_kd["accuracies"], strict=True)]
    assert score["improvement_over_random"] == pytest.approx(sum(ior) / 2)
    assert score["improvement_over_random_std"] == pytest.approx(abs(ior[0] - ior[1]) / 2)
    assert (score["soft_protocol"], score["hard_protocol"]) == ("kd", "dsa")
    assert score["full_source"] == "1 run(s) x 1 epochs here" and 0 < score["full_accuracy"] <= 100
    assert "DD-Ranking scores" in (tmp_path / "out" / "r" / "README.md").read_text()
    for bad in (["--protocol", "dsa", "--dd_ranking"], ["--protocol", "kd", "--dd_ranking", "--full_accuracy", "90"],
                ["--protocol", "kd", "--dd_ranking", "--hard_protocol", "kd"]):
        assert script.main([str(tmp_path / "out" / "r"), *bad]) == 2
    soft_set(load_image_classification("mnist-5k")).save(tmp_path / "no-teacher")
    assert script.main([str(tmp_path / "no-teacher"), "--protocol", "kd", "--dataset", "mnist-5k"]) == 2


# ------------------------------------------------------------------------------------------ soft labels


def soft_set(mnist, n_per_class=2):
    from cmidd_hf.hub.synthetic_set import SyntheticSet

    positions = mnist.train.balanced_subset(n_per_class, torch.Generator().manual_seed(0))
    images = mnist.train.images(positions)
    torch.manual_seed(1)
    true = mnist.train.labels[positions]
    labels = F.softmax(torch.randn(len(images), 10) + 4 * F.one_hot(true, 10), dim=1)  # peaked at the class
    return SyntheticSet(images, labels, mnist.class_names, mnist.mean, mnist.std, {"method": "test"})


def test_soft_labels_round_trip_through_save_load_and_pt_export(mnist, tmp_path):
    from cmidd_hf.hub.interop import export_pt, load_pt
    from cmidd_hf.hub.synthetic_set import load_synthetic

    synthetic = soft_set(mnist)
    synthetic.save(tmp_path / "set")
    loaded = load_synthetic(str(tmp_path / "set"))
    assert loaded.soft and torch.equal(loaded.labels, synthetic.labels)
    assert loaded.distillation["labels"] == "soft" and loaded.ipc == 2
    from datasets import load_dataset

    rows = load_dataset(str(tmp_path / "set"), split="train")
    assert rows["label"] == synthetic.labels.argmax(1).tolist()  # plain datasets users see the argmax class
    export_pt(loaded, tmp_path / "set.pt")
    again = load_pt(tmp_path / "set.pt")
    assert again.soft and torch.equal(again.labels, synthetic.labels)
    with pytest.raises(ValueError, match="sum to 1"):
        type(synthetic)(synthetic.images, synthetic.labels * 2, mnist.class_names, mnist.mean, mnist.std)


def test_one_hot_soft_labels_train_the_same_network_as_class_indices(mnist):
    from cmidd_hf import evaluate_synthetic

    synthetic = soft_set(mnist)
    hard = synthetic.hard_labels
    options = dict(protocol="dc", epochs=3, runs=1, compile=False, precision="fp32", progress=False)
    by_index = evaluate_synthetic(synthetic.images, hard, mnist.test, **options)
    by_row = evaluate_synthetic(synthetic.images, F.one_hot(hard, 10).float(), mnist.test, **options)
    soft = evaluate_synthetic(synthetic.images, synthetic.labels, mnist.test, **options)
    assert by_index.accuracies == pytest.approx(by_row.accuracies, abs=1e-3)
    assert soft.accuracies != by_index.accuracies  # the soft rows are what the network learned from


def test_static_soft_labels_are_the_teachers_probabilities(mnist):
    method = make_sre2l(mnist, soft_labels="static", label_temperature=2.0)
    images = mnist.train.images(torch.arange(7))
    labels = method.final_labels(images, torch.zeros(7, dtype=torch.long))
    with torch.no_grad():
        expected = F.softmax(method.teacher(images) / 2.0, dim=1)
    torch.testing.assert_close(labels, expected)
    hard = make_sre2l(mnist).final_labels(images, torch.arange(7))
    assert torch.equal(hard, torch.arange(7))
