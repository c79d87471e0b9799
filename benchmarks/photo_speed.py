"""What converting a phone photo costs, per method, and whether the cheaper cut-out changes what a model says.

Every photo is decoded once; then the methods convert it in turn (A, B, A, B, ... photo by photo, so a load
that comes and goes on a shared machine hits them alike). Per method: median CPU time of the process per photo
(time.process_time: all of OpenCV's threads, and little disturbed by other processes) and median wall time.
With a run, its predictions on the converted photos: accuracy, and agreement with the first method's labels.

- `--dev` (default ../shared/realphotos-dev, 80 photos): where settings are chosen;
- `--val` (default ../shared/clothing-photos/validation, its six Fashion-MNIST folders via --class-map, 264
  photos): where the chosen setting is reported, never tuned on.

A method "grabcut@SIDExITERS" is GrabCut on a SIDE-pixel copy in ITERS iterations (the dev sweep). With
--with-decode the time includes decoding the file, and a method ending in "+draft" (e.g. grabcut+draft) decodes a
JPEG at the smallest 1/2, 1/4 or 1/8 scale that keeps twice the cut-out's working copy (photos.DECODE_SIDE: what
predict and serve do for 28x28 runs).

    .venv/bin/python benchmarks/photo_speed.py --run RUN [--methods grabcut-full,grabcut] [--sets dev,val] \
        [--out benchmarks/results/photo_speed.json]
"""

import argparse
import json
import statistics
import time
from datetime import UTC, datetime

import cv2
import numpy as np
import torch

from fashionclf.core.io import atomic_write_text
from fashionclf.data import photos
from fashionclf.data.folders import mapped_items, parse_class_map
from fashionclf.data.images import load_rgb

MAP = "t-shirt=T-shirt/top,pants=Trouser,dress=Dress,outwear=Coat,shirt=Shirt,longsleeve=Pullover,hat=-,shoes=-,shorts=-,skirt=-"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def register(method: str) -> str:
    """Make "grabcut@SIDExITERS" a method of fashionclf.data.photos for this process."""
    if method.startswith("grabcut@"):
        side, iters = method.removeprefix("grabcut@").removesuffix("+draft").split("x")
        photos.GRABCUT[method.removesuffix("+draft")] = (int(side), int(iters))
        photos.METHODS = (*photos.METHODS, method.removesuffix("+draft"))
    return method


def convert_all(blobs: list[bytes], methods: list[str], with_decode: bool) -> tuple[dict, dict, dict]:
    """Each photo converted by each method in turn; with_decode: the timing includes decoding the file's bytes
    (a method ending in "+draft" decodes a JPEG at the smallest scale the cut-out's working copy allows)."""
    images = {m: [] for m in methods}
    cpu = {m: [] for m in methods}
    wall = {m: [] for m in methods}
    for blob in blobs:
        full = None if with_decode else load_rgb(blob)
        for m in methods:
            c0, w0 = time.process_time(), time.perf_counter()
            draft = m.endswith("+draft")
            rgb = full if full is not None and not draft else load_rgb(blob, at_least=photos.DECODE_SIDE if draft else None)
            images[m].append(photos.to_fashion_mnist(rgb, m.removesuffix("+draft")).image)
            cpu[m].append(time.process_time() - c0)
            wall[m].append(time.perf_counter() - w0)
    return images, cpu, wall


def score(run, images: dict, labels: np.ndarray, methods: list[str]) -> dict:
    preds = {m: run.logits(torch.as_tensor(np.stack(images[m]))).argmax(1).numpy() for m in methods}
    ref = preds[methods[0]]
    return {
        m: {
            "accuracy": float((preds[m] == labels).mean()),
            "correct": int((preds[m] == labels).sum()),
            "same_label_as_" + methods[0]: int((preds[m] == ref).sum()),
            "changed_files": [],
        }
        for m in methods
    }, preds


def one_set(name: str, items: list, methods: list[str], run, with_decode: bool = False) -> dict:
    blobs = [p.read_bytes() for p, _ in items]
    labels = np.array([y for _, y in items])
    images, cpu, wall = convert_all(blobs, methods, with_decode)
    out = {"photos": len(items), "methods": {}}
    for m in methods:
        out["methods"][m] = {
            "cpu_ms_median": 1000 * statistics.median(cpu[m]),
            "cpu_ms_mean": 1000 * statistics.fmean(cpu[m]),
            "wall_ms_median": 1000 * statistics.median(wall[m]),
            "cheaper_than_" + methods[0]: statistics.median(cpu[methods[0]]) / statistics.median(cpu[m]),
        }
    base = images[methods[0]]
    for m in methods:
        diff = [float(np.abs(a.astype(int) - b).mean()) for a, b in zip(images[m], base)]
        out["methods"][m]["mean_abs_pixel_diff_vs_" + methods[0]] = statistics.fmean(diff)
    if run is not None:
        scores, preds = score(run, images, labels, methods)
        for m in methods:
            scores[m]["changed_files"] = [str(items[i][0]) for i in np.flatnonzero(preds[m] != preds[methods[0]])]
            out["methods"][m].update(scores[m])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", help="a trained 28x28 run folder; without it only the time is measured")
    ap.add_argument("--methods", default="grabcut-full,grabcut", help="comma-separated; the first is the reference")
    ap.add_argument("--sets", default="dev,val")
    ap.add_argument("--dev", default="../shared/realphotos-dev")
    ap.add_argument("--val", default="../shared/clothing-photos/validation")
    ap.add_argument("--class-map", default=MAP, help="folder=class for --val (the map of docs/results/shop-photos.md)")
    ap.add_argument("--with-decode", action="store_true", help="time decoding the file too (needed for +draft methods)")
    ap.add_argument("--out", default="benchmarks/results/photo_speed.json")
    args = ap.parse_args()
    methods = [register(m) for m in args.methods.split(",")]
    if any(m.endswith("+draft") for m in methods) and not args.with_decode:
        ap.error("a +draft method differs from the others in how the file is decoded: time the decoding too (--with-decode)")
    run = None
    if args.run:
        from fashionclf.engine.runs import load_run

        run = load_run(args.run)
    classes = run.classes if run is not None else CLASSES
    sets = {"dev": (args.dev, None), "val": (args.val, parse_class_map(args.class_map))}
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "opencv": cv2.__version__,
        "opencv_threads": cv2.getNumThreads(),
        "run": args.run,
        "methods": {m: photos.GRABCUT.get(m.removesuffix("+draft")) for m in methods},
        "with_decode": args.with_decode,
        "draft_decode_side": photos.DECODE_SIDE,
        "sets": {},
    }
    for name in args.sets.split(","):
        folder, cmap = sets[name]
        r = one_set(name, mapped_items(folder, classes, cmap), methods, run, args.with_decode)
        result["sets"][name] = {"folder": folder, **r}
        for m, v in r["methods"].items():
            agree = f", same label {v['same_label_as_' + methods[0]]}/{r['photos']}, accuracy {v['accuracy']:.3f}" if run else ""
            print(f"{name} {m}: cpu {v['cpu_ms_median']:.1f} ms (x{v['cheaper_than_' + methods[0]]:.2f}){agree}", flush=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
