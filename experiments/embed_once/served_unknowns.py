""" "None of these" as served: `fashionclf predict --json` lines of a store run, against the scores of the stored vectors.

Reads the JSON lines `fashionclf predict RUN FOLDERS... --json` wrote for photos the run never saw a class of, and
says what share it answered "none of these" and labelled with no person, and how far each served `unknown_score`
(features the served network recomputed) lies from the score of the same photo's vectors in the store.

    .venv/bin/fashionclf predict RUN train/hat train/shoes train/shorts train/skirt --json > unseen.jsonl
    .venv/bin/python experiments/embed_once/served_unknowns.py RUN --store STORE --predictions unseen.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fashionclf.embed.store import EmbeddingStore
from fashionclf.engine.inference import head_view_logits
from fashionclf.engine.runs import load_run
from fashionclf.evaluation.novelty import embedding_score


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("--store", required=True)
    p.add_argument("--predictions", required=True, help="the JSON lines of `fashionclf predict RUN ... --json`")
    args = p.parse_args()
    rows = [json.loads(line) for line in Path(args.predictions).read_text().splitlines() if line.strip()]
    run, store = load_run(args.run), EmbeddingStore(args.store)
    v = torch.from_numpy(store.vectors(store.hashes([Path(r["file"]) for r in rows])))
    stored = embedding_score(run.novelty, v, head_view_logits(run.model.head, v, run.config.tta)[1])
    served = torch.tensor([r["unknown_score"] for r in rows])
    threshold = run.metrics["unknown"]["thresholds"]["embedding"]
    out = {
        "photos": len(rows),
        "none_of_these": sum(r["unknown"] for r in rows) / len(rows),
        "labelled_with_no_person": sum(not r["needs_review"] for r in rows) / len(rows),
        "max_abs_served_minus_stored": (served - stored).abs().max().item(),
        "verdicts_that_differ": int(((served > threshold) != (stored > threshold)).sum()),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
