"""bf16-mixed on CPU: kept where the CPU has native bf16, 32-bit elsewhere, untouched on GPU."""

import logging

from nemo_sew.train import cpu_precision


def test_cpu_bf16_falls_back_without_native_support(caplog):
    kwargs = {"accelerator": "cpu", "precision": "bf16-mixed", "devices": 1}
    with caplog.at_level(logging.WARNING, logger="nemo_sew.train"):
        out = cpu_precision(kwargs, bf16_supported=False)
    assert out["precision"] == "32" and out["devices"] == 1
    assert "no native bf16" in caplog.text
    assert kwargs["precision"] == "bf16-mixed"  # the caller's dict is not changed
    assert cpu_precision(kwargs, bf16_supported=True)["precision"] == "bf16-mixed"


def test_gpu_and_fp32_are_left_alone():
    gpu = {"accelerator": "gpu", "precision": "bf16-mixed"}
    assert cpu_precision(gpu, bf16_supported=False) == gpu
    fp32 = {"accelerator": "cpu", "precision": 32}
    assert cpu_precision(fp32, bf16_supported=False) == fp32


def test_auto_accelerator_without_cuda_counts_as_cpu(monkeypatch):
    import torch

    auto = {"accelerator": "auto", "precision": "bf16-mixed"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cpu_precision(auto, bf16_supported=False)["precision"] == "32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cpu_precision(auto, bf16_supported=False) == auto
