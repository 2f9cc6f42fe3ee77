"""Precision selection: 'auto' picks bf16 only where the device computes it natively."""

import logging

import pytest
import torch

from cmidd_hf import evaluate_synthetic, load_image_classification
from cmidd_hf.engine import precision as precision_module
from cmidd_hf.engine.precision import autocast, has_native_bf16, resolve_precision
from cmidd_hf.evaluation.protocols import get_protocol
from cmidd_hf.evaluation.trainer import NetworkTrainer
from cmidd_hf.methods import DC, DCConfig, DistributionMatching, DMConfig, MethodContext


@pytest.fixture(scope="module")
def mnist_small():
    return load_image_classification("mnist-5k")


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Pretend the CPU has (True) or lacks (False) native bf16."""

    def set_native(native: bool) -> None:
        for variable in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"):
            monkeypatch.delenv(variable, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        monkeypatch.setattr(precision_module, "_warned", set())

    return set_native


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_follows_native_bf16(cpu_bf16, native, expected):
    cpu_bf16(native)
    assert has_native_bf16("cpu") is native
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("fp32", "cpu") == "fp32"


def test_amx_counts_as_native(monkeypatch):
    for variable in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert resolve_precision("auto", torch.device("cpu")) == "bf16"


@pytest.mark.parametrize("variable, value", [("ONEDNN_MAX_CPU_ISA", "AVX2"), ("DNNL_MAX_CPU_ISA", "avx512_core"),
                                             ("ATEN_CPU_CAPABILITY", "avx2")])
def test_an_isa_capped_below_bf16_is_not_native(cpu_bf16, monkeypatch, variable, value):
    """Capping the kernels' ISA (how an AVX2-only CPU is emulated on a newer one) makes 'auto' pick fp32."""
    cpu_bf16(True)
    monkeypatch.setenv(variable, value)
    assert resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setenv(variable, "AVX512_CORE_AMX" if variable != "ATEN_CPU_CAPABILITY" else "avx512")
    assert resolve_precision("auto", "cpu") == "bf16"


def test_an_avx2_cap_on_an_avx512_cpu_asks_for_a_matching_compile_march(cpu_bf16, monkeypatch, caplog):
    """ATEN_CPU_CAPABILITY=avx2 alone makes torch.compile mix AVX2 kernels with -march=native (NaN on Zen 4):
    one warning naming the variable that fixes it, none once it is set or where the CPU has no AVX-512."""
    cpu_bf16(True)
    monkeypatch.delenv("TORCHINDUCTOR_CPP_MARCH", raising=False)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setattr(torch.cpu, "_is_avx512_supported", lambda: True)
    with caplog.at_level(logging.WARNING, logger="cmidd_hf.engine.precision"):
        resolve_precision("auto", "cpu")
        resolve_precision("auto", "cpu")
    assert [r.getMessage().count("TORCHINDUCTOR_CPP_MARCH=x86-64-v3") for r in caplog.records] == [1]
    for avx512, march in ((True, "x86-64-v3"), (False, None)):
        caplog.clear()
        monkeypatch.setattr(precision_module, "_warned", set())
        monkeypatch.setattr(torch.cpu, "_is_avx512_supported", lambda avx512=avx512: avx512)
        if march:
            monkeypatch.setenv("TORCHINDUCTOR_CPP_MARCH", march)
        else:
            monkeypatch.delenv("TORCHINDUCTOR_CPP_MARCH", raising=False)
        with caplog.at_level(logging.WARNING, logger="cmidd_hf.engine.precision"):
            resolve_precision("auto", "cpu")
        assert not caplog.records


def test_emulated_bf16_is_honoured_with_one_warning(cpu_bf16, caplog):
    cpu_bf16(False)
    with caplog.at_level(logging.WARNING, logger="cmidd_hf.engine.precision"):
        assert resolve_precision("bf16", "cpu") == "bf16"
        assert resolve_precision("bf16", "cpu") == "bf16"
    warnings = [r for r in caplog.records if "emulated" in r.getMessage()]
    assert len(warnings) == 1 and "precision='auto'" in warnings[0].getMessage()


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of 'auto', 'bf16', 'fp32', got 'fp16'"):
        resolve_precision("fp16", "cpu")


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_autocast_runs_matmuls_in_the_resolved_precision(precision, dtype):
    layer = torch.nn.Linear(4, 3)
    with autocast("cpu", precision):
        assert layer(torch.randn(2, 4)).dtype == dtype


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_trainer_and_dm_resolve_auto(cpu_bf16, mnist_small, native, expected):
    cpu_bf16(native)
    trainer = NetworkTrainer("convnet3", 10, (1, 28, 28), get_protocol("dsa", epochs=1), "cpu")
    assert trainer.precision == expected
    context = MethodContext(real=mnist_small.train, ipc=1)
    assert DistributionMatching(DMConfig(batch_real=4), context).precision == expected
    assert DC(DCConfig(batch_real=4, bn_real_per_class=4), context).precision == expected


def test_evaluation_result_records_the_precision_used(mnist_small):
    pos = mnist_small.train.balanced_subset(2, torch.Generator().manual_seed(0))
    images, labels = mnist_small.train.images(pos), mnist_small.train.labels[pos]
    result = evaluate_synthetic(images, labels, mnist_small.test, runs=1, epochs=1, precision="fp32",
                                compile=False, progress=False)
    assert result.precision == "fp32" and result.to_dict()["precision"] == "fp32"
    auto = evaluate_synthetic(images, labels, mnist_small.test, runs=1, epochs=1, compile=False, progress=False)
    assert auto.precision == resolve_precision("auto", "cpu")
