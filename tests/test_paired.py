import numpy as np
import pytest

from fashionclf.evaluation.paired import RESOLUTION_WORDS, SIGNIFICANCE, STEP_WORDS, compare_seeds, verdict_kind


def correctness(n: int, wrong: list[int]) -> np.ndarray:
    out = np.ones(n, bool)
    out[wrong] = False
    return out


def test_clearly_better_group_is_a_real_gain_in_every_seed_pair():
    # B gets right 40 items A gets wrong, A none that B misses: p = 2 / 2**40
    a = {0: correctness(100, list(range(40))), 1: correctness(100, list(range(50, 90)))}
    b = {0: np.ones(100, bool), 1: np.ones(100, bool)}
    res = compare_seeds(a, b)
    assert [(p["seed"], p["b"], p["c"]) for p in res.pairs] == [(0, 0, 40), (1, 0, 40)]
    assert all(p["p"] < 1e-10 and p["significant"] for p in res.pairs)
    assert res.significant == 2
    assert res.gain == pytest.approx(40.0)
    assert (res.kind, res.word) == ("gain", "a real gain")
    # the same evidence the other way round is a real loss
    back = compare_seeds(b, a)
    assert (back.kind, back.word, back.gain) == ("loss", "a real loss", pytest.approx(-40.0))


def test_a_few_discordant_items_are_noise():
    # 3 against 2 discordant items: p = 1.0
    a = {0: correctness(50, [0, 1]), 1: correctness(50, [])}
    b = {0: correctness(50, [2, 3, 4]), 1: correctness(50, [])}
    res = compare_seeds(a, b)
    assert [(p["b"], p["c"], p["p"]) for p in res.pairs] == [(3, 2, 1.0), (0, 0, 1.0)]
    assert res.significant == 0
    assert (res.kind, res.word) == ("none", "not distinguishable from noise")


def test_mixed_pairs_unpaired_seeds_and_given_gain():
    a = {0: correctness(100, list(range(40))), 1: correctness(100, [0]), 2: correctness(100, [])}
    b = {1: np.ones(100, bool), 0: np.ones(100, bool), 7: np.ones(100, bool)}
    res = compare_seeds(a, b, gain=-0.5)
    assert [p["seed"] for p in res.pairs] == [0, 1]  # A's order; seeds 2 and 7 have no partner
    assert res.significant == 1
    assert res.gain == -0.5
    assert (res.kind, res.word) == ("some", "not consistent across seeds")


def test_verdict_words_and_rule():
    assert SIGNIFICANCE == 0.05
    assert verdict_kind(0, 0, 1.0) is None
    assert verdict_kind(3, 3, 0.1) == "gain"
    assert verdict_kind(3, 3, 0.0) == "loss"  # all significant but no gain is not a gain
    assert verdict_kind(0, 3, 5.0) == "none"
    assert verdict_kind(1, 3, 5.0) == "some"
    assert STEP_WORDS == {
        "gain": "a real gain",
        "loss": "a real loss",
        "none": "not distinguishable from noise",
        "some": "not consistent across seeds",
    }
    assert RESOLUTION_WORDS["gain"] == "still climbing: sharper images would pay"
    assert RESOLUTION_WORDS["none"] == "flat within noise: more pixels would not pay"
    assert RESOLUTION_WORDS["some"] == RESOLUTION_WORDS["loss"] == "significant in some seeds only: undecided, more seeds would tell"
    res = compare_seeds({0: correctness(60, list(range(30)))}, {0: np.ones(60, bool)}, words=RESOLUTION_WORDS)
    assert res.word == "still climbing: sharper images would pay"


def test_no_common_seed_and_mismatched_items():
    res = compare_seeds({0: np.ones(5, bool)}, {1: np.ones(5, bool)})
    assert (res.pairs, res.kind, res.word) == ([], None, None)
    with pytest.raises(ValueError, match="same items"):
        compare_seeds({0: np.ones(5, bool)}, {0: np.ones(6, bool)})
