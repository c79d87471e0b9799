"""Is B better than A? Exact McNemar tests per seed pair, and the verdict they add up to.

Two groups of runs (two models, two resolutions, two recipes), each a mapping seed -> per-item
correctness on the same test items. Runs of the same seed are paired; every pair gets its own
McNemar test, and the verdict depends on how many pairs are significant:

- all of them, and the gain is positive: a real gain;
- all of them, and the gain is not positive: a real loss;
- none: not distinguishable from noise;
- some: not consistent across seeds.

The words differ by report (STEP_WORDS for the study's "Is each step's gain real?", RESOLUTION_WORDS
for the resolution study's last step); the rule does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from fashionclf.evaluation.metrics import mcnemar

SIGNIFICANCE = 0.05  # McNemar p below this counts as a real difference

# kind -> the verdict's words. Keys: "gain" and "loss" (every pair significant), "none" (no pair), "some".
STEP_WORDS = {
    "gain": "a real gain",
    "loss": "a real loss",
    "none": "not distinguishable from noise",
    "some": "not consistent across seeds",
}
# The resolution report has always said "undecided" when every pair is significant but the mean gain
# is not positive (fewer pixels were better); kept so that its reports rebuild identically.
RESOLUTION_WORDS = {
    "gain": "still climbing: sharper images would pay",
    "loss": "significant in some seeds only: undecided, more seeds would tell",
    "none": "flat within noise: more pixels would not pay",
    "some": "significant in some seeds only: undecided, more seeds would tell",
}


@dataclass
class SeedPairs:
    """The per-pair tests of two groups and their verdict.

    pairs: one dict per seed both groups ran, in the order of group A: seed, b (items only A gets
    right), c (items only B gets right), p, accuracy_a, accuracy_b (fractions), significant.
    gain: points of accuracy B - A (the caller's figure, or the mean of the pairs' differences).
    kind: "gain", "loss", "none" or "some"; None without pairs. word: kind in the words asked for.
    """

    pairs: list[dict] = field(default_factory=list)
    significant: int = 0
    gain: float = 0.0
    kind: str | None = None
    word: str | None = None


def verdict_kind(significant: int, pairs: int, gain: float) -> str | None:
    """The rule: every pair significant -> "gain" (gain > 0) or "loss"; no pair -> "none"; else "some"."""
    if pairs == 0:
        return None
    if significant == pairs:
        return "gain" if gain > 0 else "loss"
    return "none" if significant == 0 else "some"


def compare_seeds(
    a: Mapping, b: Mapping, gain: float | None = None, words: Mapping[str, str] = STEP_WORDS, alpha: float = SIGNIFICANCE
) -> SeedPairs:
    """McNemar per seed pair between group A and group B (seed -> per-item correctness, bools).

    Seeds only one group ran are left out. gain: points B - A to judge the verdict's sign by
    (e.g. the difference of the groups' mean accuracies); by default the mean over the pairs of
    (accuracy B - accuracy A) * 100.
    """
    pairs, diffs = [], []
    for seed, ca in a.items():
        if seed not in b:
            continue
        ca, cb = np.asarray(ca, bool), np.asarray(b[seed], bool)
        if ca.shape != cb.shape:
            raise ValueError(f"seed {seed}: {ca.shape[0]} items against {cb.shape[0]}; McNemar pairs the same items")
        t = mcnemar(ca, cb)
        pairs.append({"seed": seed, **t, "accuracy_a": ca.mean(), "accuracy_b": cb.mean(), "significant": t["p"] < alpha})
        diffs.append((cb.mean() - ca.mean()) * 100)
    significant = sum(p["significant"] for p in pairs)
    if gain is None:
        gain = float(np.mean(diffs)) if diffs else 0.0
    kind = verdict_kind(significant, len(pairs), gain)
    return SeedPairs(pairs, significant, gain, kind, words[kind] if kind else None)
