"""Robustness in the study report: the figures the recommendation weighs, the corruption-suite section, and
the answer to the seed study's claim that its augmented Model 4 (advanced_cnn) is the robust one.

Rows are fashionclf.study.report.summarize's: 'corrupted' (the corruption suite's mean accuracy on validation
images) and 'photo' (accuracy on labelled photos), each a mean over seeds with its std, or None where not measured.
"""

from __future__ import annotations

import numpy as np

from fashionclf.study.blocks import Block, Figure, Heading, Paragraph, Table
from fashionclf.study.figures import fig_severity

# The robustness figures, in the order the report states them: summarize's key and the words for it.
FIGURES = {"corrupted": "corrupted mean accuracy", "photo": "photo accuracy"}
CLAIM_MODEL = "advanced_cnn"  # the seed study's Model 4, recommended as "robust to imperfect real-world input"


def measured(rows: list[dict]) -> list[str]:
    """The robustness figures (keys of FIGURES) measured for every one of rows; [] when rows is empty."""
    return [k for k in FIGURES if rows and all(r.get(k) is not None for r in rows)]


def score(row: dict, figures: list[str]) -> float:
    """The robustness score: the mean of the row's figures named (each weighs the same)."""
    return sum(row[k] for k in figures) / len(figures)


def score_words(figures: list[str]) -> str:
    """What the robustness score is, in words."""
    if len(figures) == 1:
        return f"its {FIGURES[figures[0]]}"
    return "the mean of its " + " and its ".join(FIGURES[k] for k in figures)


def cell(row: dict, key: str) -> str:
    """A figure as 'mean ± std' in percent, '-' where not measured."""
    if row.get(key) is None:
        return "-"
    return f"{row[key] * 100:.2f} ± {row[key + '_std'] * 100:.2f}"


def figure_note(rows: list[dict], reports: dict[str, list[dict]], photos: dict | None) -> str:
    """What the comparison table's robustness columns measure (empty when neither was measured)."""
    notes = []
    first = next((reps[0] for reps in reports.values() if reps), None)
    if first is not None and any(r.get("corrupted") is not None for r in rows):
        notes.append(
            f"corrupted mean: the corruption suite's mean accuracy over {len(first['corruptions'])} corruptions at severities "
            f"1-5 on the first {first['images']:,d} {first.get('split', 'test')} images (section below)"
        )
    if photos and any(r.get("photo") is not None for r in rows):
        notes.append(
            f"photo acc: accuracy on the {photos['images']:,d} labelled photos of {photos['folder']}, converted as predict converts photos"
        )
    return ("Test and validation accuracy are on clean images; " + "; ".join(notes) + ".") if notes else ""


def robustness_blocks(reports: dict[str, list[dict]]) -> list[Block]:
    """The corruption suite per model (mean over the seeds that have it), from each run's robustness.json."""
    found = {m: reps for m, reps in reports.items() if reps}
    if not found:
        return []
    first = next(iter(found.values()))[0]
    names = list(first["corruptions"])
    table, curves, clean = [], {}, {}
    for m, reps in found.items():
        per = {c: np.mean([np.mean(rep["corruptions"][c]) for rep in reps]) for c in names}
        clean[m] = float(np.mean([rep["clean"] for rep in reps]))
        curves[m] = [float(np.mean([np.mean([rep["corruptions"][c][s] for c in names]) for rep in reps])) for s in range(5)]
        mean = float(np.mean([rep["mean"] for rep in reps]))
        table.append([m, f"{clean[m] * 100:.1f}", f"{mean * 100:.1f}", *(f"{per[c] * 100:.0f}" for c in names)])
    return [
        Heading("Robustness: the corruption suite"),
        Paragraph(
            f"{len(names)} corruptions at severities 1-5 on the first {first['images']:,d} {first.get('split', 'test')} images "
            "(`fashionclf robustness RUN` runs it on the test set). Accuracy %, mean over severities and seeds."
        ),
        Table(["model", "clean", "corrupted (mean)", *names], table),
        Figure("robustness.png", fig_severity(curves, clean), "accuracy against corruption severity"),
    ]


def _standing(claim: dict, others: list[dict], key: str) -> str:
    """One figure: the claim model's value against each other model's, and where that puts it."""
    against = ", ".join(f"{r['model']} {r[key] * 100:.2f}%" for r in others)
    best = max(others, key=lambda r: r[key])
    rank = 1 + sum(r[key] > claim[key] for r in others)
    if f"{claim[key] * 100:.2f}" == f"{best[key] * 100:.2f}":  # equal as the report shows them
        where = f"level with {best['model']}, the highest of the {len(others) + 1} models"
    elif rank == 1:
        where = f"the highest of the {len(others) + 1} models, {(claim[key] - best[key]) * 100:.2f} points above {best['model']}"
    else:
        where = f"rank {rank} of {len(others) + 1}, {(best[key] - claim[key]) * 100:.2f} points below {best['model']}"
    return f"its {FIGURES[key]} is {claim[key] * 100:.2f}% against {against}: {where}"


def _noise(a: dict, b: dict, figures: list[str], gap: float) -> str:
    """Whether a gap in robustness score is within the spread over seeds (only said with several seeds)."""
    if min(a["n"], b["n"]) < 2:
        return " (a single seed: no spread over seeds to weigh the gap against)"
    spread = max(r[k + "_std"] for r in (a, b) for k in figures)
    if gap < spread:
        return f"; the gap is within the spread over seeds (std up to {spread * 100:.2f} points)"
    return f"; the gap is larger than the spread over seeds (std up to {spread * 100:.2f} points)"


def claim_blocks(rows: list[dict]) -> list[Block]:
    """Is Model 4 (advanced_cnn) the robust one? Its figures against every other model's, computed from the rows."""
    claim = next((r for r in rows if r["model"] == CLAIM_MODEL), None)
    others = [r for r in rows if r is not claim]
    figures = measured(rows)
    if claim is None or not others or not figures:
        return []
    parts = [_standing(claim, others, k) for k in figures]
    rival = max(others, key=lambda r: score(r, figures))
    mine, theirs = score(claim, figures), score(rival, figures)
    if f"{mine * 100:.2f}" == f"{theirs * 100:.2f}":  # equal as the report shows them
        verdict = (
            f"On these figures {CLAIM_MODEL} shares the highest robustness score ({score_words(figures)}) of this study with "
            f"{rival['model']}, {mine * 100:.2f}%."
        )
    elif mine > theirs:
        verdict = (
            f"On these figures {CLAIM_MODEL} is the most robust model of this study: robustness score ({score_words(figures)}) "
            f"{mine * 100:.2f}% against {theirs * 100:.2f}% for the next, {rival['model']}{_noise(claim, rival, figures, mine - theirs)}."
        )
    else:
        verdict = (
            f"On these figures {CLAIM_MODEL} is not the most robust model of this study: {rival['model']} has the highest robustness "
            f"score ({score_words(figures)}), {theirs * 100:.2f}% against {mine * 100:.2f}%{_noise(claim, rival, figures, theirs - mine)}."
        )
    text = (
        f'The seed study recommended its augmented Model 4 ({CLAIM_MODEL}) for production because augmentation "makes it robust '
        f'to imperfect real-world input". Measured here, mean over seeds: {"; ".join(parts)}. {verdict}'
    )
    return [Heading("Is Model 4 the robust one?"), Paragraph(text)]
