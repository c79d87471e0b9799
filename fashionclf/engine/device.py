"""Device, precision and threads: where and how fast the math runs."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys

import torch
from torch import nn

from fashionclf.engine import autotune, distributed


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"unknown device {name!r}; valid: auto, cpu, cuda")
    return torch.device(name)


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast is offered here: a capability flag, which says nothing about speed (autotune.py)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32, where there is no model to time (choose_precision times one).

    "auto" gives bf16 on a GPU that supports it, and on a CPU only where the CPU computes bf16 natively:
    oneDNN's flag is also True where it emulates bf16 with AVX-512, 2-3x slower than fp32.
    """
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"unknown precision {precision!r}; valid: auto, bf16, fp32")
    if precision == "fp32":
        return None
    ok = bf16_supported(device)
    if precision == "bf16" and not ok:
        raise ValueError(f"bf16 is not supported on this {device.type}; use --precision fp32 or auto")
    if precision == "auto" and device.type != "cuda":
        ok = ok and autotune.cpu_info()["native_bf16"] is True
    return torch.bfloat16 if ok else None


def choose_precision(
    precision: str, device: torch.device, model: nn.Module, example: torch.Tensor, *, train: bool, channels_last: bool, name: str, **tune_kw
) -> autotune.Precision:
    """Autocast dtype and memory format for `model` on `example` (model-ready float input, a few images are enough).

    --precision bf16/fp32 are taken as given, with the configured channels_last. "auto" on the CPU times the
    variants (autotune.tune: fp32/bf16 x contiguous/channels_last, cached per machine and model); on a GPU it
    is bf16 where supported.
    """
    if precision != "auto" or device.type != "cpu" or not len(example):
        return autotune.Precision(resolve_precision(precision, device), channels_last, "forced" if precision != "auto" else "capability")
    return autotune.tune(model, example, train=train, name=name, prefer_cl=channels_last, **tune_kw)


def inference_precision(
    precision: str, device: torch.device, model: nn.Module, x_u8: torch.Tensor, *, channels_last: bool, name: str
) -> autotune.Precision:
    """How a trained model infers on x_u8's kind of images: fp32 where it was trained in fp32, else the measured
    choice for inference (a run trained in bf16 never gets bf16 where bf16 measured slower). Puts the model's
    weights in the chosen memory format."""
    x = x_u8[: autotune.MEASURE_BATCH].to(device).float().div(255)
    x = x.unsqueeze(1) if x.dim() == 3 else x
    asked = "fp32" if precision == "fp32" else "auto"
    prec = choose_precision(asked, device, model, x, train=False, channels_last=channels_last, name=name)
    model.to(memory_format=torch.channels_last if prec.channels_last else torch.contiguous_format)
    return prec


def agreed(prec: autotune.Precision, device: torch.device) -> autotune.Precision:
    """Rank 0's choice on every rank of a torchrun job (each rank timed its own steps)."""
    got = distributed.from_main({"bf16": float(prec.dtype is not None), "cl": float(prec.channels_last)}, device)
    return dataclasses.replace(prec, dtype=torch.bfloat16 if got["bf16"] else None, channels_last=bool(got["cl"]))


@functools.cache
def glibc():
    """The C library as ctypes sees it on Linux (found once: find_library runs a subprocess), or None elsewhere."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Stop glibc from returning big freed blocks to the OS after every batch; True where it applied.

    glibc serves blocks above its mmap threshold with fresh mmap()s and gives them back on free, so every
    batch's activations were page-faulted in anew: tuned_cnn bf16 inference at batch 256 ran at about 19k
    images/s instead of 36k here (benchmarks/inference_speed.py). Raising the mmap and trim thresholds keeps those
    pages in the heap for the next batch; the cost is that the process's RSS stays at its peak.
    """
    libc = glibc()
    if libc is None:
        return False
    try:
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        # Older glibc caps the mmap threshold at 32 MiB: fall back to that rather than leave it dynamic.
        mmap_ok = libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) or libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
        trim_ok = libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
        return bool(mmap_ok and trim_ok)
    except AttributeError:  # not glibc (musl): nothing to tune
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
