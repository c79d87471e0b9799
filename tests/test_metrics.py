import numpy as np
import pytest
import torch

from fashionclf.evaluation.metrics import classification_report, confusion_matrix, mean_std, most_confused, per_class


def test_confusion_matrix_by_hand():
    cm = confusion_matrix([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_per_class_by_hand():
    cm = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    pc = per_class(cm, ["a", "b", "c"])
    assert pc[0]["precision"] == pytest.approx(0.5) and pc[0]["recall"] == pytest.approx(0.5)
    assert pc[1]["precision"] == pytest.approx(2 / 3) and pc[1]["recall"] == 1.0
    assert pc[1]["f1"] == pytest.approx(2 * (2 / 3) / (2 / 3 + 1))
    assert pc[2] == {"class": "c", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_most_confused_counts_both_directions():
    cm = np.array([[5, 3, 0], [4, 5, 1], [0, 2, 5]])
    pairs = most_confused(cm, ["a", "b", "c"])
    assert pairs[0] == {"a": "a", "b": "b", "a_as_b": 3, "b_as_a": 4, "total": 7}
    assert pairs[1]["total"] == 3


def test_report_accuracy_and_loss():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 1, 1, 0])
    rep = classification_report(logits, y, ["x", "y"])
    assert rep["accuracy"] == pytest.approx(0.75)  # the tie at row 4 resolves to class 0
    expected = np.mean([np.log1p(np.exp(-2)), np.log1p(np.exp(-2)), np.log1p(np.exp(2)), np.log(2)])
    assert rep["loss"] == pytest.approx(expected, rel=1e-5)
    assert rep["confusion_matrix"] == [[2, 0], [1, 1]]


def test_mean_std():
    assert mean_std([1.0]) == (1.0, 0.0)
    m, s = mean_std([1.0, 2.0, 3.0])
    assert m == 2.0 and s == pytest.approx(1.0)


def test_mcnemar_by_hand():
    from fashionclf.evaluation.metrics import mcnemar

    same = mcnemar([1, 0, 1], [1, 0, 1])
    assert same == {"b": 0, "c": 0, "p": 1.0}
    # 10 items only A gets right, none only B: p = 2 * 0.5**10
    r = mcnemar([1] * 10 + [1] * 5, [0] * 10 + [1] * 5)
    assert (r["b"], r["c"]) == (10, 0) and r["p"] == pytest.approx(2 * 0.5**10)
    # b=3, c=5: p = 2 * P(X <= 3), X ~ Bin(8, 1/2) = 2 * (1 + 8 + 28 + 56) / 256
    r = mcnemar([1, 1, 1, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1, 1, 1])
    assert r["p"] == pytest.approx(2 * 93 / 256)
    # balanced discordance caps at 1
    assert mcnemar([1, 0], [0, 1])["p"] == 1.0
