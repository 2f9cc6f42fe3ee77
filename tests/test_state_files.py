"""Checkpointed objects as safetensors: exact round trips, refusals, and checkpoints that unpickle nothing."""

import math
import shutil

import pytest
import torch
from accelerate import Accelerator

from cmidd_hf import load_image_classification
from cmidd_hf.engine.distill import Distiller, ResumeError
from cmidd_hf.engine.parametrization import PixelParametrization
from cmidd_hf.engine.state_files import load_state_file, save_state_file
from cmidd_hf.methods import DistributionMatching, DMConfig, MethodContext


def same(a, b):
    """Equal trees with equal types: tuples stay tuples, int keys stay ints, tensors keep dtype and bits."""
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def test_a_state_tree_round_trips_exactly(tmp_path):
    generator = torch.Generator().manual_seed(0)
    state = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3, generator=generator)},
                  7: {"momentum_buffer": torch.randn(4, generator=generator).to(torch.bfloat16)}},
        "param_groups": [{"lr": 0.1 + 0.2, "betas": (0.9, 0.999), "params": [0, 7], "foreach": None,
                          "nesterov": False, "eps": 1e-8}],
        "tagged": {"__tensor__": "a user's own key"},
        "floats": [math.inf, -math.inf, math.nan, 5e-324],
        "empty": {}, "nested": [(1, "a"), []], "shared": [torch.arange(6)[:3], torch.arange(6)[3:]],
    }
    save_state_file(state, tmp_path / "s.safetensors")
    assert same(state, load_state_file(tmp_path / "s.safetensors"))


def test_what_cannot_be_saved_safely_is_refused_by_path(tmp_path):
    with pytest.raises(TypeError, match=r"state\.pool\[1\]: object cannot be checkpointed"):
        save_state_file({"pool": [1, object()]}, tmp_path / "s.safetensors")
    with pytest.raises(TypeError, match="dict keys must be str or int"):
        save_state_file({"a": {(1, 2): 3}}, tmp_path / "s.safetensors")
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="is not a checkpointed state"):
        load_state_file(tmp_path / "plain.safetensors")


@pytest.fixture(scope="module")
def mnist():
    return load_image_classification("mnist-5k")


def distiller(mnist, out, iterations):
    method = DistributionMatching(DMConfig(batch_real=8), MethodContext(real=mnist.train, ipc=2, seed=1,
                                                                        precision="fp32"))
    return Distiller(Accelerator(cpu=True), method, PixelParametrization.from_real(mnist.train, 2, seed=1), None,
                     iterations, output_dir=out, checkpoint_every=2, progress=False,
                     fingerprint={"dataset": "mnist-5k", "ipc": 2, "method": "dm"})


def test_checkpoints_hold_safetensors_and_resume_without_unpickling_them(mnist, tmp_path, monkeypatch):
    straight = distiller(mnist, tmp_path / "a", 4)
    straight.run()
    distiller(mnist, tmp_path / "b", 2).run()
    checkpoint = tmp_path / "b" / "checkpoints" / "step_000002"
    assert {p.name for p in checkpoint.glob("*.safetensors")} == {
        "synthetic.safetensors", "optimizer.safetensors", "run_state.safetensors", "method.safetensors"}
    assert [p.name for p in checkpoint.glob("*.pkl")] == ["random_states_0.pkl"]  # Accelerate's, weights-only
    unpickled = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: unpickled.append(str(f)) or real_load(f, *a, **k))
    resumed = distiller(mnist, tmp_path / "b", 4)
    resumed.run(resume_from_checkpoint="latest")
    assert all("random_states" in str(name) for name in unpickled)
    assert torch.equal(straight.synthetic.images, resumed.synthetic.images)


def test_a_checkpoint_from_before_the_safetensors_files_still_resumes_exactly(mnist, tmp_path):
    """Accelerate's custom_checkpoint_<i>.pkl (the committed partial runs): rewritten as safetensors, then resumed."""
    straight = distiller(mnist, tmp_path / "a", 4)
    straight.run()
    distiller(mnist, tmp_path / "b", 2).run()
    checkpoint = tmp_path / "b" / "checkpoints" / "step_000002"
    for index, name in enumerate(["synthetic", "optimizer", "run_state", "method"]):
        torch.save(load_state_file(checkpoint / f"{name}.safetensors"), checkpoint / f"custom_checkpoint_{index}.pkl")
        (checkpoint / f"{name}.safetensors").unlink()
    resumed = distiller(mnist, tmp_path / "b", 4)
    resumed.run(resume_from_checkpoint="latest")
    assert torch.equal(straight.synthetic.images, resumed.synthetic.images)
    assert not list(checkpoint.glob("custom_checkpoint_*")) and (checkpoint / "method.safetensors").exists()

    shutil.copytree(tmp_path / "a" / "checkpoints" / "step_000002", tmp_path / "c" / "checkpoints" / "step_000002")
    (tmp_path / "c" / "checkpoints" / "step_000002" / "optimizer.safetensors").unlink()
    incomplete = distiller(mnist, tmp_path / "c", 4)
    with pytest.raises(ResumeError, match="has no optimizer.safetensors: it is incomplete"):
        incomplete.run(resume_from_checkpoint="latest")
    assert incomplete.state.step == 0  # nothing was loaded from it
    assert torch.equal(incomplete.synthetic.images, PixelParametrization.from_real(mnist.train, 2, seed=1).images)
