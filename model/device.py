"""Where and in what precision the networks run."""

from __future__ import annotations

import contextlib

import torch


def pick_device(setting: str = "auto") -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for, but torch sees no CUDA device")
    return torch.device(setting)


def cpu_has_fast_bf16() -> bool:
    """AVX-512 BF16 or AMX: bf16 convolutions run several times faster than fp32. Without them (plain
    AVX2) oneDNN emulates bf16 and it runs several times slower, so fp32 is the fast path there."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def pick_precision(device: torch.device, setting: str = "auto") -> torch.dtype:
    """The autocast dtype: bf16 where the hardware runs it fast, fp16 on GPUs without bf16, else fp32."""
    if setting == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[setting]


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
