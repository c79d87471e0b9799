"""Precision and memory format chosen by measurement (fashionclf/engine/autotune.py, device.py).

Timing decisions are tested with a fake clock: each fake step advances it by that variant's cost, so the
assertions never depend on this machine's real speed. A few tests run real steps of a tiny model to check
what timing must not change (weights, BatchNorm statistics, the random stream).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from fashionclf.engine import autotune, device
from fashionclf.engine.device import choose_precision, inference_precision, resolve_precision
from fashionclf.training.callbacks import Callbacks

CPU = torch.device("cpu")
X86_FLAGS = "fpu sse2 avx avx2 fma avx512f avx512bw avx512vl"
NATIVE = {"model": "Fake Xeon (AMX)", "flags": ["avx2", "avx512f", "avx512_bf16", "amx_bf16"], "native_bf16": True}
EMULATED = {"model": "Fake Xeon (AVX-512, no bf16)", "flags": ["avx2", "avx512f"], "native_bf16": False}


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Every test starts without a cache file and without the in-process memo."""
    monkeypatch.setenv("FASHIONCLF_CACHE", str(tmp_path / "cache"))
    autotune._MEMO.clear()
    yield
    autotune._MEMO.clear()


class FakeClock:
    """A clock that only moves when a fake step runs: step(variant) advances it by that variant's cost."""

    def __init__(self, costs: dict[str, float]):
        self.costs, self.now, self.calls = costs, 0.0, []

    def __call__(self) -> float:
        return self.now

    def steps(self) -> dict:
        def make(v):
            def step():
                self.calls.append(v)
                self.now += self.costs[v]

            return step

        return {v: make(v) for v in self.costs}


def tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.Dropout(0.5), nn.Flatten(),
        nn.Linear(4 * 8 * 8, 10),
    )  # fmt: skip


def contiguous(w: torch.Tensor) -> bool:
    """Plain NCHW strides (is_contiguous cannot tell the formats apart for one input channel)."""
    return w.stride() == w.contiguous().stride()


def tune(costs, cpu=NATIVE, prefer_cl=True, name="tiny", train=True, bf16_runs=True, clock=None, **kw):
    """autotune.tune on tiny_cnn with fake steps: FakeClock(costs), or the given clock (a ThreadClock)."""
    clock = clock or FakeClock(costs)
    model = kw.pop("model", None) or tiny_cnn()
    p = autotune.tune(
        model,
        torch.rand(8, 1, 8, 8),
        train=train,
        name=name,
        prefer_cl=prefer_cl,
        cpu=cpu,
        timer=clock,
        cpu_clock=kw.pop("cpu_clock", clock),  # the fake clock as CPU time too: the process had its core
        steps=clock.steps(),
        bf16_runs=bf16_runs,
        **kw,
    )
    return p, clock


def test_fastest_variant_is_chosen():
    p, _ = tune({"fp32": 1.0, "fp32+cl": 0.8, "bf16": 0.6, "bf16+cl": 0.4})
    assert (p.name, p.channels_last, p.how) == ("bf16", True, "measured")
    p, _ = tune({"fp32": 0.5, "fp32+cl": 1.0, "bf16": 0.9, "bf16+cl": 0.8}, name="other")
    assert (p.name, p.channels_last) == ("fp32", False)
    assert p.timings == pytest.approx({"fp32": 0.5, "fp32+cl": 1.0, "bf16": 0.9, "bf16+cl": 0.8})  # recorded for metrics.json


def test_bf16_is_never_chosen_when_it_measured_slower_or_within_noise():
    for i, bf16 in enumerate((1.5, 1.0, 0.95)):  # slower, a tie, 5 % faster: all within what noise can do
        p, _ = tune({"fp32": 1.0, "fp32+cl": 1.0, "bf16": bf16, "bf16+cl": bf16}, name=f"m{i}")
        assert p.dtype is None, bf16
    p, _ = tune({"fp32": 1.0, "fp32+cl": 1.0, "bf16": 0.85, "bf16+cl": 0.85}, name="clearly")
    assert p.dtype is torch.bfloat16  # 15 % faster on a CPU with native bf16: taken


def test_channels_last_switches_only_when_clearly_faster():
    p, _ = tune({"fp32": 0.95, "fp32+cl": 1.0}, cpu=EMULATED)
    assert p.channels_last  # the configured format within noise: kept
    p, _ = tune({"fp32": 0.5, "fp32+cl": 1.0}, cpu=EMULATED, name="b")
    assert not p.channels_last
    p, _ = tune({"fp32": 1.0, "fp32+cl": 0.5}, cpu=EMULATED, prefer_cl=False, name="c")
    assert p.channels_last


def test_cpu_without_native_bf16_never_gets_bf16_from_auto(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8259CL\nflags\t\t: {X86_FLAGS}\n")
    cpu = autotune.cpu_info(str(info))
    assert cpu == {"model": "Intel(R) Xeon(R) Platinum 8259CL", "flags": ["avx2", "avx512f"], "native_bf16": False}
    # bf16 timed twice as fast (as if emulation were fast): still not taken, and not even run.
    p, clock = tune({"fp32": 1.0, "fp32+cl": 1.0, "bf16": 0.5, "bf16+cl": 0.5}, cpu=cpu)
    assert p.dtype is None and not any(c.startswith("bf16") for c in clock.calls)
    assert autotune.decide({"fp32": 1.0, "bf16": 0.1}, native_bf16=False, prefer_cl=False) == "fp32"
    # Without a model to time, auto follows the CPU's flags, not oneDNN's capability flag.
    monkeypatch.setattr(device, "bf16_supported", lambda d: True)
    monkeypatch.setattr(autotune, "cpu_info", lambda path="/proc/cpuinfo": cpu)
    assert resolve_precision("auto", CPU) is None
    monkeypatch.setattr(autotune, "cpu_info", lambda path="/proc/cpuinfo": NATIVE)
    assert resolve_precision("auto", CPU) is torch.bfloat16


def test_cpu_info_reads_arm_features_and_survives_no_proc(tmp_path):
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\nCPU part\t: 0xd40\n")
    assert autotune.cpu_info(str(arm)) == {"model": "0xd40", "flags": ["bf16"], "native_bf16": True}
    missing = autotune.cpu_info(str(tmp_path / "absent"))
    assert missing["flags"] == [] and missing["native_bf16"] is None  # unknown: bf16 only when clearly faster
    assert autotune.decide({"fp32": 1.0, "bf16": 0.5}, native_bf16=None, prefer_cl=False) == "bf16"


def test_cache_is_used_on_the_second_call():
    costs = {"fp32": 1.0, "fp32+cl": 0.5, "bf16": 2.0, "bf16+cl": 2.0}
    first, clock = tune(costs)
    assert clock.calls and first.how == "measured"
    stored = json.loads(autotune.cache_file().read_text())
    assert stored["format"] == 1 and len(stored["entries"]) == 1
    again, clock2 = tune(costs)  # the same process: the memo
    assert clock2.calls == [] and again.how == "cached"
    autotune._MEMO.clear()  # another process: the file
    later, clock3 = tune(costs)
    assert clock3.calls == [] and later.how == "cached"
    assert (later.dtype, later.channels_last, later.timings) == (first.dtype, first.channels_last, first.timings)


@pytest.mark.parametrize("change", ["torch", "flags", "model", "mode", "shape", "isa", "capability", "threads"])
def test_cache_is_invalidated_when_the_key_changes(change, monkeypatch):
    costs = {"fp32": 1.0, "fp32+cl": 0.5}
    tune(costs)
    kw = {"cpu": NATIVE, "name": "tiny", "train": True}
    if change == "torch":
        monkeypatch.setattr(torch, "__version__", "9.9.9")
    elif change == "flags":
        kw["cpu"] = {**NATIVE, "flags": ["avx2"], "native_bf16": False}
    elif change == "model":
        kw["name"] = "another"
    elif change == "mode":
        kw["train"] = False
    elif change == "isa":  # oneDNN limited to AVX512_CORE: native bf16 hidden, a timing under it is another machine's
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")
    elif change == "capability":
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    elif change == "threads":
        monkeypatch.setattr(torch, "get_num_threads", lambda: 97)
    clock = FakeClock(costs)
    example = torch.rand(8, 1, 12, 12) if change == "shape" else torch.rand(8, 1, 8, 8)
    autotune.tune(tiny_cnn(), example, prefer_cl=True, timer=clock, cpu_clock=clock, steps=clock.steps(), bf16_runs=True, **kw)
    assert clock.calls, f"a new {change} must be measured, not read from the cache"
    assert len(json.loads(autotune.cache_file().read_text())["entries"]) == 2


@pytest.mark.parametrize("garbage", ["{not json", "[]", '{"format": 1, "entries": {"k": {"timings": {"fp32": -1}}}}', ""])
def test_corrupt_cache_is_ignored_and_rewritten(garbage):
    path = autotune.cache_file()
    path.parent.mkdir(parents=True)
    path.write_text(garbage)
    p, clock = tune({"fp32": 1.0, "fp32+cl": 0.5})
    assert clock.calls and p.how == "measured"
    data = json.loads(path.read_text())
    assert data["format"] == 1 and list(data["entries"]) != ["k"] and len(data["entries"]) == 1
    assert [f.name for f in path.parent.iterdir()] == ["autotune.json"]  # written through a temporary file, renamed


def test_timings_from_a_crowded_machine_are_used_but_not_cached():
    costs = {"fp32": 1.0, "fp32+cl": 0.5}
    p, _ = tune(costs, cpu_clock=lambda: 0.0)  # no CPU time while seconds passed: other jobs had the cores
    assert p.how == "measured" and p.channels_last and p.cpu_share == 0.0
    assert not autotune.cache_file().exists()
    autotune._MEMO.clear()
    again, clock = tune(costs)  # the next process measures again, on a machine that lets it
    assert clock.calls and again.cpu_share == 1.0 and autotune.cache_file().exists()


def test_timings_while_other_processes_keep_the_cores_busy_are_not_cached(tmp_path):
    """Spinning OpenMP threads keep this process's CPU share high on a crowded machine: /proc/stat tells."""
    costs = {"fp32": 1.0, "fp32+cl": 0.5}
    clock = ThreadClock(costs, {2: 1.0, 1: 1.0})
    # both cores busy every (fake) second of timing, this process on one of them: the other is someone else's
    p, _ = tune(costs, cpu=EMULATED, name="crowded", clock=clock, threads=[2, 1], busy=lambda: 100.0 + 2.0 * clock.now)
    assert p.how == "measured" and p.cpu_share == 1.0 and p.others == pytest.approx(1.0, abs=0.2)
    assert not autotune.cache_file().exists() and p.record()["others_busy"] == p.others
    stat = tmp_path / "stat"
    stat.write_text("cpu  300 0 150 3000 30 0 0 0 0 0\ncpu0 100 0 50 1000 10 0 0 0\ncpu1 100 0 50 1000 10 0 0 0\ncpu2 100 0 50 1000 10\n")
    tick = __import__("os").sysconf("SC_CLK_TCK")
    assert autotune.busy_seconds(str(stat), cpus={0, 1}) == pytest.approx(300 / tick)  # only the CPUs this process may use
    assert autotune.busy_seconds(str(stat), cpus={7}) is None
    assert autotune.busy_seconds(str(tmp_path / "absent")) is None
    if __import__("os").path.exists("/proc/stat"):
        assert autotune.busy_seconds() > 0


def test_thread_timings_cached_without_the_crowding_check_are_timed_again():
    costs = {"fp32": 1.0, "fp32+cl": 0.5}
    tune(costs)
    path = autotune.cache_file()
    data = json.loads(path.read_text())
    (entry,) = data["entries"].values()
    entry.pop("others_busy", None)
    entry["threads"] = {"2": 0.4, "1": 0.05}  # written by a version without the check, while another job held the cores
    path.write_text(json.dumps(data))
    autotune._MEMO.clear()
    clock = ThreadClock(costs, {2: 0.6, 1: 1.0})
    p, _ = tune(costs, cpu=NATIVE, name="tiny", clock=clock, threads=[2, 1])
    assert p.threads == 2 and p.thread_timings == pytest.approx({2: 0.3, 1: 0.5}) and set(clock.calls) == {"fp32+cl"}


def test_thread_timings_that_could_not_be_checked_for_crowding_serve_the_run_but_are_not_cached():
    costs = {"fp32": 1.0, "fp32+cl": 0.5}
    clock = ThreadClock(costs, {2: 1.0, 1: 0.5})
    kw = dict(cpu=EMULATED, name="nobusy", clock=clock, threads=[2, 1], busy=lambda: None)
    p, _ = tune(costs, **kw)
    assert p.threads == 1 and p.others is None  # no /proc/stat: used for this run
    (entry,) = json.loads(autotune.cache_file().read_text())["entries"].values()
    assert "threads" not in entry and entry["timings"]["fp32+cl"] == 0.5  # the precision timings are kept, the threads not
    again, _ = tune(costs, **kw)
    assert again.how == "measured" and again.threads == 1  # the same process times the threads again, not from memory


def test_a_crowded_measurement_is_not_reused_by_the_next_fit_in_the_same_process():
    costs = {"fp32": 1.0, "fp32+cl": 0.5}
    clock = ThreadClock(costs, {2: 1.0, 1: 1.0})
    kw = dict(cpu=EMULATED, name="crowd2", clock=clock, threads=[2, 1])
    tune(costs, busy=lambda: 100.0 + 2.0 * clock.now, **kw)
    calls = len(clock.calls)
    later, _ = tune(costs, busy=lambda: 100.0 + 1.0 * clock.now, **kw)
    assert later.how == "measured" and len(clock.calls) > calls and autotune.cache_file().exists()  # idle now: cached


def test_unwritable_cache_still_gives_a_choice(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("FASHIONCLF_CACHE", str(blocker / "sub"))  # a file where the folder should be
    p, _ = tune({"fp32": 1.0, "fp32+cl": 2.0})
    assert p.how == "measured" and not p.channels_last


def test_explicit_precision_is_honoured(monkeypatch):
    def boom():
        raise AssertionError("forced precisions must not be timed")

    x = torch.rand(4, 1, 8, 8)
    p = choose_precision("fp32", CPU, tiny_cnn(), x, train=True, channels_last=True, name="t", timer=boom)
    assert (p.dtype, p.channels_last, p.how) == (None, True, "forced")
    monkeypatch.setattr(device, "bf16_supported", lambda d: True)
    monkeypatch.setattr(autotune, "cpu_info", lambda path="/proc/cpuinfo": EMULATED)
    p = choose_precision("bf16", CPU, tiny_cnn(), x, train=True, channels_last=False, name="t", timer=boom)
    assert (p.dtype, p.channels_last, p.how) == (torch.bfloat16, False, "forced")  # asked for: given, even if slow
    monkeypatch.setattr(device, "bf16_supported", lambda d: False)
    with pytest.raises(ValueError, match="bf16 is not supported"):
        choose_precision("bf16", CPU, tiny_cnn(), x, train=True, channels_last=True, name="t")
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("fp16", CPU)


class ThreadClock(FakeClock):
    """Each fake step costs its variant's cost times a factor for the thread count it runs at."""

    def __init__(self, costs: dict[str, float], per_thread: dict[int, float]):
        super().__init__(costs)
        self.per_thread, self.threads_seen = per_thread, []

    def steps(self) -> dict:
        def make(v):
            def step():
                n = torch.get_num_threads()
                self.calls.append(v)
                self.threads_seen.append(n)
                self.now += self.costs[v] * self.per_thread.get(n, 1.0)

            return step

        return {v: make(v) for v in self.costs}


@pytest.mark.parametrize(("factors", "chosen"), [({2: 1.0, 1: 0.6}, 1), ({2: 1.0, 1: 0.95}, 2), ({2: 1.0, 1: 1.8}, 2)])
def test_threads_are_chosen_by_timing_all_cores_unless_fewer_are_clearly_faster(factors, chosen):
    before = torch.get_num_threads()
    costs, name = {"fp32": 1.0, "fp32+cl": 0.5}, f"t{chosen}{factors[1]}"
    clock = ThreadClock(costs, factors)
    p, _ = tune(costs, cpu=EMULATED, name=name, clock=clock, threads=[2, 1])
    assert p.threads == chosen and p.channels_last
    assert p.thread_timings == pytest.approx({2: 0.5 * factors[2], 1: 0.5 * factors[1]})  # the chosen variant, at each count
    assert {1, 2} <= set(clock.threads_seen) and torch.get_num_threads() == before  # each timed at its count, then restored
    rec = p.record()
    assert rec["threads"] == chosen and set(rec["seconds_per_step_by_threads"]) == {"1", "2"}
    autotune._MEMO.clear()
    again, _ = tune(costs, cpu=EMULATED, name=name, clock=clock, threads=[2, 1])
    assert (again.how, again.threads) == ("cached", chosen)  # from the file: nothing timed again


def test_threads_are_left_alone_unless_asked_and_one_core_has_no_choice():
    p, plain = tune({"fp32": 1.0, "fp32+cl": 0.5})
    assert p.threads is None and "threads" not in p.record()
    assert autotune.thread_candidates(1) == [1] and autotune.thread_candidates(2) == [2, 1]
    assert autotune.thread_candidates(16) == [16, 8]
    p, clock = tune({"fp32": 1.0, "fp32+cl": 0.5}, name="one", threads=[1])
    assert p.threads is None and clock.calls == plain.calls  # nothing extra timed


def test_a_cache_from_before_thread_timing_is_completed_not_discarded():
    costs = {"fp32": 1.0, "fp32+cl": 0.5}
    tune(costs)  # an entry without thread timings, as older versions wrote
    autotune._MEMO.clear()
    clock = ThreadClock(costs, {2: 1.0, 1: 0.5})
    p, _ = tune(costs, cpu=NATIVE, name="tiny", clock=clock, threads=[2, 1])
    assert set(clock.calls) == {"fp32+cl"} and p.threads == 1 and p.how == "measured"  # only the threads were timed
    entry = next(iter(json.loads(autotune.cache_file().read_text())["entries"].values()))
    assert set(entry["threads"]) == {"1", "2"} and entry["timings"]["fp32"] == 1.0


def test_measure_interleaves_variants_and_keeps_to_its_budget():
    clock = FakeClock({"a": 0.1, "b": 0.1})
    t = autotune.measure(clock.steps(), clock, budget=10)
    assert clock.calls == ["a"] * autotune.WARMUP + ["b"] * autotune.WARMUP + ["a", "b"] * autotune.ROUNDS
    assert t == {"a": pytest.approx(0.1), "b": pytest.approx(0.1)}
    slow = FakeClock({"a": 5.0, "b": 5.0})
    autotune.measure(slow.steps(), slow, budget=3)
    assert slow.calls == ["a", "b", "a", "b"]  # one warm-up each past half the budget, then one timed round


def test_a_variant_far_slower_after_warming_up_is_not_timed_further():
    clock = FakeClock({"fp32": 0.1, "bf16": 0.1 * autotune.SLOW * 1.5, "close": 0.1 * autotune.SLOW})
    t = autotune.measure(clock.steps(), clock, budget=100)
    assert clock.calls.count("bf16") == autotune.WARMUP  # warmed up, then left out of the timed rounds
    assert clock.calls.count("fp32") == clock.calls.count("close") == autotune.WARMUP + autotune.ROUNDS  # within SLOW: timed
    assert t == {"fp32": pytest.approx(0.1), "bf16": pytest.approx(0.45), "close": pytest.approx(0.3)}


def test_real_timing_leaves_weights_statistics_and_random_stream_alone():
    torch.manual_seed(0)
    model = tiny_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    example = torch.rand(8, 1, 8, 8)
    state = torch.get_rng_state()
    p = autotune.tune(model, example, train=True, name="tiny-real", prefer_cl=True, budget=0.5)
    assert p.how == "measured" and set(p.timings) >= {"fp32", "fp32+cl"} and all(t > 0 for t in p.timings.values())
    assert torch.equal(torch.get_rng_state(), state)  # dropout in the timed steps drew from a forked stream
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # a copy was timed
    assert model.training and next(model.parameters()).grad is None
    rec = p.record()
    assert rec["precision"] == p.name and rec["how"] == "measured" and "flags" in rec["cpu"] and "seconds_per_step" in rec


def test_inference_uses_the_measured_choice_never_slower_bf16(monkeypatch):
    """A run trained with auto (or bf16) infers in fp32 where bf16 measured slower, whatever the CPU claims."""
    monkeypatch.setattr(autotune, "cpu_info", lambda path="/proc/cpuinfo": NATIVE)
    monkeypatch.setattr(autotune, "bf16_autocast_runs", lambda device_type="cpu": True)
    monkeypatch.setattr(autotune, "measure", lambda steps, *_a, **_k: {v: 2.0 if v.startswith("bf16") else 1.0 for v in steps})
    model = tiny_cnn().eval()
    x_u8 = torch.randint(0, 256, (5, 8, 8), dtype=torch.uint8)
    for trained in ("auto", "bf16"):
        p = inference_precision(trained, CPU, model, x_u8, channels_last=True, name="tiny")
        assert p.dtype is None and p.channels_last
    monkeypatch.setattr(autotune, "measure", lambda steps, *_a, **_k: {v: 1.0 if v == "fp32" else 2.0 for v in steps})
    p = inference_precision("auto", CPU, model, x_u8, channels_last=True, name="tiny2")
    assert not p.channels_last and contiguous(model[3].weight)  # the weights follow the chosen format
    monkeypatch.setattr(autotune, "measure", lambda steps, *_a, **_k: {v: 1.0 if v == "fp32+cl" else 2.0 for v in steps})
    inference_precision("auto", CPU, model, x_u8, channels_last=False, name="tiny3")
    assert not contiguous(model[3].weight)


def test_fit_records_the_choice(monkeypatch):
    from fashionclf.training.loop import fit
    from fashionclf.training.recipes import resolve_config

    monkeypatch.setattr(autotune, "measure", lambda steps, *_a, **_k: {v: 1.0 if v == "fp32" else 2.0 for v in steps})
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    cfg = resolve_config("simple_cnn", None, epochs=1, batch_size=32, precision="auto", augment=False)
    res = fit(cfg, x, y, x[:16], y[:16])
    assert res.precision == "fp32" and res.precision_choice["channels_last"] is False
    assert res.precision_choice["how"] == "measured" and res.precision_choice["seconds_per_step"]["fp32"] == 1.0
    assert cfg.channels_last  # the config keeps what was asked for; the choice is recorded beside it
    assert res.precision_choice["threads"] == torch.get_num_threads()  # a tie: all cores stay, and the timings are kept
    assert set(res.precision_choice["seconds_per_step_by_threads"]) == {str(n) for n in autotune.thread_candidates(torch.get_num_threads())}


def test_fit_runs_at_the_thread_count_that_timed_fastest_and_honours_a_fixed_one(monkeypatch):
    from fashionclf.training.loop import fit
    from fashionclf.training.recipes import resolve_config

    cores = torch.get_num_threads()
    if cores < 2:
        pytest.skip("one core: no thread count to choose")
    seen = []
    monkeypatch.setattr(autotune, "measure", lambda steps, *_a, **_k: {v: 1.0 if v in ("fp32", "1") else 2.0 for v in steps})
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    cfg = resolve_config("simple_cnn", None, epochs=1, batch_size=32, precision="auto", augment=False)
    threads_seen = Callbacks.of(lambda row: seen.append(torch.get_num_threads()))
    res = fit(cfg, x, y, x[:16], y[:16], callbacks=threads_seen)
    assert res.precision_choice["threads"] == 1 and seen == [1]
    res = fit(
        dataclasses.replace(cfg, threads=cores),
        x,
        y,
        x[:16],
        y[:16],
        callbacks=Callbacks.of(lambda row: seen.append(torch.get_num_threads())),
    )
    assert "threads" not in res.precision_choice and seen[-1] == cores  # --threads N: taken as given, not timed


def test_run_logits_infer_with_the_measured_choice(tmp_path, monkeypatch):
    """Run.logits (evaluate, predict, serve) follows the inference timing for a run trained with auto."""
    from fashionclf.engine.inference import infer
    from fashionclf.engine.runs import load_run, save_run
    from fashionclf.models import create_model
    from fashionclf.training.recipes import resolve_config

    cfg = resolve_config("tuned_cnn", None, precision="auto")
    save_run(tmp_path / "run", create_model("tuned_cnn"), cfg, {}, [], [str(i) for i in range(10)], {})
    run = load_run(tmp_path / "run")
    conv = next(m.weight for m in run.model.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1)
    monkeypatch.setattr(autotune, "cpu_info", lambda path="/proc/cpuinfo": NATIVE)
    monkeypatch.setattr(autotune, "bf16_autocast_runs", lambda device_type="cpu": True)
    timed = []
    monkeypatch.setattr(autotune, "measure", lambda steps, *_a, **_k: timed.append(1) or {v: 1.0 if v == "fp32" else 2.0 for v in steps})
    x = torch.randint(0, 256, (20, 28, 28), dtype=torch.uint8)
    assert not contiguous(conv)  # loaded channels_last, as configured
    got = run.logits(x)
    conv = next(m.weight for m in run.model.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1)
    assert timed == [1] and contiguous(conv)
    assert torch.allclose(got, infer(run.model, x, amp_dtype=None, channels_last=False), atol=1e-6)
    run.logits(x)
    assert timed == [1]  # the second call is served from the cache


def test_real_processes_measure_again_under_another_onednn_isa(tmp_path):
    """Three real processes share one cache: the second reuses the first's timing; the third runs with oneDNN limited
    to AVX2 (other kernels, and on a native-bf16 CPU no native bf16) and must time again, not trust the cache."""
    import os
    import subprocess
    import sys

    code = (
        "import torch; from fashionclf.engine import autotune; from fashionclf.models import create_model;"
        "p = autotune.tune(create_model('mlp'), torch.rand(32, 1, 28, 28), train=True, name='mlp', prefer_cl=True, budget=0.3);"
        "print(p.how, p.cpu_share, p.others)"
    )
    env = {k: v for k, v in os.environ.items() if k not in autotune.KERNEL_ENV} | {"FASHIONCLF_CACHE": str(tmp_path)}

    def how(extra: dict) -> str:
        out = subprocess.run([sys.executable, "-c", code], env=env | extra, capture_output=True, text=True, check=True)
        return out.stdout.split()[0]

    assert how({}) == "measured"
    if how({}) != "cached":
        pytest.skip("the machine was too busy for the first timing to be cached (autotune keeps crowded timings out)")
    assert how({"ONEDNN_MAX_CPU_ISA": "AVX2"}) == "measured"


def test_large_inputs_are_measured_on_fewer_images_so_that_timing_stays_small(tmp_path):
    """28 x 28 images keep the 64 a measurement has always taken; photos take fewer, a bounded number of pixels."""
    sizes = {28: 64, 64: 64, 128: 16, 224: 5, 260: autotune.MIN_MEASURE_BATCH, 512: autotune.MIN_MEASURE_BATCH}
    for side, n in sizes.items():
        example = torch.zeros(2, 3, side, side)
        assert autotune.measure_batch(example) == n and len(autotune._batch(example)) == n
        assert n * side * side <= autotune.MEASURE_PIXELS or n == autotune.MIN_MEASURE_BATCH
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(len(x))
            return x.flatten(1)[:, :2]

    autotune.tune(
        Probe(), torch.zeros(64, 3, 128, 128), train=False, name="probe", prefer_cl=False, cache=tmp_path / "autotune.json", budget=0.0
    )
    assert seen and set(seen) == {16}  # every timed step ran on the capped batch
