"""The distillation engine and DM: learning, exact resume, refusals, checkpoints, NaN stop, process invariance."""

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from accelerate import Accelerator

from cmidd_hf import CMIRegularizer, load_image_classification
from cmidd_hf.data.hub_layout import load_folder
from cmidd_hf.engine.distill import Distiller, NonFiniteLossError, ResumeError, check_compatible
from cmidd_hf.engine.errors import ConfigError
from cmidd_hf.engine.parametrization import PixelParametrization
from cmidd_hf.methods import DistributionMatching, DMConfig, MethodContext, Sharding

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "tiny_dm_cmi.yaml"


@pytest.fixture(scope="module")
def mnist():
    return load_image_classification("mnist-5k")


def make_dm(mnist, batch_real=8, seed=1, arch="convnet3", strategy="color_crop_cutout_scale_rotate", **context):
    config = DMConfig(batch_real=batch_real, net_arch=arch)
    return DistributionMatching(config, MethodContext(real=mnist.train, ipc=2, seed=seed, precision="fp32",
                                                      augmentation=strategy, **context))


def make_distiller(mnist, out, iterations=6, method=None, regularizer=None, **kwargs):
    method = method or make_dm(mnist)
    synthetic = PixelParametrization.from_real(mnist.train, 2, seed=1)
    fingerprint = {"dataset": "mnist-5k", "ipc": 2, "method": "dm", "image_shape": [1, 28, 28]}
    return Distiller(Accelerator(cpu=True), method, synthetic, regularizer, iterations, output_dir=out,
                     fingerprint=fingerprint, progress=False, **kwargs)


def records(folder):
    return [json.loads(line) for line in (Path(folder) / "metrics.jsonl").read_text().splitlines()]


def test_dm_loss_decreases_and_images_move(mnist, tmp_path):
    distiller = make_distiller(mnist, tmp_path, iterations=8)
    start = distiller.synthetic.images.detach().clone()

    def step0_loss():
        distiller.method.begin_iteration(distiller.synthetic, 0)
        return float(distiller.method.matching_loss(distiller.synthetic, range(10), 0).detach())

    first = step0_loss()
    distiller.run()
    assert step0_loss() < first  # same step-0 network, real batch and augmentation: the matching loss went down
    assert not torch.equal(start, distiller.synthetic.images.detach())
    logged = records(tmp_path)
    assert [r["step"] for r in logged] == list(range(1, 9))
    assert all({"loss", "matching_loss", "seconds"} <= set(r) for r in logged)


def test_dm_network_reinitialized_in_place_from_seed(mnist):
    method = make_dm(mnist, batch_real=4, seed=3)
    conv = method.net.features[0]
    identity = id(conv.weight)
    method.begin_iteration(None, 5)
    w5 = conv.weight.detach().clone()
    method.begin_iteration(None, 6)
    assert not torch.equal(w5, conv.weight)
    method.begin_iteration(None, 5)
    assert torch.equal(w5, conv.weight) and id(conv.weight) == identity
    assert not any(p.requires_grad for p in method.net.parameters())


def test_dm_per_class_losses_add_up(mnist):
    method = make_dm(mnist, batch_real=4, seed=0)
    synthetic = PixelParametrization.from_real(mnist.train, 2, 0)
    method.begin_iteration(synthetic, 3)
    whole = method.matching_loss(synthetic, range(10), step=3)
    parts = method.matching_loss(synthetic, range(5), step=3) + method.matching_loss(synthetic, range(5, 10), step=3)
    assert torch.allclose(whole, parts, rtol=1e-5)


def test_bn_network_couples_classes(mnist):
    assert make_dm(mnist, arch="convnet3_bn", batch_real=4).sharding == Sharding.REPLICATED
    assert make_dm(mnist, batch_real=4).sharding == Sharding.CLASS


def test_interrupted_and_resumed_equals_uninterrupted(mnist, tmp_path):
    straight = make_distiller(mnist, tmp_path / "a", iterations=6, checkpoint_every=2)
    straight.run()

    first = make_distiller(mnist, tmp_path / "b", iterations=6, checkpoint_every=100)
    interrupt_at(first.method, step=2, substep=0)
    with pytest.raises(KeyboardInterrupt):
        first.run()
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["step_000003"]
    resumed = make_distiller(mnist, tmp_path / "b", iterations=6, checkpoint_every=100)
    resumed.run(resume_from_checkpoint="latest")
    assert torch.equal(straight.synthetic.images, resumed.synthetic.images)
    assert [r["step"] for r in records(tmp_path / "b")] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("key, value", [("ipc", 5), ("dataset", "cifar10"), ("method", "dsa"),
                                        ("image_shape", [1, 32, 32])])
def test_resume_refuses_a_different_configuration(mnist, tmp_path, key, value):
    make_distiller(mnist, tmp_path, iterations=2, checkpoint_every=2).run()
    other = make_distiller(mnist, tmp_path, iterations=4)
    saved = dict(other.state.fingerprint)
    other.state.fingerprint[key] = value
    with pytest.raises(ResumeError, match=re.escape(f"{key}: checkpoint {saved[key]!r} vs now {value!r}")):
        other.run(resume_from_checkpoint="latest")
    assert torch.equal(other.synthetic.images, PixelParametrization.from_real(mnist.train, 2, seed=1).images)
    with pytest.raises(ResumeError, match="holds no checkpoint"):
        make_distiller(mnist, tmp_path / "empty", iterations=2).run(resume_from_checkpoint="latest")


def test_non_finite_loss_stops_with_the_step_and_keeps_the_checkpoint(mnist, tmp_path):
    method = make_dm(mnist)

    def nan_at_3(synthetic, classes, step, substep):
        value = synthetic.images.sum() * 0.0
        return {"matching_loss": value + math.nan if step == 3 else value}

    method.losses = nan_at_3
    distiller = make_distiller(mnist, tmp_path, iterations=6, method=method, checkpoint_every=2)
    with pytest.raises(NonFiniteLossError, match="at step 3.*step_000002"):
        distiller.run()
    assert (tmp_path / "checkpoints" / "step_000002").is_dir()


def test_cmi_regularizer_lowers_the_set_cmi(mnist, tiny_proxies, tmp_path):
    from cmidd_hf.artifacts.proxies import ProxyPool

    pool = ProxyPool.from_pretrained(yaml.safe_load(TINY.read_text())["proxies"][:1], mnist, cache_dir=tiny_proxies)
    with torch.no_grad():  # a proxy that has learned the classes (the session's tiny spec, trained once)
        accuracy = (pool[0](mnist.test.images(torch.arange(len(mnist.test)))).argmax(1) == mnist.test.labels)
    assert accuracy.float().mean() > 0.5
    cmis = {}
    for weight in (0.0, 10000.0):
        reg = CMIRegularizer(list(pool), weight) if weight else None
        d = make_distiller(mnist, tmp_path / str(weight), iterations=10, regularizer=reg)
        d.run()
        probe = CMIRegularizer(list(pool), 1.0)
        cmis[weight] = float(probe.cmi(d.synthetic.images.detach(), d.synthetic.labels, step=0))
        assert ("cmi" in records(tmp_path / str(weight))[-1]) == bool(weight)
    assert cmis[10000.0] < 0.5 * cmis[0.0]


def interrupt_at(method, step, substep):
    """Make ``method`` send SIGTERM to this process at (step, substep): the distiller checkpoints, then stops."""
    losses = method.losses

    def wrapped(synthetic, classes, s, sub):
        if (s, sub) == (step, substep):
            os.kill(os.getpid(), signal.SIGTERM)
        return losses(synthetic, classes, s, sub)

    method.losses = wrapped


def test_checkpoints_are_pruned_and_staged(mnist, tmp_path):
    make_distiller(mnist, tmp_path, iterations=5, checkpoint_every=1, keep_checkpoints=2).run()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000004", "step_000005"]
    # a staging folder left by a crash is replaced, never resumed from
    stale = tmp_path / "checkpoints" / ".staging_step_000006"
    stale.mkdir()
    (stale / "junk").write_text("x")
    d = make_distiller(mnist, tmp_path, iterations=6, checkpoint_every=1, keep_checkpoints=2)
    d.run(resume_from_checkpoint="latest")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000005", "step_000006"]
    assert not (tmp_path / "checkpoints" / "step_000006" / "junk").exists()


def test_check_compatible_names_every_changed_key():
    check_compatible({"ipc": 2, "dataset": "a"}, {"ipc": 2, "dataset": "a"})
    with pytest.raises(ResumeError, match="ipc: checkpoint 2 vs now 3; dataset: checkpoint 'a' vs now 'b'"):
        check_compatible({"ipc": 2, "dataset": "a"}, {"ipc": 3, "dataset": "b"})


def test_more_processes_than_classes_is_refused(mnist, tmp_path, monkeypatch):
    monkeypatch.setattr(Accelerator, "num_processes", property(lambda self: 11))
    with pytest.raises(ConfigError, match="11 processes for 10 classes"):
        make_distiller(mnist, tmp_path)


def test_resumed_metrics_forget_the_old_final_record(mnist, tmp_path):
    d = make_distiller(mnist, tmp_path, iterations=2, checkpoint_every=2)
    d.run()
    d.log_record({"step": 2, "event": "evaluation", "final": True})
    resumed = make_distiller(mnist, tmp_path, iterations=3)
    resumed.run(resume_from_checkpoint="latest")
    assert [(r["step"], r.get("final", False)) for r in records(tmp_path)] == [(1, False), (2, False), (3, False)]


def test_evaluations_follow_eval_every_and_eval_at_across_a_resume(mnist, tmp_path):
    seen = []

    def evaluate(images, labels, step):
        assert images.shape[0] == 20 and not images.requires_grad
        seen.append(step)
        return {"accuracy/convnet3": 0.5}

    first = make_distiller(mnist, tmp_path, iterations=3, checkpoint_every=3, eval_every=4, eval_at=(0, 1, 5, 6, 7),
                           evaluate=evaluate)
    first.run()
    resumed = make_distiller(mnist, tmp_path, iterations=7, eval_every=4, eval_at=(0, 1, 5, 6, 7),
                             evaluate=evaluate)
    resumed.run(resume_from_checkpoint="latest")
    # 0 and 1 (eval_at), 4 (eval_every), 5 and 6 (eval_at); never again 0 on resume, never after the last iteration
    assert seen == [0, 1, 4, 5, 6]
    assert [r["step"] for r in records(tmp_path) if r.get("event") == "evaluation"] == [0, 1, 4, 5, 6]


def test_an_evaluation_cut_off_after_its_checkpoint_is_run_on_resume_and_a_finished_one_is_not(mnist, tmp_path):
    """Killed during the evaluation that follows the step-2 checkpoint: the resumed run owes it (a hole in the
    curve otherwise); resumed from a checkpoint whose evaluation was logged, it is not run twice."""
    seen = []

    def evaluate(images, labels, step):
        seen.append(step)
        if step == 2 and seen.count(2) == 1:
            raise KeyboardInterrupt("killed during the evaluation")
        return {"accuracy/convnet3": float(images.sum())}

    def run(iterations, **kwargs):
        return make_distiller(mnist, tmp_path / "b", iterations=iterations, checkpoint_every=2, eval_every=2,
                              evaluate_at_start=False, evaluate=evaluate, **kwargs)

    with pytest.raises(KeyboardInterrupt):
        run(4).run()
    run(4).run(resume_from_checkpoint="latest")
    assert seen == [2, 2]  # 4 is the last iteration: the runner's final evaluation, not the loop's
    run(6).run(resume_from_checkpoint="latest")  # from step 4, which logged no evaluation, being the last then
    assert seen == [2, 2, 4]
    run(6).run(resume_from_checkpoint="latest")  # from step 6: nothing owed
    assert seen == [2, 2, 4]
    straight = []
    make_distiller(mnist, tmp_path / "a", iterations=6, checkpoint_every=2, eval_every=2, evaluate_at_start=False,
                   evaluate=lambda i, y, step: straight.append(step) or {"accuracy/convnet3": float(i.sum())}).run()
    evaluations = [r for r in records(tmp_path / "b") if r.get("event") == "evaluation"]
    assert evaluations == [r for r in records(tmp_path / "a") if r.get("event") == "evaluation"]
    assert [r["step"] for r in evaluations] == [2, 4]


@pytest.mark.parametrize(("iterations", "kwargs", "expected"), [
    (0, {"eval_every": 1}, []),  # the initial set is the final one: the runner's to evaluate, not twice
    (5, {"eval_every": 2, "evaluate_at_start": False}, [2, 4]),
    (5, {"eval_every": 2, "evaluate_at_start": False, "eval_at": (0,)}, [0, 2, 4]),  # eval_at overrides
    (3, {}, []),
])
def test_the_initial_set_is_evaluated_by_the_same_rule_as_every_iteration(mnist, tmp_path, iterations, kwargs,
                                                                          expected):
    seen = []
    distiller = make_distiller(mnist, tmp_path, iterations=iterations, evaluate=lambda i, y, step: seen.append(step)
                               or {"accuracy/convnet3": 0.5}, **kwargs)
    distiller.run()
    assert seen == expected


# ------------------------------------------------------------------------------------------ the recipe


FIXTURES = {"dm": TINY, **{m: ROOT / "tests" / "fixtures" / f"tiny_{m}_cmi.yaml"
                           for m in ("dc", "dsa", "idc", "idm", "mtt", "sre2l")}}


def free_port() -> int:
    """A port no other test (or parallel test worker) is using for its process group."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_proxies(proxy_cache):
    """The fixtures' proxy spec (the same in all of them) trained once into the session cache, so that runs
    started side by side only read it."""
    from cmidd_hf.artifacts.proxies import ProxyPool

    specs = {json.dumps(yaml.safe_load(path.read_text())["proxies"], sort_keys=True) for path in FIXTURES.values()}
    assert len(specs) == 1
    ProxyPool.from_pretrained(yaml.safe_load(TINY.read_text())["proxies"], load_image_classification("mnist-5k"),
                              cache_dir=proxy_cache)
    return proxy_cache


@pytest.fixture(scope="session")
def one_and_two_process_runs(tiny_proxies, expert_cache, tiny_teacher, tmp_path_factory) -> Path:
    """Every tiny fixture run by one process and by ``accelerate launch`` with two (MULTI_CPU), the two sides
    side by side (their draws never depend on timing); each side runs the methods one after another
    (tests/run_recipes.py). Returns the folder holding ``one/`` and ``two/``."""
    root = tmp_path_factory.mktemp("one-and-two")
    started = []
    for side, launcher in (("one", [sys.executable]),
                           ("two", [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                                    "--num_processes", "2", "--main_process_port", str(free_port())])):
        plan = {method: {"master_port": free_port(),
                         "argv": ["--config", str(config), "--output_dir", str(root / side / method), "--run_name",
                                  "r", "--proxy_cache_dir", str(tiny_proxies), "--threads_per_process", "1",
                                  *{"mtt": ["--expert_cache_dir", str(expert_cache)],
                                    "sre2l": ["--teacher_cache_dir", str(tiny_teacher)]}.get(method, [])]}
                for method, config in FIXTURES.items()}
        (root / f"{side}.json").write_text(json.dumps(plan))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "ACCELERATE_USE_CPU": "1"}
        started.append((side, subprocess.Popen([*launcher, str(ROOT / "tests" / "run_recipes.py"),
                                                str(root / f"{side}.json"), str(root / side / "logs")],
                                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                               cwd=root)))
    for side, process in started:
        output, _ = process.communicate(timeout=1200)
        (root / f"{side}.log").write_text(output)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("method", list(FIXTURES))
def test_one_and_two_processes_give_the_same_synthetic_set(one_and_two_process_runs, method):
    """Bit-identical sets (same threads per process, so the same kernels); final runs split over processes.
    MTT splits its two trajectories and the CMI term over the processes (data-parallel) instead of classes;
    SRe2L gives each process one of its two blocks."""
    root = one_and_two_process_runs
    for side, ranks in (("one", [0]), ("two", [0, 1])):
        for rank in ranks:
            codes = json.loads((root / side / "logs" / f"exit-codes.rank{rank}.json").read_text())
            assert codes[method] == 0, (root / f"{side}.log").read_text()[-3000:]
    assert "accelerate: 2 process(es), MULTI_CPU" in (root / "two" / "logs" / f"{method}.rank0.out").read_text()
    assert "accelerate: 1 process(es)" in (root / "one" / "logs" / f"{method}.rank0.out").read_text()
    # load_folder, not load_dataset: datasets would read both folders (same name, same shape) from one cache
    one, two = (load_folder(root / side / method / "r", split="train").with_format("torch") for side in ("one", "two"))
    assert torch.equal(one["pixel_values"][:], two["pixel_values"][:])
    assert torch.equal(one["label"][:], two["label"][:])
    losses = [[r["loss"] for r in records(root / side / method / "r") if "loss" in r] for side in ("one", "two")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)  # one float32 sum vs two partial sums
    finals = []
    for side in ("one", "two"):
        meta = yaml.safe_load((root / side / method / "r" / "README.md").read_text().split("---")[1])
        block = meta["distillation"]["default"]
        (result,) = block["results"]
        finals.append(result["accuracies"])
        assert block["method"] == method
        assert block["method_config"]["lr_img"] == {"dm": 1.0, "dc": 0.1, "dsa": 0.1, "idc": 0.01, "idm": 0.2,
                                                    "mtt": 100.0, "sre2l": 0.25}[method]
        if method == "dc":
            assert block["augmentation"] is None
        if method == "dsa":
            assert (block["method_config"]["outer_loop"], block["method_config"]["inner_loop"]) == (2, 2)
            assert block["augmentation"] == "color_crop_cutout_scale_rotate"  # digits: no flip
        if method in ("idc", "idm"):
            assert block["parametrization"]["factor"] == 2 and block["parametrization"]["decoded_per_class"] == 8
        if method == "mtt":
            assert block["method_config"]["learned_lr"] == block["evaluation"]["overrides"]["lr"] != 0.01
        runs = 1 if method in ("dm", "mtt") else 2
        assert result["seeds"] == list(range(runs)) and len(result["accuracies"]) == runs
    assert finals[0] == finals[1]  # the same networks, trained by one process or split over two


@pytest.mark.slow
def test_compiled_dm_step_matches_eager(mnist, tmp_path):
    """The default path (compile=True: channels-last, inductor) computes the same DM loss and update."""
    results = {}
    for compiled in (False, True):
        method = make_dm(mnist, compile=compiled)
        distiller = make_distiller(mnist, tmp_path / str(compiled), iterations=2, method=method)
        distiller.run()
        losses = [r["loss"] for r in records(tmp_path / str(compiled))]
        results[compiled] = (distiller.synthetic.images.detach(), losses)
    assert results[True][1] == pytest.approx(results[False][1], rel=1e-4)
    initial = PixelParametrization.from_real(mnist.train, 2, seed=1).images
    update = results[False][0] - initial
    assert update.norm() > 0
    assert (results[True][0] - results[False][0]).norm() < 1e-3 * update.norm()
