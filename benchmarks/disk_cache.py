"""What `--data-cache disk` costs and saves on an image folder, each mode in a fresh process.

    .venv/bin/python benchmarks/disk_cache.py ../shared/clothing-photos/train --image-size 128 [--batch 64]

For each of memory, disk (first load: decoding into the cache files) and disk again (mapping the files),
a child process loads the folder as `train --data` does and reports: the load's wall time, anonymous
memory (RssAnon: what the kernel cannot drop) after the load, and the time to gather one epoch of
random training batches (x[idx] for every batch, what the training loop does before each step). On
disk the epoch is timed twice: with the file's pages in the page cache (warm, as when the folder fits
in memory), and after telling the kernel to drop them (posix_fadvise DONTNEED before each batch, as
when it does not fit and every batch is read from the disk). The cache goes to a temporary folder
(XDG_CACHE_HOME), removed at the end. Prints one line per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap

CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    import numpy as np
    import torch
    from fashionclf.data.folders import load_image_folder

    def anon():
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("RssAnon:")) * 1024

    folder, size, mode, batch = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    torch.set_num_threads(1)
    before = anon()
    t = time.perf_counter()
    ds, _ = load_image_folder(folder, image_size=size, cache=mode)
    out = {"load_s": time.perf_counter() - t, "anon_mb": (anon() - before) / 1e6, "images": len(ds.train_x)}
    x = ds.train_x
    files = [os.path.join(r, f) for r, _, fs in os.walk(os.environ["XDG_CACHE_HOME"]) for f in fs if f.endswith(".npy")]

    def epoch(cold):
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        t = time.perf_counter()
        for i in range(0, len(x), batch):
            if cold:
                for f in files:
                    fd = os.open(f, os.O_RDONLY)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    os.close(fd)
            x[perm[i : i + batch]].float()
        return time.perf_counter() - t

    epoch(False)
    out["epoch_warm_s"] = epoch(False)
    if mode == "disk":
        out["epoch_cold_s"] = epoch(True)
    print(json.dumps(out))
    """
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "XDG_CACHE_HOME": cache}
        for label, mode in (("memory", "memory"), ("disk, first load", "disk"), ("disk, files cached", "disk")):
            cmd = [sys.executable, "-c", CHILD, args.folder, str(args.image_size), mode, str(args.batch)]
            r = json.loads(subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout.splitlines()[-1])
            cold = f", cold {r['epoch_cold_s']:.2f} s" if "epoch_cold_s" in r else ""
            print(
                f"{label}: {r['images']} training images at {args.image_size} px; load {r['load_s']:.1f} s; "
                f"anonymous memory +{r['anon_mb']:.0f} MB; one epoch of batches of {args.batch}: warm {r['epoch_warm_s']:.2f} s{cold}"
            )


if __name__ == "__main__":
    main()
