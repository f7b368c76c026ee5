"""enable_flash_attn: selects SDPA kernels on CUDA, and is reported as not applicable on CPU."""

from __future__ import annotations

import logging

import torch
from infermesh_worker.model_runner import attention_backends
from torch.nn.attention import SDPBackend


def test_cpu_reports_flash_attention_as_not_applicable(caplog):
    with caplog.at_level(logging.INFO, logger="infermesh_worker.model_runner"):
        backends = attention_backends(torch.device("cpu"), enable_flash_attn=True)
    assert "enable_flash_attn does not apply on cpu" in caplog.text
    with backends():
        pass
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="infermesh_worker.model_runner"):
        attention_backends(torch.device("cpu"), enable_flash_attn=False)
    assert "enable_flash_attn" not in caplog.text


def test_cuda_kernel_choice_follows_the_option():
    # Building the context needs no GPU; it only records which SDPA backends are allowed.
    with_flash = attention_backends(torch.device("cuda", 0), enable_flash_attn=True)
    without = attention_backends(torch.device("cuda", 0), enable_flash_attn=False)
    assert with_flash.args[0][0] == SDPBackend.FLASH_ATTENTION
    assert SDPBackend.FLASH_ATTENTION not in without.args[0]
