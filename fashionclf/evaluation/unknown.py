"""The "none of these" answer: when an image belongs to none of a run's classes.

Two ways, both recorded in the run's metrics.json under "unknown" (plain JSON, read back by load_run):

- an out-of-distribution score on the logits the model already computes, higher meaning less like the
  training classes: the energy score -T * logsumexp(logits / T) with T = 1 (Liu et al., 2020), the
  default; the maximum calibrated softmax probability as 1 - confidence (Hendrycks and Gimpel, 2017);
  and the negated maximum logit (Hendrycks et al., 2022). Under mirror TTA the run's logits are
  log-probabilities, whose logsumexp is 0, so energy and maxlogit take the two views' mean raw logits
  (view_logits). Its threshold is fitted on the validation split
  when the run is saved: the lowest score at or below which `known_share` (default 95%) of the validation
  images fall, so that share of in-distribution images counts as known. Every score's threshold is
  fitted, so a caller that has only calibrated probabilities (ONNX, MLflow) uses "msp" with its own.
- a negative class: a class folder named other, others, none, negative or negatives trains as a class
  of its own (as Azure Custom Vision's negative tag), and a prediction of it is unknown too.

experiments/unknown_categories/ measured these and two scores on penultimate features (Mahalanobis, kNN)
on four clothing categories left out of training; energy stayed, none beating it beyond noise on
validation (docs/results/unknown-categories.md). A run on stored embeddings (training/embedded.py) uses the
"embedding" score instead (evaluation/novelty.py: kNN and Mahalanobis distances to its training photos plus the
energy), which did beat it there (docs/results/embed-once.md); its threshold is fitted on validation alone.
"""

from __future__ import annotations

import math

import torch

from fashionclf.evaluation.novelty import EMBEDDING_SCORE

DEFAULT_KNOWN_SHARE = 0.95  # share of in-distribution validation images counted known (the usual TPR 95%)
DEFAULT_SCORE = "energy"
ENERGY_TEMPERATURE = 1.0  # Liu et al.'s choice; the energy is not the calibrated softmax
SCORES = ("energy", "msp", "maxlogit")  # runs.py's schema lists the same names
PROBABILITY_SCORE = "msp"  # the one a caller with calibrated probabilities alone can compute
NEGATIVE_NAMES = ("other", "others", "none", "negative", "negatives")  # folder names of a negative class


def score(name: str, logits: torch.Tensor | None = None, probs: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
    """Per row, how little it looks like the training classes (higher: more likely unknown).

    energy and maxlogit need the logits; msp needs the calibrated probabilities (softmax(logits / T_cal)).
    """
    if name == "energy":
        return -temperature * torch.logsumexp(logits.float() / temperature, dim=1)
    if name == "maxlogit":
        return -logits.float().max(1).values
    if name == "msp":
        return 1 - probs.float().max(1).values
    raise ValueError(f"unknown out-of-distribution score {name!r}; valid: {', '.join(SCORES)}")


def threshold_for(scores: torch.Tensor, known_share: float) -> float | None:
    """The lowest value at or below which `known_share` of the (finite) scores fall; None if there are none."""
    s = scores[torch.isfinite(scores)].double().sort().values
    if len(s) == 0:
        return None
    k = max(0, math.ceil(known_share * len(s) - 1e-9) - 1)
    return float(s[min(k, len(s) - 1)])


def negative_classes(classes: list[str]) -> list[str]:
    """The classes whose name marks a negative class ("other", "none", ...), compared ignoring case and punctuation."""
    from fashionclf.data.folders import norm_name

    return [c for c in classes if norm_name(c) in NEGATIVE_NAMES]


def fit_unknown(
    val_logits: torch.Tensor | None,
    temperature: float,
    classes: list[str],
    known_share: float = DEFAULT_KNOWN_SHARE,
    score_name: str = DEFAULT_SCORE,
    raw: torch.Tensor | None = None,
    embedding: torch.Tensor | None = None,
) -> dict | None:
    """The "unknown" record of metrics.json: the score, its setting and every score's threshold fitted on the
    validation logits (None without validation images), and the negative classes. None where there is neither
    a validation split nor a negative class: such a run says nothing is unknown.

    val_logits as the run predicts (with its TTA); raw: the views' mean raw logits where they differ (view_logits).
    embedding: the validation photos' embedding scores (evaluation/novelty.py); with them the run's score is that one."""
    if not 0 < known_share <= 1:
        raise ValueError(f"known share {known_share}: expected a share in (0, 1], e.g. {DEFAULT_KNOWN_SHARE}")
    if score_name not in SCORES:
        raise ValueError(f"unknown out-of-distribution score {score_name!r}; valid: {', '.join(SCORES)}")
    negative = negative_classes(classes)
    if (val_logits is None or len(val_logits) == 0) and not negative:
        return None
    out: dict = {"score": score_name, "known_share": known_share, "temperature": ENERGY_TEMPERATURE}
    out["thresholds"] = dict.fromkeys(SCORES)
    if val_logits is not None and len(val_logits):
        scores = all_scores(val_logits, temperature, raw)
        out["thresholds"] = {name: threshold_for(s, known_share) for name, s in scores.items()}
    if embedding is not None and len(embedding):
        out["score"], out["thresholds"][EMBEDDING_SCORE] = EMBEDDING_SCORE, threshold_for(embedding, known_share)
    if negative:
        out["negative_classes"] = negative
    return out


def all_scores(logits: torch.Tensor, calibration_temperature: float = 1.0, raw: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Every score of SCORES: msp on the calibrated probabilities of the logits, the others on the raw logits
    (the logits themselves where raw is None: a run without TTA)."""
    probs = (logits.float() / calibration_temperature).softmax(1)
    raw = logits if raw is None else raw
    return {name: score(name, raw, probs, ENERGY_TEMPERATURE) for name in SCORES}


def view_logits(model, x_u8: torch.Tensor, tta: bool, **infer_kw) -> tuple[torch.Tensor, torch.Tensor]:
    """(the logits as the run predicts them, the raw logits its energy and maxlogit scores take): engine.inference's
    infer(raw=True), the same forward passes as the run's (TTA) inference."""
    from fashionclf.engine.inference import infer

    return infer(model, x_u8, tta=tta, raw=True, **infer_kw)


def scores_for(
    params: dict, logits: torch.Tensor | None, probs: torch.Tensor, embedding: torch.Tensor | None = None
) -> tuple[str, torch.Tensor]:
    """(score name, per-row scores) for a run's "unknown" record: its own score where what it takes is there (the
    raw logits, view_logits; for the "embedding" score its scores, infer.predict.run_scores), else the probability
    score (an ONNX graph or a caller that has calibrated probabilities only)."""
    name = params["score"] if logits is not None else PROBABILITY_SCORE
    if name == EMBEDDING_SCORE:
        if embedding is not None:
            return name, embedding
        name = PROBABILITY_SCORE
    if name == PROBABILITY_SCORE:
        return name, score(name, probs=probs)
    return name, score(name, logits, temperature=params.get("temperature", ENERGY_TEMPERATURE))


def unknown_flags(
    params: dict | None, classes: list[str], top: torch.Tensor, name: str | None, scores: torch.Tensor | None
) -> torch.Tensor:
    """True where an item is unknown: its score above the fitted threshold, or its top class a negative class.

    A score that is not a finite number (a damaged model) decides nothing; such rows are flagged for review anyway.
    """
    flags = torch.zeros(len(top), dtype=torch.bool)
    if not params:
        return flags
    threshold = (params.get("thresholds") or {}).get(name) if name else None
    if scores is not None and threshold is not None:
        flags |= torch.isfinite(scores) & (scores > threshold)
    from fashionclf.data.folders import norm_name

    names = {norm_name(c) for c in params.get("negative_classes") or []}
    negative = [i for i, c in enumerate(classes) if norm_name(c) in names]
    if negative:
        flags |= torch.isin(top, torch.tensor(negative))
    return flags


def auroc(known: torch.Tensor, unknown: torch.Tensor) -> float:
    """Area under the ROC curve of telling unknown from known by a score (higher: unknown); ties count one half.

    The Mann-Whitney U statistic over all known-unknown pairs: 1 separates them perfectly, 0.5 is chance.
    """
    known, unknown = known.double().flatten(), unknown.double().flatten()
    if len(known) == 0 or len(unknown) == 0:
        raise ValueError("AUROC needs known and unknown items")
    both = torch.cat([known, unknown])
    values, order = both.sort()
    _, group, counts = torch.unique_consecutive(values, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    ranks = torch.empty_like(both)
    ranks[order] = ((ends - counts + 1 + ends) / 2)[group]  # tied values share their mean rank
    u = ranks[len(known) :].sum() - len(unknown) * (len(unknown) + 1) / 2
    return float(u / (len(known) * len(unknown)))


def known_share(
    params: dict, logits: torch.Tensor, calibration_temperature: float, raw: torch.Tensor | None = None, embedding=None
) -> float | None:
    """The share of a labelled set's items that the run's score counts known (about known_share on new
    in-distribution data); None where the run has no fitted threshold. raw: as for all_scores; embedding: scores_for's."""
    probs = (logits.float() / calibration_temperature).softmax(1)
    name, s = scores_for(params, logits if raw is None else raw, probs, embedding)
    threshold = (params.get("thresholds") or {}).get(name)
    if threshold is None or len(s) == 0:
        return None
    return float((s <= threshold).double().mean())
