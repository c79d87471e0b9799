"""int8 ONNX: static quantization calibrated on a run's validation images, refused when it costs accuracy.

onnxruntime's `quantize_static` (QDQ format, per-channel int8 weights, uint8 activations) with activation
ranges measured on validation images; the test split then decides: a model whose test accuracy falls
by more than `MAX_DROP_POINTS` against the fp32 graph is not returned. Everything happens on ONNX bytes
in a temporary folder, so nothing is written until the caller writes the result.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

MAX_DROP_POINTS = 0.3  # the bound: int8 may cost at most 0.3 points of test accuracy


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over uint8 images, in batches."""

    def __init__(self, images_u8: np.ndarray, batch: int = 64):
        x = np.asarray(images_u8, dtype=np.float32) / 255.0
        self.x = x[:, None] if x.ndim == 3 else x
        self.batch, self.i = batch, 0

    def get_next(self):
        if self.i >= len(self.x):
            return None
        b = self.x[self.i : self.i + self.batch]
        self.i += self.batch
        return {"pixels": np.ascontiguousarray(b)}

    def rewind(self):
        self.i = 0


def quantize_int8(fp32: bytes, calibration_u8: np.ndarray) -> bytes:
    """Static int8 quantization of an exported run (fashionclf.infer.export), calibrated on the given images."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration_u8) == 0:
        raise ValueError("int8 calibration needs validation images; the run has none")
    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        src.write_bytes(fp32)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(out),
            _Reader(calibration_u8),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        proto = onnx.load(str(out))
        meta = {p.key: p.value for p in onnx.load_from_string(fp32).metadata_props}
        del proto.metadata_props[:]
        for k, v in {**meta, "precision": "int8 (static, QDQ, calibrated on validation images)"}.items():
            proto.metadata_props.add(key=k, value=v)
        return proto.SerializeToString()


def accuracy(model: bytes, images_u8: np.ndarray, labels: np.ndarray, batch: int = 256) -> float:
    from fashionclf.infer.export import OnnxModel

    m = OnnxModel(model)
    pred = np.concatenate([m.probs(images_u8[i : i + batch]).argmax(1) for i in range(0, len(images_u8), batch)])
    return float((pred == np.asarray(labels)).mean())


def int8_checked(fp32: bytes, calibration_u8: np.ndarray, test_u8: np.ndarray, test_labels: np.ndarray) -> tuple[bytes, dict]:
    """The int8 model and its report {fp32_accuracy, int8_accuracy, drop_points}; ValueError when the drop is too large."""
    int8 = quantize_int8(fp32, calibration_u8)
    a32, a8 = accuracy(fp32, test_u8, test_labels), accuracy(int8, test_u8, test_labels)
    report = {"fp32_accuracy": a32, "int8_accuracy": a8, "drop_points": (a32 - a8) * 100, "test_images": len(test_labels)}
    if report["drop_points"] > MAX_DROP_POINTS:
        raise ValueError(
            f"int8 costs {report['drop_points']:.2f} points of test accuracy ({a32 * 100:.2f}% -> {a8 * 100:.2f}% on "
            f"{len(test_labels):,d} images), more than the {MAX_DROP_POINTS} allowed; nothing written (export without --int8)"
        )
    return int8, report
