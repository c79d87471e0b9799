"""ONNX export of a trained run, and the onnxruntime backend that serves it.

The exported graph takes what any caller has: pixels in [0, 1], (N, 1, 28, 28) for Fashion-MNIST runs or
(N, 3, S, S) for image-folder runs, and returns calibrated class probabilities (N, classes). The
normalisation, the mirror-image averaging (where the run uses it) and the temperature are inside the graph,
so `probabilities >= threshold` from the metadata is the same review rule `fashionclf predict` applies.

The graph is the fp32 model. `fashionclf predict` and `serve --backend torch` run in bf16 autocast where
the CPU or GPU supports it (the run's precision "auto"), so their confidences can differ from the
graph's by up to about 1e-2, and an item within that distance of the review threshold may be flagged
by one and not the other; the parity check compares the graph with the same fp32 model in PyTorch.
"""

from __future__ import annotations

import copy
import io
import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fashionclf.core.io import atomic_write_bytes
from fashionclf.data.fashion_mnist import MEAN, STD
from fashionclf.engine.runs import LoadedRun

OPSET = 18  # onnxruntime 1.17+ runs it; the exporter's default
PARITY_BATCHES = (1, 7, 64)
PARITY_TOLERANCE = 1e-4  # max |p_onnx - p_torch| per class probability


class PixelModel(nn.Module):
    """pixels in [0, 1] -> calibrated probabilities: the run's whole inference path as one fp32 module."""

    def __init__(self, model: nn.Module, temperature: float = 1.0, tta: bool = False):
        super().__init__()
        self.model, self.temperature, self.tta = model, float(temperature), tta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - MEAN) / STD
        logits = self.model(x)
        if self.tta:  # the same log-mean-softmax of image and mirror as train.infer
            both = torch.stack([logits, self.model(x.flip(-1))])
            logits = both.log_softmax(-1).logsumexp(0) - math.log(2)
        return (logits / self.temperature).softmax(-1)


def input_shape(run: LoadedRun) -> tuple[int, int, int]:
    """(channels, height, width) the run's model takes."""
    spec = run.meta.get("input") or {}
    if spec.get("kind") == "rgb-letterbox":
        return 3, spec["height"], spec["width"]
    return 1, 28, 28


def pixel_model(run: LoadedRun) -> PixelModel:
    cal = run.metrics.get("calibration") or {}
    # A copy: the run's own model stays as it is (channels_last, for PyTorch inference beside the export).
    model = copy.deepcopy(run.model).float().eval().to(memory_format=torch.contiguous_format)
    return PixelModel(model, cal.get("temperature", 1.0), bool(run.config.tta)).eval()


def metadata(run: LoadedRun) -> dict[str, str]:
    """String key/values stored in the ONNX file: enough for a caller to prepare input and read output."""
    c, h, w = input_shape(run)
    cal = run.metrics.get("calibration") or {}
    return {
        "classes": json.dumps(list(run.classes)),
        "input": json.dumps({"shape": ["N", c, h, w], "dtype": "float32", "range": [0.0, 1.0]}),
        "preprocessing": (
            "Fashion-MNIST style: grayscale, item light on a black background, trimmed, longer side 28 px, centred "
            "(fashionclf.infer.predict.preprocess_file); pixels / 255"
            if c == 1
            else f"RGB photo letterboxed to {h}x{w} (border-median padding, fashionclf.data.folders.letterbox); pixels / 255"
        ),
        "output": "calibrated class probabilities (N, classes), softmax(logits / temperature)",
        "temperature": str(cal.get("temperature", 1.0)),
        "review_threshold": json.dumps(cal.get("threshold")),
        "model": run.meta["model"],
        "test_accuracy": json.dumps(run.metrics.get("test_accuracy")),
    }


def export_onnx(run: LoadedRun, path: str | Path | None = None) -> bytes:
    """The run as ONNX bytes (dynamic batch); written atomically to path when given."""
    import onnx

    net = pixel_model(run)
    c, h, w = input_shape(run)
    example = torch.rand(4, c, h, w)  # a batch above 1, so nothing gets specialised to a single image
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation on every call
        try:
            exporter = _export(net, example, buf)
        except Exception as e:  # the exporter raises its own error types, with the unsupported operator in the message
            raise ValueError(
                f"{run.path}: model {run.meta['model']} at resolution {run.config.resolution} px cannot be exported to ONNX "
                f"({str(e).splitlines()[0][:300]}); neither torch's exporter nor the TorchScript one could trace it"
            ) from None
    proto = onnx.load_from_string(buf.getvalue())
    for k, v in {**metadata(run), "exporter": exporter}.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    if path is not None:
        atomic_write_bytes(Path(path), data)
    return data


def _export(net: nn.Module, example: torch.Tensor, buf: io.BytesIO) -> str:
    """Export with torch's current exporter (torch.export + onnxscript, `dynamo=True`) where it works, else
    with the TorchScript exporter; returns which one wrote the graph (kept in the file's metadata)."""
    try:
        import contextlib

        import onnxscript  # noqa: F401  (the dynamo exporter needs it; without it, TorchScript)

        with contextlib.redirect_stdout(io.StringIO()):  # it reports each step on stdout
            prog = torch.onnx.export(
                net,
                (example,),
                input_names=["pixels"],
                output_names=["probabilities"],
                dynamic_shapes={"x": {0: torch.export.Dim("N", min=1, max=65536)}},
                opset_version=OPSET,
                dynamo=True,
                verbose=False,
            )
        buf.write(prog.model_proto.SerializeToString())
        return "dynamo"
    except Exception:  # an operator torch.export cannot trace (e.g. the resolution hook's interpolate): the old exporter
        buf.seek(0)
        buf.truncate()
    torch.onnx.export(
        net,
        (example,),
        buf,
        input_names=["pixels"],
        output_names=["probabilities"],
        dynamic_axes={"pixels": {0: "N"}, "probabilities": {0: "N"}},
        opset_version=OPSET,
        dynamo=False,
    )
    return "torchscript"


class OnnxModel:
    """An exported run in onnxruntime: uint8 model-ready images -> calibrated probabilities."""

    def __init__(self, model: bytes | str | Path, threads: int = 0):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        src = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.classes = json.loads(meta["classes"])
        self.meta = meta

    def probs(self, images_u8: np.ndarray | torch.Tensor) -> np.ndarray:
        x = np.asarray(images_u8, dtype=np.float32) / 255.0
        if x.ndim == 3:  # (N, 28, 28) gray
            x = x[:, None]
        return self.session.run(None, {"pixels": np.ascontiguousarray(x)})[0]


def check_parity(run: LoadedRun, model: bytes, batch_sizes=PARITY_BATCHES, seed: int = 0) -> list[dict]:
    """onnxruntime against PyTorch fp32 on random pixels of the run's input shape: one row per batch size."""
    net = pixel_model(run)
    ort_model = OnnxModel(model)
    c, h, w = input_shape(run)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in batch_sizes:
        x = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
        with torch.inference_mode():
            ref = net(x.float() / 255).numpy()
        got = ort_model.probs(x.numpy())
        rows.append(
            {
                "batch": n,
                "max_abs_diff": float(np.abs(got - ref).max()),
                "same_argmax": bool((got.argmax(1) == ref.argmax(1)).all()),
                "shape_ok": got.shape == ref.shape,
            }
        )
    return rows


def parity_ok(rows: list[dict], tolerance: float = PARITY_TOLERANCE) -> bool:
    return all(r["same_argmax"] and r["shape_ok"] and r["max_abs_diff"] <= tolerance for r in rows)


def export_checked(run: LoadedRun) -> tuple[bytes, list[dict]]:
    """The run as ONNX bytes and its parity rows; ValueError when the graph disagrees with PyTorch."""
    data = export_onnx(run)
    rows = check_parity(run, data)
    if not parity_ok(rows):
        worst = max(rows, key=lambda r: r["max_abs_diff"])
        raise ValueError(
            f"{run.path}: the ONNX graph disagrees with PyTorch (max |p_onnx - p_torch| {worst['max_abs_diff']:.2e} at batch "
            f"{worst['batch']}, same argmax everywhere: {all(r['same_argmax'] for r in rows)}; tolerance {PARITY_TOLERANCE})"
        )
    return data, rows
