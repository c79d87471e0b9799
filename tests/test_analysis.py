import numpy as np
import torch

from fashionclf.evaluation.analysis import duplicates, label_issues, top_losses


def test_top_losses_puts_confident_mistakes_first():
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [0.5, 0.0], [0.0, 0.1]])
    labels = torch.tensor([0, 0, 1, 1])  # item 1: confidently wrong; item 2: mildly wrong
    top = top_losses(logits, labels, k=2)
    assert [t["index"] for t in top] == [1, 2]
    assert top[0]["predicted"] == 1 and top[0]["p_predicted"] > 0.99 and top[0]["loss"] > top[1]["loss"]


def test_duplicates_finds_exact_and_shifted_copies_only():
    g = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (50, 28, 28), generator=g, dtype=torch.uint8)
    smooth = torch.nn.functional.avg_pool2d(train.float().unsqueeze(1), 5, 1, 2).squeeze(1).round().to(torch.uint8)
    test = torch.randint(0, 256, (5, 28, 28), generator=g, dtype=torch.uint8)
    test[1] = train[7]  # exact copy
    test[3] = (smooth[9].float() * 0.97).round().to(torch.uint8)  # a darker re-encode of a (smooth) training image
    train[9] = smooth[9]
    found = {d["test"]: d for d in duplicates(train, test)}
    assert set(found) == {1, 3}
    assert found[1]["exact"] and found[1]["train"] == 7 and found[1]["similarity"] > 0.999
    assert not found[3]["exact"] and found[3]["train"] == 9


def test_label_issues_flags_the_confidently_contradicted_labels():
    # two classes; per-class thresholds are the mean self-confidence: class 0 -> 0.74, class 1 -> 0.8
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.8, 0.2], [0.35, 0.65], [0.2, 0.8], [0.1, 0.9], [0.3, 0.7]])
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    # t0 = mean(0.9, 0.9, 0.8, 0.35) = 0.7375; t1 = mean(0.8, 0.9, 0.7) = 0.8
    issues = label_issues(probs, labels)
    # item 3 (labelled 0, p0 0.35 < t0, p1 0.65 < t1): not flagged; nothing reaches the other class's threshold
    assert issues == []
    probs[3] = [0.1, 0.9]  # now p1 0.9 >= t1 (still 0.8): flagged, class 1 suggested
    issues = label_issues(probs, labels)
    assert [(i["index"], i["suggested"]) for i in issues] == [(3, 1)]
