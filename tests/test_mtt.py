"""MTT: expert trajectories, the trajectory loss and its two gradients, the learned step size, ZCA, refusals."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from safetensors.torch import load_file

from cmidd_hf import build_network, evaluate_synthetic, load_image_classification
from cmidd_hf.artifacts.experts import (
    ExpertError,
    ExpertRecipe,
    ExpertTrajectories,
    flat_parameters,
    resolve_experts,
    train_experts,
)
from cmidd_hf.data.transforms import ZCAWhitening
from cmidd_hf.engine.distill import Distiller
from cmidd_hf.hub.synthetic_set import load_synthetic
from cmidd_hf.methods import MTT, MethodConfigError, MethodContext, MTTConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "tiny_mtt_cmi.yaml"
TINY_RECIPE = ExpertRecipe(arch="convnet3_w32", num_experts=2, epochs=2, batch_size=512)  # the fixture's spec


@pytest.fixture(scope="module")
def mnist():
    return load_image_classification("mnist-5k")


@pytest.fixture(scope="module")
def experts(expert_cache) -> ExpertTrajectories:
    return ExpertTrajectories(expert_cache / TINY_RECIPE.cache_key("mnist-5k"))


def make_mtt(mnist, experts, ipc=2, seed=0, dtype=torch.float32, **config) -> MTT:
    config = MTTConfig(**{"experts": "local-dir:unused", "syn_steps": 3, "expert_epochs": 1, "max_start_epoch": 2,
                          "lr_img": 100.0, **config})
    config.validate()
    method = MTT(config, MethodContext(real=mnist.train, ipc=ipc, seed=seed, precision="fp32",
                                       augmentation=config.augmentation("mnist-5k"),
                                       artifacts={"experts": experts}))
    method.student.to(dtype)
    method.syn_lr.data = method.syn_lr.data.to(dtype)
    return method


# ------------------------------------------------------------------------------------------ experts


def test_experts_hold_every_epoch_from_the_seeded_initialization(experts, mnist):
    assert experts.num_experts == 2 and experts.epochs == 2 and experts.arch == "convnet3_w32"
    trajectory = load_file(str(experts.folder / "expert-0001.safetensors"))["trajectory"]
    assert trajectory.shape == (3, experts.index["num_params"])
    torch.manual_seed(1)  # expert 1 = seed 1: its first snapshot is a fresh network of that seed
    assert torch.equal(trajectory[0], flat_parameters(build_network("convnet3_w32", 10, 1, (28, 28))))
    assert not torch.equal(trajectory[1], trajectory[0]) and not torch.equal(trajectory[2], trajectory[1])
    assert torch.equal(experts.snapshots(1, (2, 0)), trajectory[[2, 0]])
    record = experts.index["experts"][1]
    assert record["seed"] == 1 and 0.5 < record["test_accuracy"] <= 1.0
    assert experts.index["recipe"]["augmentation"] == "auto"
    assert "| 1 | 1 |" in (experts.folder / "README.md").read_text()


def test_expert_training_resumes_at_the_next_expert_and_refuses_another_recipe(mnist, tmp_path):
    small = mnist.train.subset(torch.arange(600))
    data = type(mnist)(mnist.name, small, mnist.test.subset(torch.arange(100)), None, mnist.class_names, mnist.mean,
                       mnist.std)
    recipe = ExpertRecipe(num_experts=2, epochs=1, batch_size=256)
    seen = []
    with pytest.raises(KeyboardInterrupt):
        train_experts(recipe, data, tmp_path, "mnist-5k", compile=False, progress=False,
                      on_expert=lambda i, acc: seen.append(i) or (_ for _ in ()).throw(KeyboardInterrupt()))
    assert seen == [0] and (tmp_path / "expert-0000.safetensors").is_file()
    with pytest.raises(ExpertError, match="not a finished set"):
        ExpertTrajectories(tmp_path)
    first = (tmp_path / "expert-0000.safetensors").stat().st_mtime_ns
    train_experts(recipe, data, tmp_path, "mnist-5k", compile=False, progress=False,
                  on_expert=lambda i, acc: seen.append(i))
    assert seen == [0, 1] and (tmp_path / "expert-0000.safetensors").stat().st_mtime_ns == first
    assert ExpertTrajectories(tmp_path).num_experts == 2
    with pytest.raises(ExpertError, match="another recipe"):
        train_experts(ExpertRecipe(num_experts=2, epochs=2), data, tmp_path, "mnist-5k", progress=False)


@pytest.mark.parametrize("compile", [False, True])
def test_the_runs_compile_setting_reaches_expert_training(mnist, tmp_path, monkeypatch, compile):
    """--compile false (e.g. no C++ compiler for inductor) must hold for the experts a train: spec trains too."""
    import cmidd_hf.artifacts.experts as experts_module

    seen = []

    def spy(recipe, data, folder, dataset_id, compile=True, **kwargs):
        seen.append(compile)
        raise KeyboardInterrupt  # nothing to train: only the setting is checked

    monkeypatch.setattr(experts_module, "train_experts", spy)
    config = MTTConfig(experts={"train": {"num_experts": 1, "epochs": 1}}, expert_cache_dir=str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        MTT.resolve_artifacts(config, mnist, progress=False, compile=compile)
    assert seen == [compile]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_train_experts_script_logs_each_expert_resumes_and_pushes_what_the_resolver_loads(
        tmp_path, fake_hub, monkeypatch, caplog, capsys, mnist):
    script = load_script("train_experts")
    out = tmp_path / "experts"
    argv = ["--dataset", "mnist-5k", "--arch", "convnet3_w32", "--num_experts", "2", "--epochs", "1",
            "--batch_size", "1024", "--no_compile", "--output_dir", str(out)]
    assert script.main(["--num_experts", "0", "--output_dir", str(out)]) == 2  # before any work
    assert "num_experts >= 1" in capsys.readouterr().err and not out.exists()
    with caplog.at_level(logging.INFO, logger="cmidd_hf"):
        assert script.main(argv) == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("expert ")]
    assert [line.split(":")[0] for line in lines] == ["expert 1/2", "expert 2/2"]
    assert f"experts: local-dir:{out}" in capsys.readouterr().out
    first = (out / "expert-0001.safetensors").stat().st_mtime_ns
    assert script.main(argv) == 0 and (out / "expert-0001.safetensors").stat().st_mtime_ns == first  # kept
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)  # the push path checks it
    assert script.main([*argv, "--push_to_hub", "org/mnist-experts"]) == 0
    (commit,) = fake_hub.commits
    assert commit["files"] == ["README.md", "expert-0000.safetensors", "expert-0001.safetensors", "experts.json"]
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    pulled = resolve_experts("hf-hub:org/mnist-experts", mnist, tmp_path / "unused", "mnist-5k")
    assert torch.equal(pulled.snapshots(1, (0, 1)), ExpertTrajectories(out).snapshots(1, (0, 1)))


def test_zca_matches_kornia_and_is_saved_with_the_experts(mnist, tmp_path):
    import kornia

    images = mnist.train.images(torch.arange(len(mnist.train)))
    zca = ZCAWhitening.fit(images)
    reference = kornia.enhance.ZCAWhitening(eps=0.1, compute_inv=True).fit(images)
    x = mnist.test.images(torch.arange(8))
    assert torch.allclose(zca(x), reference(x), atol=1e-6)
    assert torch.allclose(zca.inverse(zca(x)), x, atol=1e-3)
    zca.save(tmp_path)
    loaded = ZCAWhitening.load(tmp_path)
    assert loaded.sha256 == zca.sha256 and torch.equal(loaded(x), zca(x))
    whitened = mnist.with_transform(zca)
    assert torch.equal(whitened.test.images(torch.arange(8)), zca(x))
    assert torch.allclose(whitened.test.denormalize(zca(x)), mnist.test.denormalize(x), atol=1e-3)


# ------------------------------------------------------------------------------------------ the loss


def test_plan_draws_start_epochs_below_the_maximum_and_pops_chunks_from_the_end(mnist, experts):
    method = make_mtt(mnist, experts, syn_steps=5, batch_syn=8, max_start_epoch=2, dsa_strategy="none")
    starts = {method.plan(step, 0, (28, 28)).start for step in range(40)}
    assert starts == {0, 1}
    plan, again = method.plan(3, 1, (28, 28)), method.plan(3, 1, (28, 28))
    assert (plan.expert, plan.start) == (again.expert, again.start)
    assert all(torch.equal(a, b) for a, b in zip(plan.batches, again.batches, strict=True))
    from cmidd_hf.engine.seeding import generator

    g = generator(0, "mtt", 3, 1)
    torch.randint(2, (1,), generator=g), torch.randint(2, (1,), generator=g)
    order = torch.randperm(20, generator=g).split(8)  # 20 images, chunks of 8, 8, 4: popped 4, 8, 8
    assert [b.tolist() for b in plan.batches[:3]] == [order[2].tolist(), order[1].tolist(), order[0].tolist()]
    assert len(plan.batches[3]) == 4  # a new permutation once the chunks run out


def test_one_step_loss_matches_a_hand_written_parameter_update(mnist, experts):
    method = make_mtt(mnist, experts, syn_steps=1, dsa_strategy="none")
    synthetic = method.init_synthetic()
    images, labels = synthetic.decode()
    plan = method.plan(0, 0, (28, 28))
    start, target = experts.snapshots(plan.expert, (plan.start, plan.start + 1))
    net = build_network("convnet3_w32", 10, 1, (28, 28))
    offset = 0
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(start[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
    loss = F.cross_entropy(net(images.detach()[plan.batches[0]]), labels[plan.batches[0]])
    grads = torch.autograd.grad(loss, list(net.parameters()))
    updated = start - 0.01 * torch.cat([g.reshape(-1) for g in grads])
    expected = ((updated - target) ** 2).sum() / ((start - target) ** 2).sum()
    loss = method.trajectory_loss(images, labels, plan).detach()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("augment", ["none", "color_crop_cutout"])
def test_recomputed_gradient_equals_the_unrolled_gradient(mnist, experts, augment):
    """The memory-bounded reverse sweep against autograd through the whole unrolled student (float64)."""
    grads = {}
    for mode in ("unrolled", "recompute"):
        method = make_mtt(mnist, experts, dtype=torch.float64, syn_steps=4, batch_syn=12, gradient=mode,
                          dsa_strategy=augment)
        images = method.init_synthetic().images.detach().double().requires_grad_(True)
        labels = torch.arange(10).repeat_interleave(2)
        loss = method.trajectory_loss(images, labels, method.plan(1, 0, (28, 28)))
        (3.0 * loss).backward()  # an outer weight, as λ-weighted sums in the engine
        grads[mode] = (float(loss.detach()), images.grad.clone(), method.syn_lr.grad.clone())
    (value_u, images_u, lr_u), (value_r, images_r, lr_r) = grads["unrolled"], grads["recompute"]
    assert value_r == pytest.approx(value_u, rel=1e-12)
    assert images_u.abs().max() > 0 and lr_u.abs() > 0
    torch.testing.assert_close(images_r, images_u, rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(lr_r, lr_u, rtol=1e-9, atol=1e-14)


def test_data_parallel_units_give_the_gradient_of_the_summed_loss(mnist, experts, tmp_path):
    """Sharding.DATA: units backpropagated alone and summed == one backward of the mean over trajectories."""
    method = make_mtt(mnist, experts, trajectories=3, dsa_strategy="none")
    synthetic = method.init_synthetic()
    distiller = Distiller(Accelerator(cpu=True), method, synthetic, None, 1, tmp_path, {}, progress=False)
    values, rows = distiller._unit_gradients(0, 0)
    assert rows.shape == (3, synthetic.images.numel() + 1) and bool((rows.abs().sum(1) > 0).all())
    loss = method.losses(synthetic, [0, 1, 2], 0, 0)["matching_loss"]
    reference = torch.autograd.grad(loss, [synthetic.images, method.syn_lr])
    torch.testing.assert_close(rows.sum(0)[:-1].view_as(synthetic.images), reference[0], rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(rows.sum(0)[-1], reference[1], rtol=1e-5, atol=1e-9)
    assert values["matching_loss"] == pytest.approx(float(loss.detach()), rel=1e-6)


# ------------------------------------------------------------------------------------------ runs


def run_mtt(mnist, experts, out, iterations, interrupt=None):
    method = make_mtt(mnist, experts, trajectories=2, syn_steps=2)
    if interrupt is not None:
        losses = method.losses

        def wrapped(synthetic, units, step, substep):
            if step == interrupt:
                os.kill(os.getpid(), signal.SIGTERM)
            return losses(synthetic, units, step, substep)

        method.losses = wrapped
    return Distiller(Accelerator(cpu=True), method, method.init_synthetic(), None, iterations, out,
                     {"method": "mtt"}, checkpoint_every=1, progress=False)


def test_interrupted_run_resumes_bit_identically_with_the_learned_step_size(mnist, experts, tmp_path):
    straight = run_mtt(mnist, experts, tmp_path / "a", 3)
    straight.run()
    first = run_mtt(mnist, experts, tmp_path / "b", 3, interrupt=2)
    with pytest.raises(KeyboardInterrupt):
        first.run()
    resumed = run_mtt(mnist, experts, tmp_path / "b", 3)
    assert torch.equal(resumed.method.syn_lr.detach(), torch.tensor(0.01))  # fresh, before loading
    resumed.run(resume_from_checkpoint="latest")
    assert torch.equal(straight.synthetic.images, resumed.synthetic.images)
    assert abs(float(straight.method.syn_lr) - 0.01) > 1e-5  # it learned
    assert torch.equal(straight.method.syn_lr, resumed.method.syn_lr)
    assert resumed.method.evaluation_overrides() == {"lr": float(straight.method.syn_lr)}


@pytest.mark.slow
def test_short_run_beats_its_initial_set(mnist, experts, tmp_path):
    method = make_mtt(mnist, experts, ipc=1, syn_steps=5, lr_img=1000.0, trajectories=1)
    synthetic = method.init_synthetic()
    initial = synthetic.images.detach().clone()
    # 10 iterations: 56.3 -> 76.9 % on ConvNet-3s (lr_img 100: -> 64.1 %), CPU A; 56.9 -> 72.1 % on the
    # ConvNetW32s evaluated here, CPU D
    Distiller(Accelerator(cpu=True), method, synthetic, None, 10, tmp_path, {}, progress=False).run()
    options = dict(protocol="dc", epochs=50, runs=2, compile=False, precision="fp32", progress=False,
                   arch="convnet3_w32")
    lr = method.evaluation_overrides()["lr"]
    from cmidd_hf.evaluation.protocols import get_protocol

    before = evaluate_synthetic(initial, synthetic.labels, mnist.test, **{**options, "protocol": get_protocol("dc")})
    after = evaluate_synthetic(synthetic.images.detach(), synthetic.labels, mnist.test,
                               **{**options, "protocol": get_protocol("dc", lr=lr)})
    assert after.mean > before.mean + 0.05, (before, after)


# ------------------------------------------------------------------------------------------ the recipe


def recipe(tmp_path, proxy_cache, expert_cache, capsys, *extra) -> subprocess.CompletedProcess:
    """``recipes/distill_mtt.py`` run in this process (its ``main_entry``: exit code, one-line errors), so each
    call does not pay a fresh interpreter's imports; the 1-vs-2-process test runs the script itself."""
    from cmidd_hf.cli.runner import main_entry

    argv = ["--config", str(TINY), "--output_dir", str(tmp_path / "out"), "--proxy_cache_dir", str(proxy_cache),
            "--expert_cache_dir", str(expert_cache), "--run_name", "r", *extra]
    capsys.readouterr()
    code = main_entry(argv, None, method="mtt")
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, captured.out, captured.err)


@pytest.mark.parametrize("extra, message", [
    (["--syn_steps", "0"], "syn_steps=0: must be >= 1"),
    (["--expert_epochs", "3"], "need expert epoch 4 but the experts have 2"),
    (["--zca", "true"], "zca=True but the experts train: spec has zca=False"),
    (["--experts", "local-dir:/nonexistent/experts"], "no such folder"),
    (["--experts", "hf-hub:org/absent-experts"], "could not be downloaded"),
    (["--experts", "some-name"], "name the expert trajectories as local-dir:/path or hf-hub:org/name"),
])
def test_bad_inputs_are_one_line_and_exit_2_before_any_work(tmp_path, proxy_cache, expert_cache, extra, message,
                                                            capsys, monkeypatch):
    from cmidd_hf.cli.runner import main_entry

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    argv = ["--config", str(TINY), "--output_dir", str(tmp_path / "out"), "--proxy_cache_dir", str(proxy_cache),
            "--expert_cache_dir", str(expert_cache), *extra]
    assert main_entry(argv, None, method="mtt") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert message in lines[-1] and lines[-1].startswith("error: ")
    assert not (tmp_path / "out").exists()


def test_corrupt_or_mismatched_experts_are_refused(tmp_path, proxy_cache, expert_cache, experts, mnist, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(experts.folder, broken)
    (broken / "expert-0001.safetensors").unlink()
    result = recipe(tmp_path, proxy_cache, expert_cache, capsys, "--experts", f"local-dir:{broken}")
    assert result.returncode == 2 and "expert-0001.safetensors is missing" in result.stderr.splitlines()[-1]
    (broken / "experts.json").write_text("{not json")
    result = recipe(tmp_path, proxy_cache, expert_cache, capsys, "--experts", f"local-dir:{broken}")
    assert result.returncode == 2 and "no readable experts.json" in result.stderr.splitlines()[-1]
    shutil.copytree(experts.folder, tmp_path / "zca", dirs_exist_ok=True)
    index = json.loads((tmp_path / "zca" / "experts.json").read_text())
    ZCAWhitening.fit(mnist.train.images(torch.arange(500))).save(tmp_path / "zca")
    index["zca"] = {"type": "zca"}
    (tmp_path / "zca" / "experts.json").write_text(json.dumps(index))
    result = recipe(tmp_path, proxy_cache, expert_cache, capsys, "--experts", f"local-dir:{tmp_path / 'zca'}")
    assert result.returncode == 2
    assert "zca=False but the experts were trained on ZCA-whitened images" in result.stderr.splitlines()[-1]


def test_a_resume_with_other_experts_is_refused_before_anything_is_written(tmp_path, proxy_cache, expert_cache,
                                                                           experts, capsys):
    """The experts shaped the set: a resume whose folder now holds other ones (here one expert's record changed
    in place) stops with one line naming them, and the run folder is left as it was."""
    import shutil

    folder = tmp_path / "experts"
    shutil.copytree(experts.folder, folder)
    spec = ["--experts", f"local-dir:{folder}"]
    assert recipe(tmp_path, proxy_cache, expert_cache, capsys, *spec, "--iterations", "2").returncode == 0
    index = json.loads((folder / "experts.json").read_text())
    index["experts"][0]["test_accuracy"] = 0.5
    (folder / "experts.json").write_text(json.dumps(index))
    run = tmp_path / "out" / "r"
    before = {path: path.read_bytes() for path in run.rglob("*") if path.is_file()}
    result = recipe(tmp_path, proxy_cache, expert_cache, capsys, *spec, "--resume_from_checkpoint", "latest")
    assert result.returncode == 2
    error = result.stderr.strip()
    assert error.startswith("error: cannot resume") and "artifacts: checkpoint {'experts'" in error
    assert "\n" not in error
    assert {path: path.read_bytes() for path in run.rglob("*") if path.is_file()} == before


def test_refusals_without_data():
    for bad, message in (({"trajectories": 0}, "trajectories=0"), ({"batch_syn": 0}, "batch_syn=0"),
                         ({"lr_lr": 0.0}, "lr_lr=0.0"), ({"gradient": "tesla"}, "gradient='tesla'"),
                         ({"experts": {"train": {"epochs": 0}}}, "epochs >= 1"),
                         ({"experts": {"pretrained": {}}}, "must be {train:")):
        with pytest.raises(MethodConfigError, match=message):
            MTTConfig(**{"experts": "local-dir:x", **bad}).validate()


@pytest.mark.slow
def test_zca_run_saves_the_transform_and_the_learned_lr_is_replayed(tmp_path, proxy_cache, mnist, capsys):
    """Experts trained on ZCA-whitened images: the set lives in their space, carries their zca.safetensors,
    and evaluate_synthetic.py whitens the test data and trains with the set's learned lr."""
    zca_cache = tmp_path / "experts"
    result = recipe(tmp_path, proxy_cache, zca_cache, capsys, "--zca", "true", "--experts",
                    "{train: {arch: convnet3_w32, num_experts: 1, epochs: 1, batch_size: 512, zca: true}}",
                    "--iterations", "2", "--trajectories", "1", "--max_start_epoch", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    (folder,) = [p for p in zca_cache.iterdir() if p.is_dir()]  # beside the cache lock file
    experts = ExpertTrajectories(folder)
    synthetic = load_synthetic(str(tmp_path / "out" / "r"))
    assert synthetic.transform is not None and synthetic.transform.sha256 == experts.transform.sha256
    assert synthetic.distillation["transform"]["sha256"] == experts.transform.sha256
    lr = synthetic.distillation["evaluation"]["overrides"]["lr"]
    assert lr != 0.01 and synthetic.distillation["method_config"]["learned_lr"] == pytest.approx(lr)
    assert load_script("evaluate_synthetic").main([str(tmp_path / "out" / "r"), "--epochs", "2", "--runs", "1",
                                                   "--no_compile"]) == 0
    evaluated = capsys.readouterr().out
    assert f"lr {lr:.6g} (learned by the method)" in evaluated
    assert "test data ZCA-whitened with the set's transform" in evaluated
