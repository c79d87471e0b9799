"""`fashionclf embed` throughput on a fresh store, as a user runs it (a new process each time, precision measured).

    .venv/bin/python benchmarks/embed_speed.py --photos ../shared/clothing-photos/validation --n 320 --repeat 3
    ONEDNN_MAX_CPU_ISA=AVX512_CORE .venv/bin/python benchmarks/embed_speed.py ...   # native bf16 hidden

Reports the median over --repeat runs of the embedding rate `embed` prints (photos/s while embedding, the
precision measurement included) and of the whole process's wall time (start-up and model loading included).
Nothing else may run meanwhile: the two cores are the measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fashionclf.data.images import find_images  # noqa: E402
from fashionclf.engine.autotune import cpu_info  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--photos", required=True)
    p.add_argument("--n", type=int, default=320)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--backbones", default="lite0+lite1+lite2")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out")
    args = p.parse_args()
    files = find_images([args.photos])[: args.n]
    runs = []
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "photos"
        folder.mkdir()
        for i, f in enumerate(files):
            (folder / f"{i:05d}{f.suffix}").symlink_to(f.resolve())
        for r in range(args.repeat):
            store = Path(d) / f"store{r}"
            cmd = [sys.executable, "-m", "fashionclf", "embed", str(folder), "--store", str(store), "--backbones", args.backbones, "--json"]
            cmd += ["--batch-size", str(args.batch_size)]
            start = time.perf_counter()
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            runs.append({**json.loads(out), "wall_s": time.perf_counter() - start})
    info = cpu_info()
    result = {
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d"),
        "cpu": info["model"],
        "native_bf16": info["native_bf16"],
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "photos": len(files),
        "precision": [r["precision"] for r in runs],
        "photos_per_s_median": statistics.median(r["photos_per_s"] for r in runs),
        "wall_s_median": statistics.median(r["wall_s"] for r in runs),
        "runs": [{k: r[k] for k in ("photos_per_s", "seconds", "wall_s", "precision")} for r in runs],
    }
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
