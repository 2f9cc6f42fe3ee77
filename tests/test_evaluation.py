"""Evaluation protocol: presets, training actually learns, determinism, baselines, cross-architecture."""

import pytest
import torch

from cmidd_hf import (
    PROTOCOLS,
    evaluate_architectures,
    evaluate_random_subset,
    evaluate_synthetic,
    evaluate_whole_dataset,
    get_protocol,
    load_image_classification,
)
from cmidd_hf.data.augment import cutmix, default_augmentation

FAST = dict(compile=False, progress=False)
#: the learning checks train the DC zoo's ConvNetW32 (a ConvNet-3 of width 32): the same behaviour, ~5x faster
NARROW = "convnet3_w32"


@pytest.fixture(scope="module")
def mnist():
    return load_image_classification("mnist-5k", validation_per_class=10)


def subset(data, ipc, seed=0):
    pos = data.train.balanced_subset(ipc, torch.Generator().manual_seed(seed))
    return data.train.images(pos), data.train.labels[pos]


def test_protocol_presets_match_the_spec():
    dsa, dc, idc = PROTOCOLS["dsa"], PROTOCOLS["dc"], PROTOCOLS["idc"]
    assert (dsa.epochs, dsa.lr, dsa.momentum, dsa.weight_decay, dsa.batch_size) == (1000, 0.01, 0.9, 5e-4, 256)
    assert dsa.milestone_epochs() == [500] and dsa.gamma == 0.1
    assert dsa.augmentation == "color_crop_cutout_flip_scale_rotate" and dsa.cutmix_prob == 0
    assert dc.epochs == 300 and dc.augmentation is None
    assert idc.milestone_epochs() == [666, 833] and idc.gamma == 0.2 and idc.batch_size == 64
    assert "cutout" not in idc.augmentation and idc.cutmix_prob == 0.5 and idc.augmentation_mode == "idc"
    assert get_protocol("dsa", epochs=30).epochs == 30
    assert get_protocol("dc", augmentation="crop").augmentation is None
    assert default_augmentation("mnist-5k") == "color_crop_cutout_scale_rotate"
    assert default_augmentation("uoft-cs/cifar10") == "color_crop_cutout_flip_scale_rotate"
    with pytest.raises(ValueError, match="unknown protocol"):
        get_protocol("mtt")


def test_training_learns_and_is_deterministic(mnist):
    images, labels = subset(mnist, 10)
    kwargs = dict(arch=NARROW, protocol="dsa", seed=4, epochs=25, precision="fp32", **FAST)
    first = evaluate_synthetic(images, labels, mnist.test, runs=2, validation=mnist.validation, **kwargs)
    again = evaluate_synthetic(images, labels, mnist.test, runs=1, **kwargs)
    assert first.accuracies[0] == again.accuracies[0]  # same seed, same network, same accuracy
    assert first.seeds == [4, 5] and first.runs == 2 and first.train_size == 100
    assert min(first.accuracies) > 0.6  # 10 real digits per class teach a ConvNet far above chance (0.1)
    assert len(first.validation_accuracies) == 2
    summary = first.to_dict()
    assert summary["protocol"] == "dsa" and summary["epochs"] == 25 and summary["runs"] == 2
    assert isinstance(summary["mean"], float) and "±" in str(first)


def test_shuffled_labels_do_not_generalize(mnist):
    images, labels = subset(mnist, 10)
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    result = evaluate_synthetic(images, shuffled, mnist.test, arch=NARROW, runs=1, epochs=25, **FAST)
    assert result.mean < 0.35


def test_idc_protocol_uses_cutmix_and_learns(mnist, monkeypatch):
    import cmidd_hf.evaluation.trainer as trainer

    calls = []
    real_cutmix = trainer.cutmix
    monkeypatch.setattr(trainer, "cutmix", lambda *a: calls.append(1) or real_cutmix(*a))
    images, labels = subset(mnist, 5)
    result = evaluate_synthetic(images, labels, mnist.test, arch=NARROW, protocol="idc", runs=1, epochs=12, **FAST)
    assert result.protocol == "idc" and result.protocol_config["cutmix_prob"] == 0.5
    batches = 12 * 1  # 50 images, batch 64: one batch per epoch, CutMix with p = 0.5
    assert 0 < len(calls) < batches
    assert result.mean > 0.3  # far above chance (0.1)


def test_cutmix_mixes_a_box_and_reports_its_area():
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 8, 8).contiguous()  # image i is all i
    y = torch.arange(4)
    mixed, partner, lam = cutmix(x, y, torch.Generator().manual_seed(2))
    assert 0.0 < lam < 1.0 and mixed.shape == x.shape
    for i in range(4):
        pasted = mixed[i].eq(float(partner[i]))
        if partner[i] != i:
            assert pasted.float().mean() == pytest.approx(1 - lam)  # lambda = the area kept
            assert mixed[i][~pasted].eq(float(i)).all()
        rows, cols = pasted[0].any(1).nonzero(), pasted[0].any(0).nonzero()
        assert pasted[0].sum() == len(rows) * len(cols)  # one rectangular box


def test_baselines_random_subset_and_whole_set(mnist):
    random_subset = evaluate_random_subset(mnist, ipc=5, runs=2, epochs=15, arch=NARROW, **FAST)
    assert random_subset.train_size == 50 and random_subset.runs == 2
    assert random_subset.accuracies[0] != random_subset.accuracies[1]  # a different subset per run
    whole = evaluate_whole_dataset(mnist, runs=1, epochs=2, arch=NARROW, **FAST)
    assert whole.train_size == len(mnist.train) and whole.mean > 0.5  # two epochs over 3,900 digits


def test_cross_architecture_and_bad_arch(mnist):
    images, labels = subset(mnist, 2)
    results = evaluate_architectures(images, labels, mnist.test, ["convnet3", "alexnet_cifar"], runs=1,
                                     epochs=2, **FAST)
    assert set(results) == {"convnet3", "alexnet_cifar"}
    with pytest.raises(ValueError, match="unknown architecture"):
        evaluate_synthetic(images, labels, mnist.test, arch="nonet", runs=1, epochs=1, **FAST)
    with pytest.raises(ValueError, match="images are"):
        evaluate_synthetic(torch.zeros(4, 3, 32, 32), torch.zeros(4), mnist.test, runs=1, epochs=1, **FAST)


@pytest.mark.slow
def test_compiled_evaluation_matches_eager(mnist):
    """The default path (compile=True) trains the same networks as eager, up to float reassociation."""
    images, labels = subset(mnist, 10)
    kwargs = dict(arch=NARROW, protocol="dsa", seed=1, epochs=15, precision="fp32", runs=2, progress=False)
    eager = evaluate_synthetic(images, labels, mnist.test, compile=False, **kwargs)
    compiled = evaluate_synthetic(images, labels, mnist.test, compile=True, **kwargs)
    assert min(compiled.accuracies) > 0.5
    assert compiled.accuracies == pytest.approx(eager.accuracies, abs=0.03)


def test_epoch_stats_are_the_loss_and_accuracy_over_the_training_set(mnist):
    """With lr 0 the network never changes, so every epoch's stats must equal its cross-entropy and accuracy over
    the whole training set, averaged per image (300 images in batches of 96: a per-batch mean would differ)."""
    import torch.nn.functional as F

    from cmidd_hf.evaluation.protocols import EvalProtocol
    from cmidd_hf.evaluation.trainer import NetworkTrainer, StoreSet

    frozen = EvalProtocol("frozen", epochs=2, lr=0.0, momentum=0.0, weight_decay=0.0, batch_size=96, milestones=(),
                          augmentation=None)
    trainer = NetworkTrainer("convnet3", 10, mnist.train.image_shape, frozen, "cpu", precision="fp32")
    positions = torch.arange(300)
    stats = []
    trainer.train(StoreSet(mnist.train, positions, "cpu"), seed=3, progress=stats.append)
    with torch.no_grad():
        logits = trainer.model(mnist.train.images(positions)).float()
    labels = mnist.train.labels[positions]
    assert [s.epoch for s in stats] == [1, 2]
    for s in stats:
        assert s.loss == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-5)
        assert s.accuracy == pytest.approx(float((logits.argmax(dim=1) == labels).float().mean()))


def test_dd_ranking_scores_against_hand_computed_values():
    from cmidd_hf.evaluation.dd_ranking import dd_ranking_scores
    from cmidd_hf.evaluation.evaluate import EvaluationResult

    def result(accuracies, protocol):
        return EvaluationResult("convnet3", protocol, 1, accuracies, list(range(len(accuracies))), 100)

    soft, random = result([0.80, 0.70], "kd"), result([0.75, 0.72], "kd")
    hard = result([0.50, 0.60], "dsa")
    paired = dd_ranking_scores(soft, random, hard, result([0.90, 0.92], "dsa"))
    assert (paired.improvement_over_random, paired.improvement_over_random_std) == pytest.approx((1.5, 3.5))
    assert (paired.hard_label_recovery, paired.hard_label_recovery_std) == pytest.approx((36.0, 4.0))
    once = dd_ranking_scores(soft, random, hard, result([0.91], "dsa"))  # one whole-set run serves every round
    assert (once.hard_label_recovery, once.hard_label_recovery_std, once.full_accuracy) == pytest.approx((36, 5, 91))
    given = dd_ranking_scores(soft, random, hard, 0.93, "DSA paper, Table 1")
    assert given.hard_label_recovery == pytest.approx(38.0) and given.full_source == "DSA paper, Table 1"
    with pytest.raises(ValueError, match="provenance"):
        dd_ranking_scores(soft, random, hard, 0.93)
    with pytest.raises(ValueError, match="same hard-label protocol"):
        dd_ranking_scores(soft, random, hard, result([0.9, 0.9], "dc"))
    with pytest.raises(ValueError, match="rounds must pair up"):
        dd_ranking_scores(soft, result([0.7], "kd"), hard, 0.9, "x")
