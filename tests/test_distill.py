"""The distillation engine and DM objective: learning, exact resume, refusals, NaN stop, process invariance."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from datasets import load_dataset

from cmidd_hf import CMIRegularizer, load_image_classification
from cmidd_hf.distill import Distiller, NonFiniteLossError, ResumeError, SyntheticImages
from cmidd_hf.methods import DMObjective

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "tiny_dm_cmi.yaml"


@pytest.fixture(scope="module")
def mnist():
    return load_image_classification("mnist-5k")


def make_distiller(mnist, out, iterations=6, objective=None, regularizer=None, **kwargs):
    objective = objective or DMObjective(mnist.train, batch_real=8, dsa_strategy="color_crop_cutout_scale_rotate",
                                         seed=1, precision="fp32")
    synthetic = SyntheticImages.from_real(mnist.train, 2, seed=1)
    fingerprint = {"dataset": "mnist-5k", "ipc": 2, "method": "dm"}
    return Distiller(Accelerator(cpu=True), synthetic, objective, regularizer, iterations, lr=1.0, momentum=0.5,
                     output_dir=out, fingerprint=fingerprint, progress=False, **kwargs)


def test_dm_loss_decreases_and_images_move(mnist, tmp_path):
    distiller = make_distiller(mnist, tmp_path, iterations=8)
    start = distiller.synthetic.images.detach().clone()
    first = float(distiller.objective.loss(distiller.synthetic.images, 2, range(10), 0).detach())
    distiller.run()
    after = float(distiller.objective.loss(distiller.synthetic.images, 2, range(10), 0).detach())
    assert after < first  # same step-0 network, real batch and augmentation: the matching loss went down
    assert not torch.equal(start, distiller.synthetic.images.detach())
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))


def test_dm_network_reinitialized_in_place_from_seed(mnist):
    objective = DMObjective(mnist.train, batch_real=4, seed=3, precision="fp32")
    conv = objective.net.features[0]
    identity = id(conv.weight)
    objective.reinitialize(5)
    w5 = conv.weight.detach().clone()
    objective.reinitialize(6)
    assert not torch.equal(w5, conv.weight)
    objective.reinitialize(5)
    assert torch.equal(w5, conv.weight) and id(conv.weight) == identity
    assert not any(p.requires_grad for p in objective.net.parameters())


def test_dm_per_class_losses_add_up(mnist):
    objective = DMObjective(mnist.train, batch_real=4, seed=0, precision="fp32")
    images = SyntheticImages.from_real(mnist.train, 2, 0).images
    whole = objective.loss(images, 2, range(10), step=3)
    parts = objective.loss(images, 2, range(5), step=3) + objective.loss(images, 2, range(5, 10), step=3)
    assert torch.allclose(whole, parts, rtol=1e-5)


def test_bn_network_couples_classes(mnist):
    assert DMObjective(mnist.train, arch="convnet3_bn", batch_real=4, precision="fp32").couples_classes
    assert not DMObjective(mnist.train, batch_real=4, precision="fp32").couples_classes


def test_interrupted_and_resumed_equals_uninterrupted(mnist, tmp_path):
    straight = make_distiller(mnist, tmp_path / "a", iterations=6, checkpoint_every=2)
    straight.run()

    class InterruptAt:
        def __init__(self, inner, step):
            self.inner, self.step, self.distiller = inner, step, None
            self.name, self.couples_classes = inner.name, inner.couples_classes

        def loss(self, images, ipc, classes, step):
            if step == self.step:
                os.kill(os.getpid(), signal.SIGTERM)  # handled by the distiller: checkpoint, then stop
            return self.inner.loss(images, ipc, classes, step)

    first = make_distiller(mnist, tmp_path / "b", iterations=6, checkpoint_every=100)
    first.objective = InterruptAt(first.objective, 2)
    with pytest.raises(KeyboardInterrupt):
        first.run()
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["step_000003"]
    resumed = make_distiller(mnist, tmp_path / "b", iterations=6, checkpoint_every=100)
    resumed.run(resume_from_checkpoint="latest")
    assert torch.equal(straight.synthetic.images, resumed.synthetic.images)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_a_different_configuration(mnist, tmp_path):
    make_distiller(mnist, tmp_path, iterations=2, checkpoint_every=2).run()
    other = make_distiller(mnist, tmp_path, iterations=4)
    other.state.fingerprint["ipc"] = 5
    with pytest.raises(ResumeError, match="ipc: checkpoint 2 vs now 5"):
        other.run(resume_from_checkpoint="latest")
    with pytest.raises(ResumeError, match="holds no checkpoint"):
        make_distiller(mnist, tmp_path / "empty", iterations=2).run(resume_from_checkpoint="latest")


def test_non_finite_loss_stops_with_the_step_and_keeps_the_checkpoint(mnist, tmp_path):
    class NaNAt:
        name, couples_classes = "nan", False

        def loss(self, images, ipc, classes, step):
            value = images.sum() * 0.0
            return value + math.nan if step == 3 else value

    distiller = make_distiller(mnist, tmp_path, iterations=6, objective=NaNAt(), checkpoint_every=2)
    with pytest.raises(NonFiniteLossError, match="at step 3.*step_000002"):
        distiller.run()
    assert (tmp_path / "checkpoints" / "step_000002").is_dir()


def test_cmi_regularizer_lowers_the_set_cmi(mnist, tmp_path):
    from cmidd_hf.proxies import ProxyPool, ProxyTrainingSpec, train_proxy

    proxy, accuracy = train_proxy(ProxyTrainingSpec(arch="convnet3", count=1, epochs=1, batch_size=512), mnist, 0,
                                  progress=False)
    assert accuracy > 0.5
    pool = ProxyPool([proxy], ["trained"])
    cmis = {}
    for weight in (0.0, 10000.0):
        reg = CMIRegularizer(list(pool), weight) if weight else None
        d = make_distiller(mnist, tmp_path / str(weight), iterations=10, regularizer=reg)
        d.run()
        probe = CMIRegularizer(list(pool), 1.0)
        cmis[weight] = float(probe.cmi(d.synthetic.images.detach(), d.synthetic.labels, step=0))
    assert cmis[10000.0] < 0.5 * cmis[0.0]


# ------------------------------------------------------------------------------------------ the recipe


def run_recipe(tmp_path, *extra, launcher=None, env=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([*(launcher or [sys.executable]), str(ROOT / "recipes" / "distill_dm.py"),
                           "--config", str(TINY), "--output_dir", str(tmp_path / "out"),
                           "--proxy_cache_dir", str(tmp_path.parent / "cache"), *extra],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)


@pytest.mark.slow
def test_one_and_two_processes_give_the_same_synthetic_set(tmp_path):
    single = run_recipe(tmp_path / "one", "--run_name", "r")
    assert single.returncode == 0, single.stderr[-3000:]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--main_process_port", "29533"]
    double = run_recipe(tmp_path / "two", "--run_name", "r", launcher=launcher, env={"ACCELERATE_USE_CPU": "1"})
    assert double.returncode == 0, double.stderr[-3000:]
    assert "accelerate: 2 process(es), MULTI_CPU" in double.stdout
    assert "accelerate: 1 process(es)" in single.stdout
    one = load_dataset(str(tmp_path / "one" / "out" / "r"), split="train").with_format("torch")
    two = load_dataset(str(tmp_path / "two" / "out" / "r"), split="train").with_format("torch")
    assert torch.allclose(one["pixel_values"][:], two["pixel_values"][:], atol=1e-5)
    assert torch.equal(one["label"][:], two["label"][:])
