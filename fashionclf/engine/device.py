"""Device, precision and threads: where and how fast the math runs."""

from __future__ import annotations

import contextlib
import os
import sys

import torch

from fashionclf.engine import distributed


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"unknown device {name!r}; valid: auto, cpu, cuda")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
    else:
        ok = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if precision == "bf16" and not ok:
        raise ValueError(f"bf16 is not supported on this {device.type}; use --precision fp32 or auto")
    if precision not in ("auto", "bf16"):
        raise ValueError(f"unknown precision {precision!r}; valid: auto, bf16, fp32")
    return torch.bfloat16 if ok else None


def keep_freed_memory() -> bool:
    """Stop glibc from returning big freed blocks to the OS after every batch; True where it applied.

    glibc serves blocks above its mmap threshold with fresh mmap()s and gives them back on free, so every
    batch's activations were page-faulted in anew: tuned_cnn bf16 inference at batch 256 ran at about 19k
    images/s instead of 36k here (benchmarks/inference_speed.py). Raising the mmap and trim thresholds keeps those
    pages in the heap for the next batch; the cost is that the process's RSS stays at its peak.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(name)
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        # Older glibc caps the mmap threshold at 32 MiB: fall back to that rather than leave it dynamic.
        mmap_ok = libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) or libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
        trim_ok = libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
        return bool(mmap_ok and trim_ok)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False


def setup_threads(threads: int = 0) -> None:
    # One intra-op thread per CPU this process may use (2 here); more threads than CPUs only thrash.
    # sched_getaffinity respects container CPU limits where os.cpu_count() reports the host's cores.
    if not threads:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, threads // distributed.local_world_size())  # torchrun ranks on one machine share its cores
    torch.set_num_threads(threads)


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
