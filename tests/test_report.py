from conftest import study_row

from fashionclf.study.report import recommend, summarize


def _run(model, seed, acc, val, ips, params=1000, robustness=None):
    return study_row(model, seed, val, ips, params, corrupted=robustness, acc=acc)


def test_summarize_mean_and_std_over_seeds():
    rows = summarize([_run("a", 0, 0.90, 0.91, 100), _run("a", 1, 0.92, 0.93, 300), _run("b", 0, 0.80, 0.81, 50)])
    a, b = rows
    assert (a["model"], a["n"], b["n"]) == ("a", 2, 1)
    assert abs(a["acc_mean"] - 0.91) < 1e-12 and abs(a["acc_std"] - 0.0141421356) < 1e-8
    assert b["acc_std"] == 0.0 and a["images_per_s"] == 200


def test_recommend_fastest_within_tolerance_on_validation():
    # c has the best *test* accuracy but is outside the validation tolerance (1 point): the test set does not choose.
    runs = [_run("a", 0, 0.93, 0.930, 100), _run("b", 0, 0.92, 0.921, 900), _run("c", 0, 0.95, 0.915, 5000)]
    pick, text = recommend(summarize(runs))
    assert pick["model"] == "b" and "Candidates: a, b." in text and "**b**" in text and "within 1.0 points" in text
    pick, text = recommend(summarize(runs), tolerance=0.005)  # a stated tolerance is the one applied
    assert pick["model"] == "a" and "Candidates: a." in text and "within 0.5 points" in text


def test_recommend_prefers_robustness_when_measured():
    runs = [_run("a", 0, 0.93, 0.93, 100, robustness=0.80), _run("b", 0, 0.93, 0.93, 900, robustness=0.70)]
    pick, text = recommend(summarize(runs))
    assert pick["model"] == "a" and "the highest robustness score (its corrupted mean accuracy)" in text


def test_recommend_smaller_model_breaks_speed_ties():
    runs = [_run("a", 0, 0.93, 0.93, 500, params=9000), _run("b", 0, 0.93, 0.93, 500, params=100)]
    assert recommend(summarize(runs))[0]["model"] == "b"
