"""Precision and memory format chosen by timing the model itself, cached per machine, torch and model.

A capability flag says what runs, not what runs fast: oneDNN reports bf16 as supported on AVX-512 CPUs that
only emulate it, and there bf16 autocast trained 2.0-2.8x slower than fp32 (docs/results/precision.md). So `--precision auto`
on the CPU times a few steps of the model in each variant and keeps the fastest:

- variants: fp32 and bf16 autocast, each with contiguous and with channels_last input and weights; bf16 only
  where autocast runs it at all and the CPU does not report itself without native bf16 (/proc/cpuinfo lists
  none of avx512_bf16, amx_bf16, or aarch64's bf16): emulated bf16 is never the fast choice;
- the configured variant (fp32 in the config's memory format) is kept unless another is at least MARGIN
  faster, so timing noise cannot flip the choice; bf16 must beat the fp32 pick by MARGIN too;
- WARMUP untimed steps per variant (one SLOW times slower than the fastest stops there), then up to ROUNDS timed
  rounds interleaved (A, B, A, B, ...) on measure_batch() images (MEASURE_BATCH, fewer for large inputs), stopping
  once BUDGET_S seconds have gone; each variant's median step counts;
- forward and backward for training, forward only (no grad) for inference; on a deep copy of the model,
  with the global RNG state restored, so a measured run trains exactly as a cached one;
- the timings are cached in autotune.json under $FASHIONCLF_CACHE (default ~/.cache/fashionclf), keyed by
  the CPU's model name and flags, torch's version, the thread count, the model, its input shape, the batch
  and train/infer: a new torch, CPU or model measures again. Delete the file to measure everything again.
  Timings taken while the process got less than half a core (CPU seconds per wall second), or while other
  processes kept more than half a core busy (/proc/stat's busy time less this process's: OpenMP threads
  spinning for a core keep the first figure high on a crowded machine), serve the run that took them but are
  not cached: two threads measured 6.5x slower than one while another job held both cores.
- threads, where the caller leaves them to us (training with `threads = 0`, one process): the chosen variant
  is timed again at each candidate count (all usable cores, and half of them), interleaved within half the
  budget; all cores stay unless fewer are MARGIN faster (small models at small batches can lose more to
  synchronising two threads than they gain). Cached in the same entry.
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

from fashionclf.core.io import atomic_write_text, to_json

MARGIN = 0.10  # a variant other than the configured one must be this much faster to be chosen
WARMUP, ROUNDS, BUDGET_S, SLOW = 2, 3, 3.0, 3.0  # SLOW: a variant this much slower after warm-up is not timed further
THREAD_ROUNDS = 25  # thread counts differ by less than variants do: more rounds (within half the budget) for fast steps
MEASURE_BATCH = 64
# Large inputs take fewer images (three Lites at 260 px on 64 photos peaked at 5.6 GB in a store run's first predict)
MEASURE_PIXELS, MIN_MEASURE_BATCH = 64 * 64 * 64, 4  # pixels a measuring batch at most, images at least
MAX_ENTRIES = 256  # the cache keeps the newest entries
MIN_CPU_SHARE = 0.5  # a process that got less than half a core while timing shared it with others: not cached
MAX_OTHERS = 0.5  # other processes busy on more than half a core while timing (/proc/stat): not cached either
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
    others: float | None = None  # CPU seconds other processes used per second while timing (above MAX_OTHERS: not cached)
    threads: int | None = None  # the intra-op thread count chosen by timing (None: not measured, the caller's stands)
    thread_timings: dict = field(default_factory=dict)  # thread count -> median seconds per step of the chosen variant

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
            rec["others_busy"] = self.others
        if self.threads is not None:
            rec["threads"] = self.threads
            rec["seconds_per_step_by_threads"] = {str(k): round(v, 6) for k, v in sorted(self.thread_timings.items())}
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


def busy_seconds(path: str = "/proc/stat", cpus: set[int] | None = None) -> float | None:
    """CPU seconds every process together has used since boot on the CPUs this process may use (its affinity
    mask: load on a container's other cores is not ours to count), summed (Linux); None where unknown."""
    if cpus is None:
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    total = None
    try:
        for line in Path(path).read_text().splitlines():
            name, *fields = line.split()
            if name[3:].isdigit() and name.startswith("cpu") and int(name[3:]) in cpus:
                ticks = [int(v) for v in fields[:8]]
                total = (total or 0) + sum(ticks) - ticks[3] - ticks[4]  # less idle and iowait
    except (OSError, ValueError, IndexError):
        return None
    return None if total is None else total / os.sysconf("SC_CLK_TCK")


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


def thread_candidates(cores: int) -> list[int]:
    """The thread counts worth timing: all usable cores and half of them (most first); one core: nothing to choose."""
    return sorted({cores, max(1, cores // 2)}, reverse=True)


def decide_threads(timings: dict[int, float], margin: float = MARGIN) -> int:
    """The most threads unless fewer were clearly (margin) faster."""
    most = max(timings)
    fastest = min(timings, key=timings.__getitem__)
    return fastest if timings[fastest] <= (1 - margin) * timings[most] else most


def at_threads(step: Callable[[], None], n: int) -> Callable[[], None]:
    """step run with n intra-op threads, the caller's count restored after it."""

    def run() -> None:
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            step()
        finally:
            torch.set_num_threads(before)

    return run


def measure(
    steps: dict[str, Callable[[], None]], timer: Callable[[], float] = time.perf_counter, budget: float = BUDGET_S, rounds: int = ROUNDS
) -> dict[str, float]:
    """Median seconds per step of each variant: WARMUP untimed steps each, then interleaved timed rounds within budget.
    A variant SLOW times slower than the fastest after warm-up keeps that step as its figure (emulated bf16: 3.6 s/0.2 s)."""
    start, warm = timer(), {}
    for name, step in steps.items():
        for i in range(WARMUP):
            if i and timer() - start > budget / 2:  # a slow model: one warm-up step is enough to keep to the budget
                break
            t0 = timer()
            step()
            warm[name] = timer() - t0
    fastest = min(warm.values(), default=0.0)
    times: dict[str, list[float]] = {name: [] for name in steps if warm[name] <= SLOW * fastest}
    for r in range(rounds):
        if r and timer() - start > budget:
            break
        for name in times:
            t0 = timer()
            steps[name]()
            times[name].append(timer() - t0)
    return {name: statistics.median(times[name]) if name in times else warm[name] for name in steps}


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


# Environment settings that change which kernels oneDNN, MKL and ATen run, whatever the CPU reports: a timing taken
# under one of them says nothing about another (ONEDNN_MAX_CPU_ISA=AVX512_CORE hides native bf16, so bf16 is emulated).
KERNEL_ENV = (
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "ONEDNN_CPU_ISA_HINTS",
    "DNNL_CPU_ISA_HINTS",
    "ONEDNN_DEFAULT_FPMATH_MODE",
    "DNNL_DEFAULT_FPMATH_MODE",
    "ATEN_CPU_CAPABILITY",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_CBWR",
    "OMP_NUM_THREADS",
)


def kernel_conditions() -> dict:
    """What selects the kernels besides the CPU: the settings above (unset ones left out), torch's reported CPU
    capability, whether oneDNN is on, and the fp32 matmul precision. Part of every cache key."""
    env = {k: os.environ[k] for k in KERNEL_ENV if k in os.environ}
    return {
        "env": env,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
        "matmul": torch.get_float32_matmul_precision(),
    }


def tune_key(cpu: dict, name: str, model: nn.Module, example: torch.Tensor, train: bool) -> str:
    params = sum(p.numel() for p in model.parameters())
    key = {
        "cpu": cpu["model"],
        "flags": cpu["flags"],
        "torch": torch.__version__,
        "kernels": kernel_conditions(),
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
    th = entry.get("threads", {}) if isinstance(entry, dict) else None

    def positive(timings: dict, keys_ok) -> bool:
        return all(keys_ok(k) and isinstance(v, int | float) and v > 0 for k, v in timings.items())

    return isinstance(t, dict) and "fp32" in t and positive(t, VARIANTS.__contains__) and isinstance(th, dict) and positive(th, str.isdigit)


def read_cache(path: Path) -> dict:
    """The cached entries, or {} where the file is missing, unreadable or not ours (it is then rewritten whole)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    entries = data.get("entries") if isinstance(data, dict) and data.get("format") == FORMAT else None
    return {k: _unguarded_threads_dropped(v) for k, v in entries.items() if _valid(v)} if isinstance(entries, dict) else {}


def _unguarded_threads_dropped(entry: dict) -> dict:
    """Thread timings cached before others' CPU use was checked (no others_busy) are timed again: one such entry
    kept tuned_cnn at 1 thread on an idle machine (40 s an epoch instead of 25), timed while another job ran."""
    return entry if entry.get("others_busy") is not None or "threads" not in entry else {k: v for k, v in entry.items() if k != "threads"}


def write_cache(path: Path, entries: dict) -> bool:
    """Atomically; False where the cache cannot be written (a read-only home): the choice still stands, uncached."""
    newest = sorted(entries.items(), key=lambda kv: kv[1].get("measured", ""))[-MAX_ENTRIES:]
    try:
        atomic_write_text(path, to_json({"format": FORMAT, "entries": dict(newest)}))
    except OSError:
        return False
    return True


_MEMO: dict[tuple[str, str], dict] = {}  # (cache file, key) -> entry: one file read per process and key


def measure_batch(example: torch.Tensor) -> int:
    """Images a measuring step takes for inputs like example's: MEASURE_BATCH, fewer past MEASURE_PIXELS, >= MIN_MEASURE_BATCH."""
    pixels = example.shape[-1] * example.shape[-2] if example.dim() >= 3 else 1
    return max(MIN_MEASURE_BATCH, min(MEASURE_BATCH, MEASURE_PIXELS // max(1, pixels)))


def _batch(example: torch.Tensor) -> torch.Tensor:
    """measure_batch(example) images: the first ones, repeated where fewer."""
    n = measure_batch(example)
    reps = -(-n // len(example))
    return example.repeat(reps, *([1] * (example.dim() - 1)))[:n] if reps > 1 else example[:n]


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
    threads: list[int] | None = None,
    busy: Callable[[], float | None] = busy_seconds,
) -> Precision:
    """The fastest variant for this model on this machine: from the cache, else timed (steps/timer injectable for tests).

    threads: candidate intra-op thread counts to time the chosen variant at (thread_candidates); None: not chosen here."""
    cpu = cpu if cpu is not None else cpu_info()
    cache = cache or cache_file()
    example = _batch(example)
    key = tune_key(cpu, name, model, example, train)
    entry = _MEMO.get((str(cache), key)) or read_cache(cache).get(key)
    how, spent, t0 = "cached", 0.0, time.perf_counter()
    w0, c0, b0 = timer(), cpu_clock(), busy()
    with torch.random.fork_rng(devices=[]):  # dropout in the timed steps must not shift the run's random numbers
        if entry is None:
            runs = bf16_autocast_runs(example.device.type) if bf16_runs is None else bf16_runs
            variants = [v for v in VARIANTS if v.startswith("fp32") or (runs and cpu["native_bf16"] is not False)]
            steps = {v: s for v, s in steps.items() if v in variants} if steps else model_steps(model, example, train, variants)
            entry, how = {"timings": measure(steps, timer, budget), "measured": datetime.now(UTC).isoformat(timespec="seconds")}, "measured"
        pick = decide(entry["timings"], cpu["native_bf16"], prefer_cl)
        wanted = [str(n) for n in threads or []]
        if len(wanted) > 1 and set(wanted) - set(entry.get("threads", {})):  # threads not timed yet for these candidates
            one = steps[pick] if steps else model_steps(model, example, train, [pick])[pick]
            th = measure({n: at_threads(one, int(n)) for n in wanted}, timer, budget / 2, THREAD_ROUNDS)
            entry, how = {**entry, "threads": {**entry.get("threads", {}), **th}}, "measured"
    if how == "measured":
        spent, wall, b1 = time.perf_counter() - t0, timer() - w0, busy()
        share = (cpu_clock() - c0) / wall if wall > 0.05 else 1.0
        others = max(0.0, (b1 - b0) / wall - share) if wall > 0.05 and b0 is not None and b1 is not None else None
        entry = {**entry, "cpu_share": round(share, 2), "others_busy": None if others is None else round(others, 2)}
        # Thread counts are judged only where others' use could be checked (/proc/stat, a window of at least 0.05 s).
        kept = _unguarded_threads_dropped(entry)
        if share >= MIN_CPU_SHARE and (others or 0.0) <= MAX_OTHERS:  # a crowded machine: good for this run, not later ones
            entries = read_cache(cache)
            entries[key] = kept
            write_cache(cache, entries)
            _MEMO[(str(cache), key)] = kept
    else:
        _MEMO[(str(cache), key)] = entry
    dtype = torch.bfloat16 if pick.startswith("bf16") else None
    chosen, by_threads = None, {}
    if len(wanted) > 1:
        by_threads = {int(n): entry["threads"][n] for n in wanted}
        chosen = decide_threads(by_threads)
    share, others = entry.get("cpu_share"), entry.get("others_busy")
    return Precision(dtype, pick.endswith("+cl"), how, dict(entry["timings"]), cpu, spent, share, others, chosen, by_threads)
