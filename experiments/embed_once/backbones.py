"""Which backbones and views the default store holds, decided by measurement: every subset of Lite0/1/2, with and
without the mirror view, scored by a head on the same stored vectors (chosen on validation; test reported), and each
backbone's cost per photo and view timed on this machine.

    .venv/bin/python experiments/embed_once/backbones.py --store STORE --data ../shared/clothing-photos/train \
        --val-data ../shared/clothing-photos/validation --seeds 0 1 2 --out experiments/embed_once/results/backbones.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time

import torch

from fashionclf.data.folders import load_image_folder
from fashionclf.embed.extract import features
from fashionclf.engine.autotune import cpu_info
from fashionclf.engine.device import inference_precision
from fashionclf.engine.inference import head_view_logits
from fashionclf.models.frozen import FrozenLites
from fashionclf.training.embedded import StoreDecoder, _open, fit_head


def backbone_ms(key: str, side: int = 260, batch: int = 32, reps: int = 3) -> dict:
    """Milliseconds per photo and view for one backbone, in the precision measured fastest here."""
    m = FrozenLites(key, 1, True, side).eval()
    x = torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8)
    prec = inference_precision("auto", torch.device("cpu"), m, x, channels_last=True, name=f"frozen_{key}")
    features(m, x[:4], prec.dtype, prec.channels_last)  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        features(m, x, prec.dtype, prec.channels_last)  # both views
        times.append((time.perf_counter() - t) / (2 * batch) * 1000)
    return {"ms_per_view": statistics.median(times), "precision": "bf16" if prec.dtype is not None else "fp32"}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--store", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--val-data")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out")
    args = p.parse_args()
    st, model = _open(args.store)
    cost = {k: backbone_ms(k) for k in model.keys}
    dims = [net.num_features for net in model.nets]
    starts = [sum(dims[:i]) for i in range(len(dims))]
    rows = []
    for seed in args.seeds:
        ds, _ = load_image_folder(args.data, args.val_data, model.image_size, split_seed=seed, decoder=StoreDecoder(st, model))
        for r in range(1, len(model.keys) + 1):
            for subset in itertools.combinations(range(len(model.keys)), r):
                cols = torch.cat([torch.arange(starts[i], starts[i] + dims[i]) for i in subset])
                for views in (1, 2):
                    pick = [v[:, :views][:, :, cols] for v in (ds.train_x, ds.val_x, ds.test_x)]
                    head, chosen = fit_head(pick[0], ds.train_y, pick[1], ds.val_y, len(ds.classes))
                    acc = [
                        (head_view_logits(head, v)[0].argmax(1) == y).float().mean().item()
                        for v, y in ((pick[1], ds.val_y), (pick[2], ds.test_y))
                    ]
                    name = "+".join(model.keys[i] for i in subset)
                    rows.append({"seed": seed, "backbones": name, "views": views, "val": acc[0], "test": acc[1],
                                 "val_log_loss": min(chosen["val_log_loss"].values()),
                                 "ms_per_photo": views * sum(cost[model.keys[i]]["ms_per_view"] for i in subset)})  # fmt: skip
    summary = {}
    for (b, v), rs in itertools.groupby(
        sorted(rows, key=lambda r: (r["backbones"], r["views"])), key=lambda r: (r["backbones"], r["views"])
    ):
        rs = list(rs)
        summary[f"{b} x{v}"] = {
            k: (statistics.mean(r[k] for r in rs), statistics.pstdev(r[k] for r in rs)) for k in ("val", "val_log_loss", "test")
        }
        summary[f"{b} x{v}"]["ms_per_photo"] = rs[0]["ms_per_photo"]
    out = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_info(), "backbone_cost": cost, "summary": summary, "runs": rows}
    print(json.dumps({"backbone_cost": cost, "summary": summary}, indent=1))
    if args.out:
        open(args.out, "w").write(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
