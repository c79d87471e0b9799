"""What `--threads 0` chooses for each default model on this machine: seconds per training step at each candidate
thread count, timed by autotune itself (fp32/bf16 variants first, then the chosen one at each count), uncached.

    .venv/bin/python benchmarks/thread_choice.py [--models mlp,simple_cnn,tuned_cnn,advanced_cnn]

Prints a Markdown table; `others busy` is the CPU other processes used meanwhile (above 0.5: the figures are a
crowded machine's, and autotune would not cache them).
"""

import argparse
import os
import tempfile

import torch

from fashionclf.engine import autotune
from fashionclf.engine.device import setup_threads
from fashionclf.models import create_model
from fashionclf.study.compare import DEFAULT_MODELS


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    args = ap.parse_args()
    setup_threads(0)
    cores = torch.get_num_threads()
    cpu = autotune.cpu_info()
    print(f"{cpu['model']}, flags {cpu['flags']}, native bf16: {cpu['native_bf16']}, torch {torch.__version__}, {cores} usable CPUs\n")
    counts = autotune.thread_candidates(cores)
    if len(counts) < 2:
        raise SystemExit(f"{cores} usable CPU: no thread count to choose")
    print("| model | variant | " + " | ".join(f"{n} threads, ms/step" for n in counts) + " | chosen | others busy | timing s |")
    print("|---|---|" + "---|" * len(counts) + "---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FASHIONCLF_CACHE"] = tmp  # measure, never reuse an earlier cache
        for name in args.models.split(","):
            p = autotune.tune(create_model(name), torch.rand(64, 1, 28, 28), train=True, name=name, prefer_cl=True, threads=counts)
            r = p.record()
            variant = r["precision"] + (" + channels_last" if r["channels_last"] else "")
            ms = " | ".join(f"{p.thread_timings[n] * 1000:.2f}" for n in counts)
            print(f"| {name} | {variant} | {ms} | {p.threads} | {r['others_busy']} | {r['tune_seconds']:.1f} |")


if __name__ == "__main__":
    main()
