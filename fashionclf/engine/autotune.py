"""Precision and memory format chosen by timing the model itself, cached per machine, torch and model.

A capability flag says what runs, not what runs fast: oneDNN reports bf16 as supported on AVX-512 CPUs that
only emulate it, and there bf16 autocast trained 2.0-2.8x slower than fp32 (issue 16). So `--precision auto`
on the CPU times a few steps of the model in each variant and keeps the fastest:

- variants: fp32 and bf16 autocast, each with contiguous and with channels_last input and weights; bf16 only
  where autocast runs it at all and the CPU does not report itself without native bf16 (/proc/cpuinfo lists
  none of avx512_bf16, amx_bf16, or aarch64's bf16): emulated bf16 is never the fast choice;
- the configured variant (fp32 in the config's memory format) is kept unless another is at least MARGIN
  faster, so timing noise cannot flip the choice; bf16 must beat the fp32 pick by MARGIN too;
- WARMUP untimed steps per variant, then up to ROUNDS timed rounds interleaved (A, B, A, B, ...) on a batch of
  MEASURE_BATCH, stopping once BUDGET_S seconds have gone; each variant's median step counts;
- forward and backward for training, forward only (no grad) for inference; on a deep copy of the model,
  with the global RNG state restored, so a measured run trains exactly as a cached one;
- the timings are cached in autotune.json under $FASHIONCLF_CACHE (default ~/.cache/fashionclf), keyed by
  the CPU's model name and flags, torch's version, the thread count, the model, its input shape, the batch
  and train/infer: a new torch, CPU or model measures again. Delete the file to measure everything again.
  Timings taken while the process got less than half a core (CPU seconds per wall second: other jobs
  crowding the machine) serve the run that took them but are not cached.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn

from fashionclf.io import atomic_write_text, to_json

MARGIN = 0.10  # a variant other than the configured one must be this much faster to be chosen
WARMUP, ROUNDS, BUDGET_S = 2, 3, 3.0
MEASURE_BATCH = 64
MAX_ENTRIES = 256  # the cache keeps the newest entries
MIN_CPU_SHARE = 0.5  # a process that got less than half a core while timing shared it with others: not cached
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "bf16")  # the ones that decide bf16's speed
NATIVE_BF16 = ("avx512_bf16", "amx_bf16", "bf16")  # bf16: aarch64's Features name for its BFDOT/BFMMLA
VARIANTS = ("fp32", "fp32+cl", "bf16", "bf16+cl")
FORMAT = 1


@dataclass(frozen=True)
class Precision:
    """What a model computes in: the autocast dtype (None: plain fp32) and the memory format, and why."""

    dtype: torch.dtype | None
    channels_last: bool
    how: str  # forced (--precision bf16/fp32), measured, cached, capability (no model to time; the GPU)
    timings: dict = field(default_factory=dict)  # variant -> median seconds per step
    cpu: dict = field(default_factory=dict)
    tune_seconds: float = 0.0  # what measuring cost (0 when forced or cached)
    cpu_share: float | None = None  # CPU seconds the process got per second while timing (below MIN_CPU_SHARE: not cached)

    @property
    def name(self) -> str:
        return "bf16" if self.dtype is not None else "fp32"

    def record(self) -> dict:
        """For metrics.json: the choice, how it was made, the timings and the CPU's flags."""
        rec = {"precision": self.name, "channels_last": self.channels_last, "how": self.how}
        if self.timings:
            rec["seconds_per_step"] = {k: round(v, 6) for k, v in self.timings.items()}
            rec["tune_seconds"] = round(self.tune_seconds, 3)
            rec["cpu_share"] = self.cpu_share
        if self.cpu:
            rec["cpu"] = {k: self.cpu[k] for k in ("model", "flags", "native_bf16")}
        return rec


@functools.cache
def cpu_info(path: str = "/proc/cpuinfo") -> dict:
    """The CPU's model name and the flags that matter; native_bf16 None where the flags cannot be read."""
    try:
        text = Path(path).read_text()
    except OSError:  # not Linux: no flags to go on
        return {"model": platform.processor() or platform.machine(), "flags": [], "native_bf16": None}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    model = fields.get("model name") or fields.get("hardware") or fields.get("cpu part") or platform.machine()
    raw = fields.get("flags", fields.get("features"))
    if raw is None:
        return {"model": model, "flags": [], "native_bf16": None}
    have = set(raw.split())
    return {"model": model, "flags": [f for f in FLAGS if f in have], "native_bf16": any(f in have for f in NATIVE_BF16)}


@functools.cache
def bf16_autocast_runs(device_type: str = "cpu") -> bool:
    """Whether bf16 autocast computes in bf16 here at all (fast or emulated: only timing tells)."""
    try:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            y = torch.nn.functional.linear(torch.ones(2, 4, device=device_type), torch.ones(3, 4, device=device_type))
        return y.dtype == torch.bfloat16
    except (RuntimeError, AssertionError):
        return False


def cache_file() -> Path:
    root = os.environ.get("FASHIONCLF_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fashionclf"
    return Path(root) / "autotune.json"


def decide(timings: dict[str, float], native_bf16: bool | None, prefer_cl: bool, margin: float = MARGIN) -> str:
    """The variant to use: the configured fp32 one unless another is clearly (margin) faster; bf16 only if clearly faster
    than the fp32 pick, and never on a CPU that reports no native bf16."""
    base, other = ("fp32+cl", "fp32") if prefer_cl else ("fp32", "fp32+cl")
    pick = base if base in timings else other
    if other in timings and timings[other] <= (1 - margin) * timings[pick]:
        pick = other
    bf16 = [v for v in (base.replace("fp32", "bf16"), other.replace("fp32", "bf16")) if v in timings]
    if bf16 and native_bf16 is not False:
        fastest = min(bf16, key=timings.__getitem__)
        if timings[fastest] <= (1 - margin) * timings[pick]:
            pick = fastest
    return pick


def measure(
    steps: dict[str, Callable[[], None]], timer: Callable[[], float] = time.perf_counter, budget: float = BUDGET_S
) -> dict[str, float]:
    """Median seconds per step of each variant: WARMUP untimed steps each, then interleaved timed rounds within budget."""
    start = timer()
    for step in steps.values():
        for i in range(WARMUP):
            if i and timer() - start > budget / 2:  # a slow model: one warm-up step is enough to keep to the budget
                break
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(ROUNDS):
        if r and timer() - start > budget:
            break
        for name, step in steps.items():
            t0 = timer()
            step()
            times[name].append(timer() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def model_steps(model: nn.Module, example: torch.Tensor, train: bool, variants) -> dict[str, Callable[[], None]]:
    """One step of each variant on a copy of the model: forward + backward (train) or a no-grad forward."""
    device_type = example.device.type
    copies = {}
    for cl in {v.endswith("+cl") for v in variants}:
        fmt = torch.channels_last if cl else torch.contiguous_format
        m = copy.deepcopy(model).to(memory_format=fmt).train(train)
        copies[cl] = (m, example.contiguous(memory_format=fmt) if example.dim() == 4 else example)

    def make(variant: str) -> Callable[[], None]:
        m, x = copies[variant.endswith("+cl")]
        dtype = torch.bfloat16 if variant.startswith("bf16") else None

        def step() -> None:
            with torch.set_grad_enabled(train), torch.autocast(device_type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                out = m(x)
            if train:
                out.float().logsumexp(1).mean().backward()
                m.zero_grad(set_to_none=True)

        return step

    return {v: make(v) for v in variants}


def tune_key(cpu: dict, name: str, model: nn.Module, example: torch.Tensor, train: bool) -> str:
    params = sum(p.numel() for p in model.parameters())
    key = {
        "cpu": cpu["model"],
        "flags": cpu["flags"],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": example.device.type,
        "model": name,
        "params": params,
        "input": list(example.shape[1:]),
        "batch": len(example),
        "mode": "train" if train else "infer",
    }
    return json.dumps(key, sort_keys=True)


def _valid(entry) -> bool:
    t = entry.get("timings") if isinstance(entry, dict) else None
    return isinstance(t, dict) and "fp32" in t and all(k in VARIANTS and isinstance(v, int | float) and v > 0 for k, v in t.items())


def read_cache(path: Path) -> dict:
    """The cached entries, or {} where the file is missing, unreadable or not ours (it is then rewritten whole)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    entries = data.get("entries") if isinstance(data, dict) and data.get("format") == FORMAT else None
    return {k: v for k, v in entries.items() if _valid(v)} if isinstance(entries, dict) else {}


def write_cache(path: Path, entries: dict) -> bool:
    """Atomically; False where the cache cannot be written (a read-only home): the choice still stands, uncached."""
    newest = sorted(entries.items(), key=lambda kv: kv[1].get("measured", ""))[-MAX_ENTRIES:]
    try:
        atomic_write_text(path, to_json({"format": FORMAT, "entries": dict(newest)}))
    except OSError:
        return False
    return True


_MEMO: dict[tuple[str, str], dict] = {}  # (cache file, key) -> entry: one file read per process and key


def _batch(example: torch.Tensor) -> torch.Tensor:
    """MEASURE_BATCH images: the first ones, repeated where fewer."""
    reps = -(-MEASURE_BATCH // len(example))
    return example.repeat(reps, *([1] * (example.dim() - 1)))[:MEASURE_BATCH] if reps > 1 else example[:MEASURE_BATCH]


def tune(
    model: nn.Module,
    example: torch.Tensor,
    *,
    train: bool,
    name: str,
    prefer_cl: bool,
    cpu: dict | None = None,
    timer: Callable[[], float] = time.perf_counter,
    cpu_clock: Callable[[], float] = time.process_time,
    steps: dict[str, Callable[[], None]] | None = None,
    cache: Path | None = None,
    bf16_runs: bool | None = None,
    budget: float = BUDGET_S,
) -> Precision:
    """The fastest variant for this model on this machine: from the cache, else timed (steps/timer injectable for tests)."""
    cpu = cpu if cpu is not None else cpu_info()
    cache = cache or cache_file()
    example = _batch(example)
    key = tune_key(cpu, name, model, example, train)
    entry = _MEMO.get((str(cache), key)) or read_cache(cache).get(key)
    how, spent = "cached", 0.0
    if entry is None:
        runs = bf16_autocast_runs(example.device.type) if bf16_runs is None else bf16_runs
        variants = [v for v in VARIANTS if v.startswith("fp32") or (runs and cpu["native_bf16"] is not False)]
        t0, w0, c0 = time.perf_counter(), timer(), cpu_clock()
        with torch.random.fork_rng(devices=[]):  # dropout in the timed steps must not shift the run's random numbers
            steps = {v: s for v, s in steps.items() if v in variants} if steps else model_steps(model, example, train, variants)
            timings = measure(steps, timer, budget)
        how, spent, wall = "measured", time.perf_counter() - t0, timer() - w0
        share = (cpu_clock() - c0) / wall if wall > 0.05 else 1.0
        entry = {"timings": timings, "measured": datetime.now(UTC).isoformat(timespec="seconds"), "cpu_share": round(share, 2)}
        if share >= MIN_CPU_SHARE:  # timed on a crowded machine: good for this run, not for every later one
            entries = read_cache(cache)
            entries[key] = entry
            write_cache(cache, entries)
    _MEMO[(str(cache), key)] = entry
    pick = decide(entry["timings"], cpu["native_bf16"], prefer_cl)
    dtype = torch.bfloat16 if pick.startswith("bf16") else None
    return Precision(dtype, pick.endswith("+cl"), how, dict(entry["timings"]), cpu, spent, entry.get("cpu_share"))
