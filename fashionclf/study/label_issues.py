"""The label-issues report: training images whose label the out-of-fold model doubts."""

from __future__ import annotations

import numpy as np

from fashionclf.evaluation.analysis import label_issues
from fashionclf.study.blocks import Block, Figure, Heading, Paragraph, Table
from fashionclf.study.figures import fig_gallery


def label_issue_blocks(x_u8, labels, oof_probs, classes, limit: int = 40) -> tuple[list[Block], list[dict]]:
    """Likely label errors in a labelled set from out-of-fold probabilities (confident learning)."""
    issues = label_issues(oof_probs, labels)
    pairs: dict[tuple[str, str], int] = {}
    for i in issues:
        key = (classes[i["label"]], classes[i["suggested"]])
        pairs[key] = pairs.get(key, 0) + 1
    top_pairs = sorted(pairs.items(), key=lambda kv: -kv[1])[:10]
    rows = [
        [i["index"], classes[i["label"]], classes[i["suggested"]], f"{i['p_label']:.3f}", f"{i['p_suggested']:.3f}"] for i in issues[:limit]
    ]
    blocks: list[Block] = [
        Heading("Likely label errors in the training data", 1),
        Paragraph(
            f"{len(issues)} of {len(labels):,d} training images are flagged: the out-of-fold model gives their label less than "
            "that class's mean self-confidence and another class at least its own (confident learning, Northcutt et al. 2021). "
            "Flagged is not proven wrong: many are ambiguous items (Shirt vs T-shirt/top vs Pullover)."
        ),
        Table(["given label", "suggested", "items"], [[a, b, n] for (a, b), n in top_pairs]),
        Table(["index", "given label", "suggested", "p(given)", "p(suggested)"], rows),
    ]
    items = [(i["index"], f"#{i['index']} {classes[i['label']][:8]}→{classes[i['suggested']][:8]}") for i in issues[:limit]]
    if items:
        blocks.append(Figure("label_issues.png", fig_gallery(np.asarray(x_u8), items), "most likely label errors (given→suggested)"))
    return blocks, issues
