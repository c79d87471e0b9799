"""The whole loop on a small synthetic shop: train on labels that are partly wrong, label new photos, a person reviews
the uncertain ones through the review desk's routes, export, retrain: the new run gets the corrected photos right.

The first labels are wrong for a whole kind of photo: most 'skirts' (a dark square) were filed as shirts, so the
first model calls skirts shirts, unsure (calibrated confidence ~0.8, under its review threshold). The reviewer knows
better; the retrained run must too.
"""

import json

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from helpers import REVIEW_CLASSES as CLASSES  # noqa: E402
from helpers import write_photos  # noqa: E402

import fashionclf  # noqa: E402
from fashionclf.apps.cli import main  # noqa: E402
from fashionclf.apps.desk.app import create_app  # noqa: E402


def truth(path: str) -> str:
    return CLASSES[int(path.rsplit("/", 1)[-1][1])]  # files are named k<kind>_<seed>.<ext>


def _train(data, out) -> None:
    args = ["train", "--data", str(data), "--model", "mlp", "--image-size", "32", "--epochs", "12", "--batch-size", "16"]
    assert main([*args, "--precision", "fp32", "--out", str(out), "--quiet"]) == 0


@pytest.mark.slow
def test_label_review_export_retrain(tmp_path, capsys):
    first = tmp_path / "first-labels"
    write_photos(first / "pants", [0] * 30, 0)
    write_photos(first / "shirt", [1] * 30, 100)
    write_photos(first / "shirt", [2] * 18, 200)  # skirts filed as shirts ...
    write_photos(first / "skirt", [2] * 12, 300)  # ... more often than right
    _train(first, tmp_path / "run0")

    new = tmp_path / "new-photos"
    write_photos(new, [0] * 12 + [1] * 12 + [2] * 20, 1000)
    cat = tmp_path / "catalogue.db"
    assert main(["label", str(tmp_path / "run0"), str(new), "--db", str(cat), "--quiet"]) == 0

    client = TestClient(create_app(cat))
    corrected, decided = [], 0
    while (item := client.get("/api/next", params={"reviewer": "ann"}).json()["item"]) is not None:
        right = truth(item["path"])
        action = "accept" if item["label"] == right else "correct"
        r = client.post(
            f"/api/items/{item['id']}/decision", json={"version": item["version"], "action": action, "label": right, "reviewer": "ann"}
        )
        assert r.status_code == 200
        decided += 1
        if action == "correct":
            corrected.append(item["path"])
    assert len(corrected) >= 6, (
        f"the first model should have been wrong and unsure on skirts; {decided} reviewed, {len(corrected)} corrected"
    )

    exported = tmp_path / "exported"
    assert main(["labels", "export", str(cat), "--out", str(exported)]) == 0
    capsys.readouterr()
    main(["data", "check", str(exported), "--json"])  # exit 1 here: these synthetic photos are near duplicates of each other
    check = json.loads(capsys.readouterr().out)
    assert check["layout"] == "classes" and not check["unreadable"] and sum(check["counts"]["all"].values()) >= 40
    manifest = tmp_path / "labels.csv"
    assert main(["labels", "export", str(cat), "--out", str(manifest)]) == 0
    _train(manifest, tmp_path / "run1")  # the manifest reader: what `train --data labels.csv` reads

    run0, run1 = fashionclf.load_run(tmp_path / "run0"), fashionclf.load_run(tmp_path / "run1")
    after = [r["label"] for r in run1.predict(corrected)]
    right_after = sum(a == truth(p) for a, p in zip(after, corrected))
    assert right_after >= 0.9 * len(corrected), (after, corrected)
    # and on skirts neither model has seen
    fresh = write_photos(tmp_path / "fresh", [2] * 20, 5000)
    acc0 = sum(r["label"] == "skirt" for r in run0.predict(fresh)) / len(fresh)
    acc1 = sum(r["label"] == "skirt" for r in run1.predict(fresh)) / len(fresh)
    print(json.dumps({"reviewed": decided, "corrected": len(corrected), "right_after": right_after, "fresh_skirts_run0": acc0,
                      "fresh_skirts_run1": acc1}))  # fmt: skip
    assert acc1 >= 0.9 and acc0 <= 0.5
