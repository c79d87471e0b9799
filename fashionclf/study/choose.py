"""The study report's recommendation: which model a shop should take, by a rule the report states.

Two rules, chosen with `compare --choose-by`: "accuracy" (the default: equally accurate models, the most robust, then
the fastest) and "auto-share" (the largest share labelled with no person by the review rule). Both use
validation figures only; the test split only reports.
"""

from __future__ import annotations

from fashionclf.study.robust import measured, score, score_words

CHOOSE_BY = ("accuracy", "auto-share")


def check_rule(by: str, val_items: int | None = None) -> None:
    """A ValueError for an unknown rule, or for auto-share on a validation split too small to cross-fit (before training)."""
    if by not in CHOOSE_BY:
        raise ValueError(f"choose by {by!r}: expected one of {', '.join(CHOOSE_BY)}")
    if by == "auto-share" and val_items is not None and val_items < 10:
        raise ValueError(f"choose by auto-share needs at least 10 validation items to cross-fit the review rule; the data have {val_items}")


# Recommendation rule, stated in the report: models within this many points of the best mean validation accuracy
# count as equally accurate; among them the most robust wins where robustness was measured, else the fastest.
ACCURACY_TOLERANCE = 0.01


def recommend(rows: list[dict], tolerance: float = ACCURACY_TOLERANCE, by: str = "accuracy") -> tuple[dict, str]:
    """Pick a production model by a stated rule, on validation figures only (robustness: validation images, photos).

    by "accuracy": among the models within `tolerance` of the best mean validation accuracy, the highest robustness
    score (the mean of the robustness figures measured for all of them), then the fastest inference, then the fewest
    parameters. by "auto-share": the largest share of validation items the review rule labels with no person
    (cross-fitted, evaluation/calibrate.crossfit_review), then validation accuracy (what a shop pays for).
    """
    if by == "auto-share":
        return _by_auto_share(rows)
    check_rule(by)
    best_val = max(r["val_mean"] for r in rows)
    tier = [r for r in rows if r["val_mean"] >= best_val - tolerance - 1e-12]  # "within": the edge counts
    figures = measured(tier)
    if figures:
        pick = max(tier, key=lambda r: (score(r, figures), r["images_per_s"], -r["params"]))
        why = f"the highest robustness score ({score_words(figures)}), then the fastest inference, then the fewest parameters"
        names = ", ".join(f"{r['model']} (robustness score {score(r, figures) * 100:.2f}%)" for r in tier)
        robust = f"robustness score {score(pick, figures) * 100:.2f}%, "
    else:
        pick = max(tier, key=lambda r: (r["images_per_s"], -r["params"]))
        why = "the fastest inference, then the fewest parameters (robustness not measured in this study)"
        names, robust = ", ".join(r["model"] for r in tier), ""
    text = (
        f"Rule: among the models whose mean validation accuracy is within {tolerance * 100:.1f} points of the best "
        f"({best_val * 100:.2f}%), take the one with {why}. Candidates: {names}. "
        f"Recommended: **{pick['model']}** (test accuracy {pick['acc_mean'] * 100:.2f} ± {pick['acc_std'] * 100:.2f}%, "
        f"{robust}{pick['params']:,d} parameters, {pick['images_per_s']:,.0f} images/s)."
    )
    return pick, text


def _by_auto_share(rows: list[dict]) -> tuple[dict, str]:
    missing = [r["model"] for r in rows if r.get("val_auto") is None]
    if missing:
        why = "fewer than 10 validation items, or saved before it"
        raise ValueError(f"choose by auto-share: {', '.join(missing)} have no cross-fitted validation share ({why})")
    pick = max(rows, key=lambda r: (r["val_auto"], r["val_mean"]))
    names = ", ".join(f"{r['model']} ({_share(r)})" for r in rows)
    text = (
        "Rule: the largest share of validation items labelled with no person at 99% precision, each item decided by the "
        "temperature and threshold fitted on the other four fifths of the validation split (the share they label, and the "
        f"precision realised there), then validation accuracy. Candidates: {names}. Recommended: **{pick['model']}** "
        f"(test accuracy {pick['acc_mean'] * 100:.2f} ± {pick['acc_std'] * 100:.2f}%, {pick['params']:,d} parameters, "
        f"{pick['images_per_s']:,.0f} images/s)."
    )
    return pick, text


def _share(r: dict) -> str:
    prec = r.get("val_auto_precision")
    at = f" at {prec * 100:.1f}% precision" if prec is not None else ""
    return f"{r['val_auto'] * 100:.1f} ± {r['val_auto_std'] * 100:.1f}% automatic{at}"
