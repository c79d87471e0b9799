"""The audit: a random share of the photos labelled with no person goes to the desk anyway, unmarked among the
uncertain ones, and the person's verdicts on them measure the automatic labels' precision without bias.

Which photos are audited is drawn from their content hash (SHA-256), independent of the model and reproducible:
the same photo is audited or not whoever labels it, and a rerun draws the same. Its place in the queue is drawn
from other bits of the hash, so audited photos are spread through the queue instead of waiting at its end.

The estimate is exact: the errors among decided audited photos are binomial, and the interval is
Clopper-Pearson's. The desk says "confirmed" when the upper bound on the error is within the promise, "broken"
when even the lower bound is beyond it (the automatic labels miss the promise: a shift since calibration), and
otherwise how many more audited decisions could confirm it. `tighten` fits the guaranteed rule on the audited
photos themselves (a random sample of what the rule now labels alone, so valid under that shift) and sends the
automatic photos below the new threshold back to the queue.
"""

from __future__ import annotations

import json
import sqlite3

import numpy as np
from scipy.stats import beta

from fashionclf.evaluation.calibrate import DEFAULT_DELTA, DEFAULT_TARGET_PRECISION, error_upper_bound, guaranteed_rule
from fashionclf.review import db

DEFAULT_AUDIT_SHARE = 0.02  # 1 in 50 automatic labels checked: 200 verdicts per 10,000 photos
_BITS = 13  # hex digits of the hash per uniform draw (52 bits, what a float holds exactly)


def _uniform(sha256: str, part: int) -> float:
    digits = sha256[part * _BITS : (part + 1) * _BITS]
    return int(digits, 16) / 16**_BITS


def drawn(sha256: str, share: float) -> bool:
    """Whether the photo with this content hash is audited at this share."""
    return _uniform(sha256, 0) < share


def queue_key(sha256: str) -> float:
    """Where an audited photo waits in the queue (ordered by confidence in [0, 1]): uniform from the hash."""
    return _uniform(sha256, 1)


def check_share(share: float) -> float:
    if not 0 <= share <= 1:
        raise ValueError(f"audit share {share}: expected a share in [0, 1], e.g. {DEFAULT_AUDIT_SHARE} (0 audits nothing)")
    return share


def mark(rows: list[dict], share: float) -> list[dict]:
    """The predicted rows with `audit` (and its queue_key) set on the automatic ones drawn at `share`."""
    for r in rows:
        auto = not r["needs_review"] and not r.get("unknown")
        if auto and drawn(r["sha256"], share):
            r.update(audit=True, queue_key=queue_key(r["sha256"]))
    return rows


def error_interval(errors: int, n: int, delta: float = DEFAULT_DELTA) -> tuple[float, float]:
    """The exact two-sided 1 - delta (Clopper-Pearson) interval on an error rate; (0, 1) with no items."""
    if n == 0:
        return 0.0, 1.0
    lo = 0.0 if errors == 0 else float(beta.ppf(delta / 2, errors, n - errors + 1))
    hi = 1.0 if errors == n else float(beta.ppf(1 - delta / 2, errors + 1, n - errors))
    return lo, hi


def more_to_confirm(errors: int, n: int, target: float, delta: float, cap: int = 1_000_000) -> int | None:
    """How many more audited decisions, all right, would bring the one-sided upper bound within 1 - target;
    None if none could (not before `cap`)."""
    lo, hi = n, cap
    if float(error_upper_bound(errors, hi, delta)) > 1 - target:
        return None
    while lo < hi:  # the bound falls as right answers are added
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if float(error_upper_bound(errors, mid, delta)) <= 1 - target else (mid + 1, hi)
    return lo - n


def promise_of(conn: sqlite3.Connection) -> tuple[float, float]:
    """The promise the catalogue's automatic labels were made under (recorded by `label`), else the defaults."""
    m = db.meta(conn)
    rule = json.loads(m["rule"]) if "rule" in m else {}
    return rule.get("target_precision") or DEFAULT_TARGET_PRECISION, rule.get("delta") or DEFAULT_DELTA


def _decided(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT confidence, status = 'reviewed' AND reviewed_label = label AS right FROM items "
        "WHERE audit = 1 AND status IN ('reviewed', 'unknown')"
    ).fetchall()


def stats(conn: sqlite3.Connection) -> dict:
    """The running audit: audited photos, decided ones, errors, the precision estimate with its exact interval, and
    whether the promise is confirmed, unconfirmed (with how many more decisions could confirm it) or broken."""
    target, delta = promise_of(conn)
    audited = conn.execute("SELECT COUNT(*) FROM items WHERE audit = 1").fetchone()[0]
    rows = _decided(conn)
    n, errors = len(rows), sum(1 for r in rows if not r["right"])
    lo, hi = error_interval(errors, n, delta)
    out = {"audited": audited, "decided": n, "errors": errors, "target_precision": target, "delta": delta}
    out |= {"precision": 1 - errors / n if n else None, "precision_interval": [1 - hi, 1 - lo]}
    bound = float(error_upper_bound(errors, n, delta))
    if n and bound <= 1 - target:
        out |= {"status": "confirmed", "message": f"the audit confirms the promise: precision {1 - bound:.1%} at the least"}
    elif n and lo > 1 - target:
        out |= {
            "status": "broken",
            "message": f"the audit shows automatic labels below the promised {target:.1%}: {errors} wrong of {n} "
            f"(precision {1 - hi:.1%} to {1 - lo:.1%}); photos may differ from the calibration photos: tighten the rule",
        }
    else:
        more = more_to_confirm(errors, n, target, delta)
        need = "more errors than any number of audits could outweigh" if more is None else f"{more} more audited decisions, all right"
        out |= {"status": "unconfirmed", "message": f"not yet confirmed by the audit ({n} decided, {errors} wrong): {need}"}
    return out


def tighten(conn: sqlite3.Connection) -> dict:
    """Fit the guaranteed rule on the decided audited photos; automatic photos below its threshold go back to the
    queue. Returns the rule and how many photos moved (none if the audit is too small to fit any threshold)."""
    target, delta = promise_of(conn)
    rows = _decided(conn)
    rule = guaranteed_rule(np.array([r["confidence"] for r in rows]), np.array([bool(r["right"]) for r in rows]), target, delta)
    moved = 0
    if rule["threshold"] is not None:
        with db.Transaction(conn):
            moved = conn.execute(
                "UPDATE items SET status = 'needs_review', version = version + 1 WHERE status = 'auto' AND confidence < ?",
                (rule["threshold"],),
            ).rowcount
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('tightened', ?)", (json.dumps(rule),))
    return {"rule": rule, "moved_to_review": moved}
