"""An HTTP service around one trained run: FastAPI, the model loaded once, a web page to try it.

Endpoints: GET /health, GET /v1/models, POST /v1/predict (multipart `file` fields, or the KServe V1
JSON shape {"instances": [{"b64": "..."}]}), GET / (the page). Every refusal is a JSON error with a
4xx code and a message; decoding, preprocessing and inference run in a worker thread, so the event
loop keeps answering /health while a batch is being classified.
"""

from __future__ import annotations

import base64
import binascii
import threading
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse

from fashionclf.data.images import MAX_PIXELS, ImageError
from fashionclf.predict import png_bytes, predict_arrays, preprocess_file
from fashionclf.runs import Run, load_run

MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # a phone photo is 2-8 MB; larger requests are refused before parsing
MAX_FILES = 64  # images per request; a catalogue job belongs to `fashionclf predict`, not to HTTP
STATUS = {"empty": 400, "unsupported": 415, "too_large": 413, "damaged": 422, "missing": 400}


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Predictor:
    """The run, loaded once; one inference at a time (two cores: concurrent forwards would only thrash)."""

    def __init__(self, run: Run, max_pixels: int = MAX_PIXELS, backend: str = "torch"):
        self.run, self.max_pixels = run, max_pixels
        self.lock = threading.Lock()
        self.backend = None  # PyTorch
        if backend == "onnx":
            try:
                from fashionclf.serving.export import OnnxModel, export_checked
            except ImportError as e:
                raise ValueError(f"--backend onnx needs onnx and onnxruntime ({e}); pip install onnx onnxruntime") from None
            # Exported in memory at start-up (the run folder stays as it is), checked as `fashionclf export` checks.
            self.backend = OnnxModel(export_checked(run)[0])
        elif backend != "torch":
            raise ValueError(f"unknown backend {backend!r}; valid: torch, onnx")

    def prepare(self, blob: bytes, index: int) -> np.ndarray:
        try:
            return preprocess_file(blob, run=self.run, max_pixels=self.max_pixels)  # the same path as `fashionclf predict`
        except ImageError as e:
            raise RequestError(STATUS.get(e.kind, 422), f"image {index}: {e}") from None

    def predict(self, blobs: list[bytes], top_k: int = 3, preprocessed: bool = False) -> list[dict]:
        images = [self.prepare(b, i) for i, b in enumerate(blobs)]
        with self.lock, torch.inference_mode():
            results = predict_arrays(self.run, np.stack(images), top_k, backend=self.backend)
        if preprocessed:
            for r, img in zip(results, images):
                r["preprocessed_png_b64"] = base64.b64encode(png_bytes(img)).decode()
        return results


async def _read_blobs(request: Request) -> list[bytes]:
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > MAX_UPLOAD_BYTES:
        raise RequestError(413, f"request body of {int(size):,d} bytes is above the limit of {MAX_UPLOAD_BYTES:,d}")
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=MAX_FILES, max_fields=MAX_FILES, max_part_size=MAX_UPLOAD_BYTES)
        except Exception as e:  # starlette raises its own MultiPartException/HTTPException for limits and bad bodies
            msg = getattr(e, "detail", None) or str(e) or "malformed multipart body"
            status = 413 if "too many" in msg.lower() or "exceed" in msg.lower() else 400
            raise RequestError(status, f"{msg} (at most {MAX_FILES} files of {MAX_UPLOAD_BYTES:,d} bytes in all)") from None
        files = form.getlist("file")
        if not files:
            names = sorted(set(form.keys()))
            raise RequestError(400, f"expected one or more 'file' fields with images; got fields {names or 'none'}")
        blobs = []
        for f in files:
            if isinstance(f, str):
                raise RequestError(400, "the 'file' field must be an uploaded file, not text")
            blobs.append(await f.read())
        return blobs
    body = await request.body()
    if len(body) > MAX_UPLOAD_BYTES:
        raise RequestError(413, f"request body of {len(body):,d} bytes is above the limit of {MAX_UPLOAD_BYTES:,d}")
    if not body:
        raise RequestError(400, 'empty request: send multipart \'file\' fields or JSON {"instances": [{"b64": "..."}]}')
    try:
        import json

        payload = json.loads(body)
    except ValueError:
        raise RequestError(400, "the body is neither multipart/form-data nor JSON") from None
    instances = payload.get("instances") if isinstance(payload, dict) else None
    if not isinstance(instances, list) or not instances:
        raise RequestError(400, 'expected JSON {"instances": [{"b64": "<base64 image>"}, ...]} with at least one instance')
    if len(instances) > MAX_FILES:
        raise RequestError(413, f"{len(instances)} instances; at most {MAX_FILES} per request")
    blobs = []
    for i, inst in enumerate(instances):
        b64 = inst.get("b64") if isinstance(inst, dict) else None
        if not isinstance(b64, str):
            raise RequestError(400, f'instance {i}: expected an object {{"b64": "<base64 image>"}}')
        try:
            blobs.append(base64.b64decode(b64, validate=True))
        except (binascii.Error, ValueError):
            raise RequestError(400, f"instance {i}: malformed base64") from None
    return blobs


def create_app(run_dir: str | Path | None = None, run: Run | None = None, backend: str = "torch") -> FastAPI:
    """The service for one run (a folder, or an already loaded Run), on PyTorch or onnxruntime."""
    run = run or load_run(run_dir)
    predictor = Predictor(run, backend=backend)
    app = FastAPI(title="fashionclf", description="Categorise product photos with a trained fashionclf run.")
    app.state.run, app.state.predictor = run, predictor

    @app.exception_handler(RequestError)
    async def _refused(request: Request, e: RequestError):
        return JSONResponse({"error": e.message}, status_code=e.status)

    @app.get("/health")
    def health():
        return {"status": "ok", "model": run.meta["model"], "backend": backend}

    @app.get("/v1/models")
    def models():
        m = run.metrics
        return {
            "name": run.meta["model"],
            "backend": backend,
            "classes": list(run.classes),
            "input": run.meta.get("input"),
            "metrics": {k: m.get(k) for k in ("test_accuracy", "val_accuracy", "params", "infer_images_per_s") if k in m},
            "calibration": m.get("calibration"),
        }

    @app.post("/v1/predict")
    async def predict(request: Request, top_k: int = 3, preprocessed: bool = False):
        if not 1 <= top_k <= len(run.classes):
            raise RequestError(400, f"top_k {top_k}: expected 1-{len(run.classes)}")
        blobs = await _read_blobs(request)
        return {"predictions": await run_in_threadpool(predictor.predict, blobs, top_k, preprocessed)}

    @app.get("/", response_class=HTMLResponse)
    def page():
        return PAGE.replace("{{MODEL}}", run.meta["model"])

    return app


# The page (page.html beside this file): no external scripts, styles or fonts, so it works offline and behind strict CSPs.
PAGE = (Path(__file__).parent / "page.html").read_text()
