"""The ready model: trained weights shipped inside the package, so photos are categorised with no training.

`fashionclf predict photo.jpg` and `fashionclf serve` with no run folder, and `fashionclf.load_run("default")`,
use the bundle in fashionclf/weights/default/. A bundle is a folder with `ready.json` and one run folder per
member; the first member's classes are the answer's. The members are asked together as `predict --with` asks
them (predict.joint_results), under a review rule fitted for them together on photos (fit_review), not the
rule each run fitted alone on scans.

ready.json records the SHA-256 of every file of the bundle: loading refuses a bundle whose files differ (one
changed weight byte is caught), and a member holds only JSON and safetensors, so nothing executes on load.
tools/ready_model.py builds the shipped bundle; write_bundle writes any bundle, atomically.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch

from fashionclf.core.io import to_json
from fashionclf.engine.runs import META, METRICS, NOVELTY, WEIGHTS, LoadedRun, RunError, load_run, read_json
from fashionclf.evaluation.calibrate import DEFAULT_DELTA, DEFAULT_TARGET_PRECISION, ece, fit_temperature, guaranteed_rule
from fashionclf.evaluation.unknown import DEFAULT_KNOWN_SHARE
from fashionclf.infer.predict import class_order, joint_calibrated

BUNDLE = "ready.json"
DEFAULT = "default"
SHIPPED = Path(__file__).parent.parent / "weights"  # fashionclf/weights: data, not code
MEMBER_FILES = (WEIGHTS, META, METRICS)  # what load_run reads; all checksummed
# the hub files, the history and a store run's "none of these" distances, kept (and checksummed) when present
OPTIONAL_FILES = ("config.json", "README.md", "history.csv", NOVELTY)
DAMAGED = "reinstall fashionclf (pip install --force-reinstall fashionclf) or rebuild it with `python tools/ready_model.py`"


def resolve(path: str | Path) -> Path | None:
    """The bundle a run argument names: "default" (the shipped one, unless a folder of that name exists here) or a
    folder holding ready.json; None for anything else (a plain run folder)."""
    if str(path) == DEFAULT and not Path(path).exists():
        if not (SHIPPED / DEFAULT / BUNDLE).is_file():
            raise RunError(f"the ready model is not installed ({SHIPPED / DEFAULT / BUNDLE} is missing); {DAMAGED}")
        return SHIPPED / DEFAULT
    return Path(path) if (Path(path) / BUNDLE).is_file() else None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_bundle(folder: Path) -> dict:
    """ready.json, checked: members, checksums and the review rule; RunError naming the first bad field."""
    spec = read_json(folder / BUNDLE)
    where = f"{folder / BUNDLE}"
    members, sums, review = spec.get("members"), spec.get("sha256"), spec.get("review")
    if not isinstance(members, list) or not members or not all(_plain_name(m) for m in members):
        raise RunError(f"{where}: 'members' must list the member folders by name; the bundle is damaged: {DAMAGED}")
    if not isinstance(sums, dict) or not all(isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in sums.items()):
        raise RunError(f"{where}: 'sha256' must map each file to its 64-digit SHA-256; the bundle is damaged: {DAMAGED}")
    if review is not None:
        review = review if isinstance(review, dict) else {}
        t, th, cuts = review.get("temperature"), review.get("threshold"), review.get("unknown_thresholds")
        ok_t = _number_or_none(t) and t is not None and t > 0
        ok_th = _number_or_none(th) and (th is None or 0 <= th <= 1)
        ok_u = cuts is None or (isinstance(cuts, list) and len(cuts) == len(members) and all(_number_or_none(c) for c in cuts))
        if not (ok_t and ok_th and ok_u):
            raise RunError(
                f"{where}: 'review' needs a positive temperature, a threshold in [0, 1] (or null) and, if given, one "
                f"unknown threshold (or null) per member: {DAMAGED}"
            )
    return spec


def _number_or_none(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))


def _plain_name(name) -> bool:
    return isinstance(name, str) and bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


def verify(folder: Path, spec: dict) -> None:
    """Every file a member needs is listed in ready.json and every listed file matches its SHA-256."""
    sums = spec["sha256"]
    for m in spec["members"]:
        missing = [f"{m}/{n}" for n in MEMBER_FILES if f"{m}/{n}" not in sums]
        missing += [f"{m}/{NOVELTY}"] if (folder / m / NOVELTY).exists() and f"{m}/{NOVELTY}" not in sums else []  # load_run reads it
        if missing:
            raise RunError(f"{folder / BUNDLE} records no SHA-256 for {', '.join(missing)}: {DAMAGED}")
    for rel, digest in sums.items():
        parts = rel.split("/")
        if len(parts) != 2 or not all(_plain_name(p) for p in parts):
            raise RunError(f"{folder / BUNDLE}: {rel!r} is not a member's file (MEMBER/FILE): {DAMAGED}")
        path = folder / rel
        if not path.is_file():
            raise RunError(f"{path} is missing from the ready model: {DAMAGED}")
        got = sha256(path)
        if got != digest:
            raise RunError(
                f"{path}: its SHA-256 {got[:16]}... differs from the {digest[:16]}... recorded in {BUNDLE}; "
                f"the file was changed or damaged: {DAMAGED}"
            )


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """The bundle's first member, with the others as its partners and the bundle's review rule."""
    folder = Path(path)
    spec = read_bundle(folder)
    verify(folder, spec)
    runs = [load_run(folder / m, device) for m in spec["members"]]
    try:
        for r in runs[1:]:
            class_order(runs[0], r)
    except ValueError as e:
        raise RunError(f"{folder / BUNDLE}: {e}") from None
    first = runs[0]
    first.partners, first.review = runs[1:], spec.get("review")
    first.meta = {**first.meta, "ready": {k: spec[k] for k in ("name", "members", "review") if k in spec}}
    return first


def one_run(run: LoadedRun, what: str) -> None:
    """Refuse a command that scores or exports one model when given a ready model (several runs): name its members."""
    if run.partners:
        members = ", ".join(str(r.path) for r in [run, *run.partners])
        raise ValueError(
            f"{what} takes one run; the ready model asks several together ({members}): give one of them, "
            "or see docs/results/ready-model.md for the figures of the pair (tools/ready_model.py)"
        )


def evaluate_photos(run: LoadedRun, folder: str | Path, class_map: dict | None = None, method: str = "grabcut") -> dict:
    """A ready model (several runs asked together) on labelled photos in class folders: evaluate's report for one
    run, from the bundle's joint probabilities and its own review rule, as `predict` decides them."""
    from fashionclf.data.fashion_mnist import DataError
    from fashionclf.data.folders import mapped_items
    from fashionclf.evaluation.metrics import classification_report
    from fashionclf.infer.predict import predict_files

    items = mapped_items(folder, run.classes, class_map)
    rows = list(predict_files(run, [p for p, _ in items], top_k=len(run.classes), method=method))
    kept = [(r, y) for r, (_, y) in zip(rows, items) if "error" not in r]
    if not kept:
        raise DataError(f"{folder}: none of the photos could be read")
    probs = torch.zeros(len(kept), len(run.classes))
    for i, (r, _) in enumerate(kept):
        for k in r["top_k"]:
            probs[i, k["index"]] = k["confidence"]
    y = torch.tensor([label for _, label in kept])
    report = classification_report(probs.clamp_min(1e-12).log(), y, run.classes)
    auto = torch.tensor([not r["needs_review"] for r, _ in kept])
    right = probs.argmax(1) == y
    rule = run.review or {}
    realised = right[auto].float().mean().item() if auto.any() else None
    report["coverage_at_precision"] = {str(rule.get("target_precision")): {"coverage": auto.float().mean().item(), "precision": realised}}
    report["promise"] = rule.get("promise", "no review rule: every photo goes to a person")
    report["members"] = [str(r.path) for r in [run, *run.partners]]
    report["skipped"] = [f"{r['file']}: {r['error']}" for r in rows if "error" in r]
    return report


def write_bundle(out: str | Path, members: dict[str, str | Path], review: dict | None, extra: dict | None = None) -> Path:
    """Copy each member run's files into out/<name>/ and write ready.json with their checksums; out appears
    complete or not at all, and an existing out is never replaced."""
    out = Path(out)
    if out.exists():
        raise RunError(f"{out} already exists; choose another folder (a bundle is never overwritten)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        sums = {}
        for name, src in members.items():
            if not _plain_name(name):
                raise ValueError(f"member name {name!r}: a plain folder name is needed")
            (tmp / name).mkdir()
            for f in MEMBER_FILES + OPTIONAL_FILES:
                if (Path(src) / f).is_file():
                    shutil.copyfile(Path(src) / f, tmp / name / f)
                    sums[f"{name}/{f}"] = sha256(tmp / name / f)
        spec = {"format": 1, **(extra or {}), "members": list(members), "review": review, "sha256": sums}
        (tmp / BUNDLE).write_text(to_json(spec))
        os.chmod(tmp, 0o755)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def agreement(probs: list[torch.Tensor], mean: torch.Tensor) -> torch.Tensor:
    """Items on which every member's top class is the average's."""
    tops = torch.stack([p.argmax(1) for p in probs])
    return (tops == mean.argmax(1)).all(0)


def unknown_mask(scores: list[torch.Tensor | None] | None, thresholds: list[float | None] | None, n: int) -> torch.Tensor:
    """Items any member's "none of these" score puts above its threshold (predict.unknown_params)."""
    flags = torch.zeros(n, dtype=torch.bool)
    for sc, th in zip(scores or [], thresholds or []):
        if sc is not None and th is not None:
            flags |= torch.isfinite(sc) & (sc > th)
    return flags


def fit_review(
    probs: list[torch.Tensor],
    labels: torch.Tensor,
    target: float = DEFAULT_TARGET_PRECISION,
    scores: list | None = None,
    known_share: float = DEFAULT_KNOWN_SHARE,
    groups: torch.Tensor | None = None,
    delta: float = DEFAULT_DELTA,
) -> dict:
    """A review rule for members asked together, fitted on labelled photos of their classes:
    - each member's "none of these" threshold, so that `known_share` of these photos count known (scores: each
      member's score per photo, higher = less like its classes; None for a member without one), in each group of
      photos (groups: a kind per photo, e.g. phone and catalogue; None: one group). A run fits it on its own
      validation split, which for a scan run holds no photo: it would call many real photos unknown;
    - the temperature of the averaged probabilities (NLL);
    - the guaranteed rule (evaluation/calibrate.guaranteed_rule) on the items all members agree on and no score
      calls unknown: at least `target` precise with confidence 1 - delta (threshold None: everything to a person).
    probs: each member's calibrated probabilities in the first member's class order."""
    mean = torch.stack(probs).mean(0)
    temperature = fit_temperature(mean.clamp_min(1e-12).log(), labels)
    cal = joint_calibrated(mean, temperature)
    cuts = None
    if scores is not None:
        groups = torch.zeros(len(labels), dtype=torch.long) if groups is None else groups
        cuts = [None if sc is None else _known_cut(sc, groups, known_share) for sc in scores]
    keep = agreement(probs, cal) & ~unknown_mask(scores, cuts, len(labels))
    conf, pred = cal.max(1)  # items the rule leaves to a person anyway (disagreement, unknown) no threshold accepts
    rule = {
        "temperature": temperature,
        **guaranteed_rule(conf[keep], (pred == labels)[keep], target, delta),
        "fitted_on_photos": len(labels),
    }
    return {**rule, "unknown_thresholds": cuts, "known_share": known_share} if cuts is not None else rule


def _known_cut(scores: torch.Tensor, groups: torch.Tensor, known_share: float) -> float:
    """The lowest score threshold under which `known_share` of every group's photos fall."""
    ok = torch.isfinite(scores)
    return max(torch.quantile(scores[ok & (groups == g)].float(), known_share).item() for g in groups[ok].unique())


def check_review(probs: list[torch.Tensor], labels: torch.Tensor, review: dict, scores: list | None = None) -> dict:
    """What the rule does on labelled photos it was not fitted on: accuracy (top class of the average), ECE, the
    share called unknown, the share labelled with no person and the realised precision of those labels."""
    cal = joint_calibrated(torch.stack(probs).mean(0), review["temperature"])
    conf, pred = cal.max(1)
    correct = pred == labels
    threshold = review["threshold"]
    unknown = unknown_mask(scores, review.get("unknown_thresholds"), len(labels))
    auto = agreement(probs, cal) & ~unknown & (conf >= threshold if threshold is not None else torch.zeros_like(correct))
    n_auto = int(auto.sum())
    return {
        "photos": len(labels),
        "accuracy": correct.float().mean().item(),
        "ece": ece(cal, labels),
        "unknown": int(unknown.sum()),
        "automatic_share": n_auto / len(labels),
        "automatic": n_auto,
        "automatic_errors": int((auto & ~correct).sum()),
        "realised_precision": correct[auto].float().mean().item() if n_auto else None,
    }
