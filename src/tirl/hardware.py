"""What this machine computes fast: whether bf16 autocast pays, for the defaults of training and evaluation.

TRL turns bf16 on by default, and on a CPU that is a speed-up only where the CPU has bf16 instructions (AVX512-BF16
or AMX: recent Xeons). Elsewhere (AVX2 CPUs, most AMD EPYCs, laptops) PyTorch emulates bf16 matmuls, and SmolLM2
runs several times slower under autocast than in float32 (docs/benchmarks.md, "Precision on a CPU"). So where
nobody asked for a precision, tirl uses bf16 only on hardware that computes it natively.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 matmul instructions (AVX512-BF16 or AMX tiles).

    torch has no public query for this; `torch.cpu._is_avx512_bf16_supported` and `_is_amx_tile_supported` are its
    own checks (listed in tests/test_trl_compat.py). Where they are missing, the answer is False: float32 is never
    the slow choice by much, bf16 emulation is."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(callable(check) and check() for check in checks)


def fast_bf16(device: str | torch.device | None = None) -> bool:
    """Whether bf16 autocast is the faster choice on `device` (default: CUDA where present, else the CPU): a CUDA GPU
    that supports bf16, or a CPU with native bf16 (`cpu_has_native_bf16`)."""
    kind = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind == "cpu":
        return cpu_has_native_bf16()
    return True  # XPU, NPU, MPS: as TRL defaults


def cpu_info() -> dict:
    """The CPU, as run records and `tirl env` describe it: its model `name` (from /proc/cpuinfo where there is one),
    torch's `capability` level (AVX2, AVX512, ...) and whether it has bf16 instructions (`native_bf16`)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux
        lines = []
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)
    return {"name": name or platform.processor() or platform.machine(), "capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": cpu_has_native_bf16()}


__all__ = ["cpu_has_native_bf16", "cpu_info", "fast_bf16"]
