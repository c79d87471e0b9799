"""The corruption suite over seeds: mean ± sample std per corruption, from `fashionclf robustness --json` files.

Each group is the JSON files of one recipe's seeds. Printed per group: the full test-set accuracy
(the run's metrics.json), clean accuracy on the suite's images, the mean over all 14 corruptions x
5 severities, the mean over --unseen corruptions (those no augmentation of the recipes imitates:
how the robustness carries over to corruptions it was not taught), then each corruption's mean
over its severities.

    .venv/bin/fashionclf robustness RUN --limit 2000 --json > RUN-robust.json
    .venv/bin/python experiments/robustness_seeds/robustness_seeds.py --group "robust=A.json,B.json,C.json" --group "photos=D.json" \
        --unseen impulse_noise,shear,jpeg,pixelate --out experiments/robustness_seeds/results/robustness_seeds.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fashionclf.core.io import atomic_write_text, to_json

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # experiments/, for common.py
import common  # noqa: E402


def summarise(rep: dict, unseen: list[str]) -> dict:
    per = {name: sum(accs) / len(accs) for name, accs in rep["corruptions"].items()}
    missing = [u for u in unseen if u not in per]
    if missing:
        raise SystemExit(f"--unseen {', '.join(missing)}: not in the suite; valid: {', '.join(per)}")
    metrics = json.loads((Path(rep["run"]) / "metrics.json").read_text())
    return {
        "run": rep["run"],
        "split": rep.get("split", "test"),
        "images": rep["images"],
        "test_accuracy": metrics["test_accuracy"],
        "clean": rep["clean"],
        "mean": rep["mean"],
        "unseen_mean": sum(per[u] for u in unseen) / len(unseen) if unseen else None,
        "corruptions": per,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_group_argument(ap, "FILE", "one recipe's `fashionclf robustness --json` files, one per seed (repeatable)")
    ap.add_argument("--unseen", default="", help="corruptions no augmentation imitates, comma-separated")
    ap.add_argument("--out", help="write every row as JSON here (experiments/robustness_seeds/results/ keeps the study's)")
    args = ap.parse_args()
    unseen = [u for u in args.unseen.split(",") if u]
    groups = {}
    for name, files in common.parse_groups(args.group).items():
        groups[name] = [summarise(json.loads(Path(f).read_text()), unseen) for f in files]
        if len({(r["split"], r["images"]) for r in groups[name]}) > 1:
            raise SystemExit(f"group {name}: the files mix splits or image counts; run them all alike")
    names = list(next(iter(groups.values()))[0]["corruptions"])
    head = ["runs", "seeds", "test (10,000)", "suite on", "clean", "corrupted mean"]
    head += [f"unseen mean ({', '.join(unseen)})"] if unseen else []
    print("| " + " | ".join(head + names) + " |")
    print("|" + "---|" * (len(head) + len(names)))
    for name, rows in groups.items():
        cols = [common.fmt_mean_std([r["test_accuracy"] for r in rows])]
        cols += [f"{rows[0]['images']:,} {rows[0]['split']}"]
        cols += [common.fmt_mean_std([r[k] for r in rows]) for k in ("clean", "mean")]
        cols += [common.fmt_mean_std([r["unseen_mean"] for r in rows])] if unseen else []
        cols += [common.fmt_mean_std([r["corruptions"][c] for r in rows]) for c in names]
        print(f"| {name} | {len(rows)} | " + " | ".join(cols) + " |")
    if args.out:
        atomic_write_text(Path(args.out), to_json({"unseen": unseen, "groups": groups}))


if __name__ == "__main__":
    main()
