"""ONNX export: every registered model, Fashion-MNIST and image-folder runs, parity with PyTorch at batch 1, 7, 64."""

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from fashionclf.apps.cli import main  # noqa: E402
from fashionclf.engine.runs import load_run, save_run  # noqa: E402
from fashionclf.infer.export import OnnxModel, check_parity, export_onnx, parity_ok, pixel_model  # noqa: E402
from fashionclf.models import (  # noqa: E402
    build_model,  # noqa: E402
    list_models,
    model_info,
)
from fashionclf.training.recipes import resolve_config  # noqa: E402

CAL = {"temperature": 0.7, "threshold": 0.9, "target_precision": 0.99}
# Built smaller here than its default: the same code with one backbone at 64 px (the three-backbone export at 260 px
# takes 48 s here; its parity is measured in docs/results/embed-once.md).
SMALLER = {"frozen_lites": {"backbones": "lite0", "image_size": 64}}


def _run(tmp_path, name, tta=False, rgb_size=None):
    """A run folder of an untrained (random) model: parity does not need a good model, only the same one."""
    kwargs = dict(SMALLER.get(name, {}))
    extra = None
    if rgb_size:
        kwargs |= {"in_chans": 3}
        if "image_size" in inspect.signature(model_info(name).build).parameters:
            kwargs["image_size"] = rgb_size
        extra = {"input": {"channels": 3, "height": rgb_size, "width": rgb_size, "kind": "rgb-letterbox"}}
    cfg = resolve_config(name, None, tta=tta, model_kwargs=kwargs)
    torch.manual_seed(0)
    model = build_model(cfg, 10, pretrained=False)
    out = save_run(
        tmp_path / name, model, cfg, {"test_accuracy": 0.5, "calibration": CAL}, [], [f"c{i}" for i in range(10)], {}, extra_meta=extra
    )
    return load_run(out)


@pytest.mark.parametrize("name", list_models())
def test_every_model_exports_with_parity(tmp_path, name):
    run = _run(tmp_path, name)
    rows = check_parity(run, export_onnx(run))
    assert [r["batch"] for r in rows] == [1, 7, 64]
    assert parity_ok(rows), rows


def test_tta_temperature_and_metadata_are_in_the_graph(tmp_path):
    run = _run(tmp_path, "tuned_cnn", tta=True)
    data = export_onnx(run, tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_bytes() == data
    m = OnnxModel(tmp_path / "m.onnx")
    assert m.classes == [f"c{i}" for i in range(10)]
    assert json.loads(m.meta["review_threshold"]) == 0.9 and float(m.meta["temperature"]) == 0.7
    assert "pixels / 255" in m.meta["preprocessing"]
    x = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    p = m.probs(x.numpy())  # (N, 28, 28) uint8 is accepted as well as (N, 1, 28, 28)
    assert p.shape == (5, 10) and np.allclose(p.sum(1), 1, atol=1e-5)
    # the graph really averages the mirror image and divides by the temperature: leaving either out changes the output
    net = pixel_model(run)
    with torch.inference_mode():
        ref = net(x[:, None].float() / 255).numpy()
        net.tta = False
        no_tta = net(x[:, None].float() / 255).numpy()
        net.tta, net.temperature = True, 1.0
        no_temp = net(x[:, None].float() / 255).numpy()
    assert np.abs(p - ref).max() < 1e-4
    assert np.abs(p - no_tta).max() > 1e-3 and np.abs(p - no_temp).max() > 1e-3


def test_image_folder_run_exports_rgb_input(tmp_path):
    run = _run(tmp_path, "resnet", rgb_size=48)
    data = export_onnx(run)
    rows = check_parity(run, data, batch_sizes=(1, 3))
    assert parity_ok(rows)
    assert json.loads(OnnxModel(data).meta["input"])["shape"] == ["N", 3, 48, 48]


def test_predictions_through_onnx_match_torch(tmp_path):
    from fashionclf.infer.predict import predict_arrays

    run = _run(tmp_path, "simple_cnn")
    x = torch.randint(0, 256, (20, 28, 28), dtype=torch.uint8)
    run.config.precision = "fp32"  # bf16 autocast in PyTorch would differ from the fp32 graph by more than rounding
    a = predict_arrays(run, x)
    b = predict_arrays(run, x, backend=OnnxModel(export_onnx(run)))
    assert [r["label"] for r in a] == [r["label"] for r in b]
    assert max(abs(r["confidence"] - s["confidence"]) for r, s in zip(a, b)) < 1e-4


def test_export_cli_writes_checked_file_and_never_overwrites(tmp_path, capsys):
    run = _run(tmp_path, "mlp")
    out = tmp_path / "model.onnx"
    assert main(["export", str(run.path), "--onnx", str(out)]) == 0
    err = capsys.readouterr().err
    assert "parity batch  64" in err and out.stat().st_size > 0
    before = out.read_bytes()
    assert main(["export", str(run.path), "--onnx", str(out)]) != 0
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["export", str(run.path), "--onnx", str(tmp_path / "model.bin")]) != 0
    assert "ending in .onnx" in capsys.readouterr().err


def test_resolution_runs_export_with_the_current_exporter_or_fail_clearly(tmp_path, monkeypatch):
    """torch.export (dynamo=True) traces the resolution hook at any size; the TorchScript exporter could not at 21 px."""
    import onnx

    for px in (14, 21):
        cfg = resolve_config("tuned_cnn", None, resolution=px)
        out = save_run(
            tmp_path / f"r{px}", build_model(cfg, 10, pretrained=False), cfg, {"calibration": CAL}, [], [f"c{i}" for i in range(10)], {}
        )
        run = load_run(out)
        model = export_onnx(run)
        assert parity_ok(check_parity(run, model))
        assert {p.key: p.value for p in onnx.load_from_string(model).metadata_props}["exporter"] == "dynamo"

    def broken(*args, **kwargs):
        raise RuntimeError("Unsupported: aten::imaginary_op")

    monkeypatch.setattr(torch.onnx, "export", broken)  # both exporters fail: one clear error naming the cause
    with pytest.raises(ValueError, match="cannot be exported to ONNX .*aten::imaginary_op"):
        export_onnx(run)


def test_a_graph_that_disagrees_is_not_written(tmp_path, monkeypatch, capsys):
    import fashionclf.infer.export as export

    run = _run(tmp_path, "mlp")
    monkeypatch.setattr(export.parity_ok, "__defaults__", (-1.0,))  # nothing can pass: the refusal path must hold
    out = tmp_path / "m.onnx"
    assert main(["export", str(run.path), "--onnx", str(out)]) == 2
    assert "disagrees with PyTorch" in capsys.readouterr().err and not out.exists()


GOLDEN_CNN = Path(__file__).parent / "golden" / "study" / "runs" / "tuned_cnn-s0"


@pytest.mark.data
@pytest.mark.slow
def test_int8_export_is_quantized_checked_and_refused_when_it_costs_accuracy(tmp_path, monkeypatch, real_data_dir):
    import onnx

    from fashionclf.api import load_run
    from fashionclf.infer import quantize

    run = load_run(GOLDEN_CNN)
    model, report = run.export(tmp_path / "int8.onnx", int8=True, data_dir=real_data_dir)
    ops = {n.op_type for n in onnx.load_from_string(model).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and (tmp_path / "int8.onnx").read_bytes() == model
    r = report["int8"]
    assert r["test_images"] == 10_000 and abs(r["drop_points"] - (r["fp32_accuracy"] - r["int8_accuracy"]) * 100) < 1e-9
    assert r["drop_points"] <= quantize.MAX_DROP_POINTS
    fp32, _ = run.export()
    assert len(model) < len(fp32) / 2  # int8 weights
    monkeypatch.setattr(quantize, "MAX_DROP_POINTS", -1.0)  # any result is now "too costly"
    with pytest.raises(ValueError, match="more than the -1.0 allowed; nothing written"):
        run.export(tmp_path / "refused.onnx", int8=True, data_dir=real_data_dir)
    assert not (tmp_path / "refused.onnx").exists()
