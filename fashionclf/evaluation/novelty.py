"""'None of these' in embedding space: how far a photo's features lie from the training photos', with the head's energy.

A store run (training/embedded.py) keeps, beside its head, what these distances need (`novelty.safetensors`):
- kNN: one minus the cosine similarity of the photo's standardised features to its k-th nearest training photo
  (Sun et al., 2022), among at most BANK_ROWS training photos;
- class-conditional Mahalanobis: the smallest distance to a class centre, on the top principal components of the
  standardised features, whitened, with one covariance shared by the classes (Lee et al., 2018); the components by
  randomised SVD (Halko et al., 2011; `torch.svd_lowrank` with twice the components: 0.75 s on 2,600 x 3,840
  where the exact SVD takes 5.1 s, singular values within 1% and the subspace's mean cosine 0.995 on clothing-photos);
- the head's energy (-logsumexp of the raw logits, Liu et al., 2020).
The score is the sum of the three, each as a z-score against the validation photos. Measured on four clothing
categories left out of training, it separated them best of all the scores tried, chosen on validation
(docs/results/embed-once.md): test AUROC 0.915 against 0.817 for the energy alone. With mirror TTA the
distances take the mean of the views' features, the energy the mean of their raw logits.

The tensors are plain (safetensors): nothing in them executes code.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

EMBEDDING_SCORE = "embedding"  # the name of this score in a run's "unknown" record
KNN_K = 10  # the neighbour whose distance counts
COMPONENTS = 256  # principal components the Mahalanobis distance is measured on
BANK_ROWS = 10_000  # training photos kept for kNN at most (a random sample beyond that): 77 MB of float16 at 3,840 numbers
PHOTOS_PER_COMPONENT = 10  # fewer components where there are few training photos: whitening directions that a
# handful of photos barely spans turned the rounding of bf16 or float16 features into distances of 10^5
RIDGE = 1e-3  # added to the whitened covariance's diagonal: a class with few photos cannot make it singular
PARTS = ("knn", "mahalanobis", "energy")


def fit_novelty(train_v: torch.Tensor, train_y: torch.Tensor, val_v: torch.Tensor, val_raw: torch.Tensor, seed: int = 0) -> dict:
    """The tensors of the score from (n, views, dim) training vectors and their labels, and the z-score of each part
    from the validation vectors and their raw logits (the views' mean; engine.inference.average_views)."""
    if len(val_v) < 2:
        raise ValueError("the embedding score needs at least 2 validation photos to scale its parts")
    x = train_v.float().mean(1)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    keep = torch.randperm(len(z), generator=torch.Generator().manual_seed(seed))[:BANK_ROWS].sort().values
    bank = F.normalize(z[keep], dim=1)
    k = max(1, min(COMPONENTS, len(z) // PHOTOS_PER_COMPONENT, z.shape[1]))
    with torch.random.fork_rng(devices=[]):  # svd_lowrank draws from the global generator: seeded, and left as it was
        torch.manual_seed(seed)
        _, s, v = torch.svd_lowrank(z - z.mean(0), q=min(2 * k, *z.shape), niter=2)
    proj = v[:, :k] / (s[:k] / (len(z) - 1) ** 0.5).clamp_min(1e-6)
    p = z @ proj
    _, index = train_y.unique(return_inverse=True)  # the classes with training photos; the distance is to the nearest
    centres = torch.stack([p[index == i].mean(0) for i in range(int(index.max()) + 1)])
    r = p - centres[index]
    precision = torch.linalg.inv(r.T @ r / len(r) + RIDGE * torch.eye(k))
    out = {"mean": mean, "std": std, "bank": bank.half(), "proj": proj, "centres": centres, "precision": precision}
    parts = part_scores(out, val_v, val_raw)
    out["scale"] = torch.stack([torch.stack([t.mean(), t.std().clamp_min(1e-6)]) for t in parts.values()])  # (3, 2)
    return out


def part_scores(nov: dict, v: torch.Tensor, raw: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each part on its own (higher: farther from the training photos), before scaling."""
    z = (v.float().mean(1) - nov["mean"]) / nov["std"]
    k = min(KNN_K, len(nov["bank"]))
    knn = 1 - (F.normalize(z, dim=1) @ nov["bank"].float().T).topk(k, dim=1).values[:, -1]
    d = (z @ nov["proj"])[:, None, :] - nov["centres"][None]
    maha = torch.einsum("ncd,de,nce->nc", d, nov["precision"], d).min(1).values
    return {"knn": knn, "mahalanobis": maha, "energy": -torch.logsumexp(raw.float(), dim=1)}


def embedding_score(nov: dict, v: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    """Per photo of (n, views, dim) vectors and its (n, classes) raw logits: the sum of the three parts as z-scores
    (higher: more likely none of the run's classes)."""
    parts = part_scores(nov, v, raw)
    return sum((parts[name] - nov["scale"][i, 0]) / nov["scale"][i, 1] for i, name in enumerate(PARTS))


def check_novelty(nov: dict, finite: bool = True) -> str | None:
    """What is wrong with a run's novelty tensors (missing, mis-shaped, not finite), or None. finite=False leaves out
    the scan of every value (38 million in a full bank), for tensors already checked when they were read."""
    need = ("mean", "std", "bank", "proj", "centres", "precision", "scale")
    if missing := [k for k in need if k not in nov]:
        return f"it lacks {', '.join(missing)}"
    dim, k = len(nov["mean"]), nov["proj"].shape[-1]
    shapes = {"std": (dim,), "proj": (dim, k), "precision": (k, k), "scale": (len(PARTS), 2)}
    for name, shape in shapes.items():
        if tuple(nov[name].shape) != shape:
            return f"{name} has shape {tuple(nov[name].shape)}, expected {shape}"
    if nov["bank"].ndim != 2 or nov["bank"].shape[1] != dim or nov["centres"].ndim != 2 or nov["centres"].shape[1] != k:
        return "bank or centres do not match the features' size"
    if finite and any(not torch.isfinite(nov[n]).all() for n in need):
        return "it holds NaN or infinite values"
    return None
