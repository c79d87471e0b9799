"""Which head on the stored features: linear (the default), linear on per-backbone L2-normalised features, a small MLP.
Chosen on the validation split; the test split is reported for each so the choice can be checked, not made, on it.

    .venv/bin/python experiments/embed_once/heads.py --store STORE --data ../shared/clothing-photos/train \
        --val-data ../shared/clothing-photos/validation --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from fashionclf.data.folders import load_image_folder
from fashionclf.engine.inference import head_view_logits
from fashionclf.training.embedded import StoreDecoder, _open, fit_head


def l2_per_backbone(v: torch.Tensor, parts: int) -> torch.Tensor:
    chunks = v.chunk(parts, dim=-1)
    return torch.cat([c / c.norm(dim=-1, keepdim=True).clamp_min(1e-6) for c in chunks], -1)


def mlp(train_v, train_y, val_v, val_y, classes, hidden=512, epochs=150, decay=0.05, seed=0):
    torch.manual_seed(seed)
    rows, ys = train_v.reshape(-1, train_v.shape[-1]), train_y.repeat_interleave(train_v.shape[1])
    mean, std = rows.mean(0), rows.std(0).clamp_min(1e-6)
    net = torch.nn.Sequential(
        torch.nn.Dropout(0.5),
        torch.nn.Linear(rows.shape[1], hidden),
        torch.nn.GELU(),
        torch.nn.Dropout(0.3),
        torch.nn.Linear(hidden, classes),
    )
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=decay)
    x = (rows - mean) / std
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(x)).split(256):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[idx]), ys[idx], label_smoothing=0.1).backward()
            opt.step()
    net.eval()

    class Head(torch.nn.Module):
        def forward(self, v):
            return net((v - mean) / std)

    return Head()


def acc(head, v, y):
    return (head_view_logits(head, v)[0].argmax(1) == y).float().mean().item()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--store", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--val-data")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args()
    st, model = _open(args.store)
    out = {}
    for seed in args.seeds:
        ds, _ = load_image_folder(args.data, args.val_data, model.image_size, split_seed=seed, decoder=StoreDecoder(st, model))
        k, n = len(model.keys), len(ds.classes)
        for name, fit in {
            "linear": lambda a, b, c, d, n=n: fit_head(a, b, c, d, n)[0],
            "linear-l2": lambda a, b, c, d, n=n, k=k: fit_head(l2_per_backbone(a, k), b, l2_per_backbone(c, k), d, n)[0],
            "mlp": lambda a, b, c, d, n=n, s=seed: mlp(a, b, c, d, n, seed=s),
        }.items():
            t = time.perf_counter()
            head = fit(ds.train_x, ds.train_y, ds.val_x, ds.val_y)
            tv = (l2_per_backbone(ds.val_x, k), l2_per_backbone(ds.test_x, k)) if name == "linear-l2" else (ds.val_x, ds.test_x)
            out.setdefault(name, []).append(
                {"val": acc(head, tv[0], ds.val_y), "test": acc(head, tv[1], ds.test_y), "s": time.perf_counter() - t}
            )
    summary = {
        n: {k: (statistics.mean(r[k] for r in rs), statistics.pstdev(r[k] for r in rs)) for k in ("val", "test", "s")}
        for n, rs in out.items()
    }
    print(json.dumps({"runs": out, "mean_std": summary}, indent=1))


if __name__ == "__main__":
    main()
